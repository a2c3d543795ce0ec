"""Checking the tensors of a warmup_helper request."""

import numpy as np
import pytest

from warmup_request import INVALID_ARG, MAX_NAME_BYTES, WarmupRequestError, parse_allowed_models, parse_request

HELPER = "warmup_helper"


def request(**overrides):
    inputs = {
        "MODELS": np.array([b"model-v1", b"model-v2"], dtype=np.object_),
        "FEATURE_DIMS": np.array([64, 128], dtype=np.int64),
        "GROUP_SIZE_MIN": np.array([2], dtype=np.int64),
        "GROUP_SIZE_MAX": np.array([5], dtype=np.int64),
        "BATCH_SIZES": None,
    }
    inputs.update(overrides)
    return inputs


def test_valid_request_is_parsed():
    parsed = parse_request(request(BATCH_SIZES=np.array([4, 1, 4], dtype=np.int64)), HELPER)
    assert parsed.models == ("model-v1", "model-v2")
    assert parsed.feature_dims == (64, 128)
    assert list(parsed.group_sizes) == [2, 3, 4, 5]
    assert parsed.batch_sizes == (1, 4)


def test_optional_inputs_may_be_left_out_and_zero_means_from_config():
    parsed = parse_request(request(FEATURE_DIMS=None), HELPER)
    assert parsed.feature_dims == (None, None)
    assert parsed.batch_sizes is None
    parsed = parse_request(request(FEATURE_DIMS=np.array([0, 128], dtype=np.int64)), HELPER)
    assert parsed.feature_dims == (None, 128)


def test_huge_group_range_costs_nothing_to_parse():
    parsed = parse_request(request(GROUP_SIZE_MAX=np.array([10**9], dtype=np.int64)), HELPER)
    assert len(parsed.group_sizes) == 10**9 - 1


BAD_REQUESTS = {
    "missing MODELS": (dict(MODELS=None), "MODELS"),
    "missing GROUP_SIZE_MIN": (dict(GROUP_SIZE_MIN=None), "GROUP_SIZE_MIN"),
    "missing GROUP_SIZE_MAX": (dict(GROUP_SIZE_MAX=None), "GROUP_SIZE_MAX"),
    "empty MODELS": (dict(MODELS=np.array([], dtype=np.object_)), "MODELS"),
    "length mismatch": (dict(FEATURE_DIMS=np.array([64], dtype=np.int64)), "FEATURE_DIMS"),
    "negative feature dim": (dict(FEATURE_DIMS=np.array([64, -1], dtype=np.int64)), "FEATURE_DIMS"),
    "min above max": (
        dict(GROUP_SIZE_MIN=np.array([6], dtype=np.int64)),
        "GROUP_SIZE_MIN",
    ),
    "group size zero": (dict(GROUP_SIZE_MIN=np.array([0], dtype=np.int64)), "GROUP_SIZE_MIN"),
    "group max negative": (dict(GROUP_SIZE_MAX=np.array([-3], dtype=np.int64)), "GROUP_SIZE_MAX"),
    "two values for a scalar": (
        dict(GROUP_SIZE_MAX=np.array([3, 4], dtype=np.int64)),
        "GROUP_SIZE_MAX",
    ),
    "float group size": (dict(GROUP_SIZE_MIN=np.array([1.5], dtype=np.float32)), "GROUP_SIZE_MIN"),
    "empty batch sizes": (dict(BATCH_SIZES=np.array([], dtype=np.int64)), "BATCH_SIZES"),
    "batch size zero": (dict(BATCH_SIZES=np.array([0, 2], dtype=np.int64)), "BATCH_SIZES"),
    "parent folder": (dict(MODELS=np.array([b".."], dtype=np.object_), FEATURE_DIMS=None), "MODELS"),
    "path": (dict(MODELS=np.array([b"a/b"], dtype=np.object_), FEATURE_DIMS=None), "MODELS"),
    "absolute path": (dict(MODELS=np.array([b"/etc"], dtype=np.object_), FEATURE_DIMS=None), "MODELS"),
    "hidden folder": (dict(MODELS=np.array([b".git"], dtype=np.object_), FEATURE_DIMS=None), "MODELS"),
    "empty name": (dict(MODELS=np.array([b""], dtype=np.object_), FEATURE_DIMS=None), "MODELS"),
    "helper itself": (
        dict(MODELS=np.array([HELPER.encode()], dtype=np.object_), FEATURE_DIMS=None),
        "MODELS",
    ),
    "not UTF-8": (dict(MODELS=np.array([b"\xff\xfe"], dtype=np.object_), FEATURE_DIMS=None), "MODELS"),
    "name longer than a folder name can be": (
        dict(MODELS=np.array([b"m" * (MAX_NAME_BYTES + 1)], dtype=np.object_), FEATURE_DIMS=None),
        "MODELS",
    ),
    "duplicate": (
        dict(MODELS=np.array([b"model-v1", b"model-v1"], dtype=np.object_)),
        "MODELS",
    ),
}


@pytest.mark.parametrize("overrides, field", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request_names_the_field(overrides, field):
    with pytest.raises(WarmupRequestError) as caught:
        parse_request(request(**overrides), HELPER)
    assert caught.value.field == field
    assert caught.value.code == INVALID_ARG
    assert str(caught.value).startswith(f"{field}: ")


def test_allowed_models_parameter_is_a_comma_or_space_separated_list():
    assert parse_allowed_models("") is None and parse_allowed_models(" , ") is None
    assert parse_allowed_models("model-v1, model-v2 model-v3") == {"model-v1", "model-v2", "model-v3"}


def test_allow_list_refuses_other_models_and_admits_its_own():
    allowed = parse_allowed_models("model-v1,model-v2")
    assert parse_request(request(), HELPER, allowed).models == ("model-v1", "model-v2")
    with pytest.raises(WarmupRequestError) as caught:
        parse_request(
            request(MODELS=np.array([b"model-v1", b"model-v3"], dtype=np.object_)), HELPER, allowed
        )
    assert caught.value.field == "MODELS" and caught.value.code == INVALID_ARG
    assert "'model-v3' is not in the warmup_helper's allowed_models" in str(caught.value)
