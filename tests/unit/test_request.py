"""Checking the tensors of a warmup_helper request."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triton_warmup.helper.request import (
    INVALID_ARG,
    MAX_NAME_BYTES,
    WarmupRequestError,
    document_from_tensors,
    parse_allowed_models,
    parse_plan_document,
    parse_request,
)

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
    assert [plan.feature_dim for plan in parsed.plans] == [64, 128]
    assert all(list(plan.group_sizes) == [2, 3, 4, 5] for plan in parsed.plans)
    assert all(plan.batch_sizes == (1, 4) for plan in parsed.plans)
    assert parsed.mode == "auto" and not parsed.all_models


def test_optional_inputs_may_be_left_out_and_zero_means_from_config():
    parsed = parse_request(request(FEATURE_DIMS=None), HELPER)
    assert [plan.feature_dim for plan in parsed.plans] == [None, None]
    assert parsed.plans[0].batch_sizes is None
    parsed = parse_request(request(FEATURE_DIMS=np.array([0, 128], dtype=np.int64)), HELPER)
    assert [plan.feature_dim for plan in parsed.plans] == [None, 128]


def test_huge_group_range_costs_nothing_to_parse():
    parsed = parse_request(request(GROUP_SIZE_MAX=np.array([10**9], dtype=np.int64)), HELPER)
    assert len(parsed.plans[0].group_sizes) == 10**9 - 1


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


def plan_request(document, **overrides):
    inputs = {name: None for name in ("MODELS", "GROUP_SIZE_MIN", "GROUP_SIZE_MAX")}
    inputs["PLAN"] = np.array([json.dumps(document).encode()], dtype=np.object_)
    inputs.update(overrides)
    return inputs


EXAMPLE_PLAN = {
    "mode": "requests",
    "defaults": {"group_size_max": 4, "count": 2, "data": {"mask": "zero"}},
    "models": {
        "model-v1": {"group_size_min": 2, "group_size_max": 8, "data": {"mask": {"file": "mask.bin"}}},
        "model-v2": {"batch_sizes": [8, 1, 8], "feature_dim": 128},
        "model-v3": None,
    },
}


def test_plan_gives_each_model_its_own_settings_over_the_defaults():
    parsed = parse_request(plan_request(EXAMPLE_PLAN), HELPER)
    assert parsed.mode == "requests" and not parsed.all_models
    v1, v2, v3 = parsed.plans
    assert (v1.name, list(v1.group_sizes), v1.count) == ("model-v1", list(range(2, 9)), 2)
    assert v1.data == {"mask": {"file": "mask.bin"}} and v1.default_data == {"mask": "zero"}
    assert (v2.batch_sizes, v2.feature_dim, list(v2.group_sizes)) == ((1, 8), 128, [1, 2, 3, 4])
    assert (v3.name, v3.count, v3.batch_sizes, v3.feature_dim) == ("model-v3", 2, None, None)


def test_mode_input_overrides_the_plan_and_all_models_uses_the_defaults():
    document = {"all_models": True, "defaults": {"group_size_max": 3}}
    mode = np.array([b"load"], dtype=np.object_)
    parsed = parse_request(plan_request(document, MODE=mode), HELPER)
    assert parsed.mode == "load" and parsed.all_models and parsed.plans == ()
    assert list(parsed.default_plan.group_sizes) == [1, 2, 3]


def test_all_models_input_takes_the_shape_inputs_as_the_default_plan():
    parsed = parse_request(
        request(MODELS=None, FEATURE_DIMS=None, ALL_MODELS=np.array([True])), HELPER
    )
    assert parsed.all_models and parsed.plans == ()
    assert list(parsed.default_plan.group_sizes) == [2, 3, 4, 5]


BAD_PLANS = {
    "not a mapping": ([1, 2], ()),
    "unknown top-level key": ({"modles": {}}, ("modles",)),
    "no models": ({"defaults": {"group_size_max": 2}}, ("models",)),
    "bad mode": ({"mode": "fast", "models": {"m": {"group_size_max": 2}}}, ("mode",)),
    "all_models not bool": ({"all_models": "yes", "defaults": {"group_size_max": 2}}, ("all_models",)),
    "unknown model key": ({"models": {"m": {"group_size_max": 2, "batch": [1]}}}, ("models", "m", "batch")),
    "zero count": ({"models": {"m": {"group_size_max": 2, "count": 0}}}, ("models", "m", "count")),
    "bool count": ({"models": {"m": {"group_size_max": 2, "count": True}}}, ("models", "m", "count")),
    "string group size": ({"models": {"m": {"group_size_max": "8"}}}, ("models", "m", "group_size_max")),
    "batch size zero": (
        {"models": {"m": {"group_size_max": 2, "batch_sizes": [1, 0]}}},
        ("models", "m", "batch_sizes", 1),
    ),
    "batch sizes not a list": (
        {"models": {"m": {"group_size_max": 2, "batch_sizes": 4}}},
        ("models", "m", "batch_sizes"),
    ),
    "empty batch sizes": (
        {"models": {"m": {"group_size_max": 2, "batch_sizes": []}}},
        ("models", "m", "batch_sizes"),
    ),
    "min above max": (
        {"models": {"m": {"group_size_min": 5, "group_size_max": 2}}},
        ("models", "m", "group_size_min"),
    ),
    "no group_size_max": ({"models": {"m": {"count": 2}}}, ("models", "m")),
    "negative feature dim": (
        {"models": {"m": {"group_size_max": 2, "feature_dim": -4}}},
        ("models", "m", "feature_dim"),
    ),
    "bad data policy": (
        {"models": {"m": {"group_size_max": 2, "data": {"x": "ones"}}}},
        ("models", "m", "data", "x"),
    ),
    "data file outside warmup/": (
        {"models": {"m": {"group_size_max": 2, "data": {"x": {"file": "../config.pbtxt"}}}}},
        ("models", "m", "data", "x", "file"),
    ),
    "data file absolute": (
        {"models": {"m": {"group_size_max": 2, "data": {"x": {"file": "/etc/passwd"}}}}},
        ("models", "m", "data", "x", "file"),
    ),
    "helper as a model": ({"models": {HELPER: {"group_size_max": 2}}}, ("models", HELPER)),
    "path as a model": ({"models": {"../m": {"group_size_max": 2}}}, ("models", "../m")),
}


@pytest.mark.parametrize("document, path", BAD_PLANS.values(), ids=BAD_PLANS.keys())
def test_bad_plan_names_the_path_to_the_wrong_value(document, path):
    with pytest.raises(WarmupRequestError) as caught:
        parse_request(plan_request(document), HELPER)
    assert caught.value.field == "PLAN" and caught.value.code == INVALID_ARG
    assert caught.value.path == path


def test_plan_goes_alone_and_must_be_json():
    with pytest.raises(WarmupRequestError) as caught:
        parse_request(plan_request(EXAMPLE_PLAN, MODELS=np.array([b"model-v1"], dtype=np.object_)), HELPER)
    assert caught.value.field == "PLAN" and "leave out ['MODELS']" in str(caught.value)
    with pytest.raises(WarmupRequestError) as caught:
        parse_request(plan_request(None, PLAN=np.array([b"{models"], dtype=np.object_)), HELPER)
    assert caught.value.field == "PLAN" and "not JSON" in str(caught.value)


def test_plan_respects_the_allow_list():
    with pytest.raises(WarmupRequestError) as caught:
        parse_request(plan_request(EXAMPLE_PLAN), HELPER, parse_allowed_models("model-v1,model-v2"))
    assert caught.value.path == ("models", "model-v3")


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(MODE=np.array([b"reload"], dtype=np.object_)), "MODE"),
        (dict(MODE=np.array([b"load", b"requests"], dtype=np.object_)), "MODE"),
        (dict(ALL_MODELS=np.array([True])), "ALL_MODELS"),
        (dict(MODELS=None, FEATURE_DIMS=None, ALL_MODELS=np.array([1], dtype=np.int64)), "ALL_MODELS"),
        (dict(MODELS=None, FEATURE_DIMS=None), "MODELS"),
    ],
    ids=["unknown mode", "two modes", "all with models", "all not bool", "neither models nor all"],
)
def test_mode_and_all_models_inputs_are_checked(overrides, field):
    with pytest.raises(WarmupRequestError) as caught:
        parse_request(request(**overrides), HELPER)
    assert caught.value.field == field


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
setting_keys = st.sampled_from(
    ["feature_dim", "group_size_min", "group_size_max", "batch_sizes", "count", "data", "other"]
)
settings_values = st.dictionaries(setting_keys, json_values | st.integers(0, 9), max_size=6)
plan_documents = st.fixed_dictionaries(
    {},
    optional={
        "mode": json_values | st.sampled_from(["auto", "load", "requests"]),
        "all_models": json_values,
        "defaults": settings_values | json_values,
        "models": st.dictionaries(st.text(max_size=20), settings_values | json_values, max_size=3) | json_values,
    },
)


@settings(max_examples=500, deadline=None)
@given(document=plan_documents | json_values)
def test_any_plan_document_is_either_a_request_or_a_plan_error(document):
    """Nothing a client can send as PLAN makes the helper raise anything but
    a WarmupRequestError that names PLAN (or parse it into a valid request)."""
    inputs = plan_request(None, PLAN=np.array([json.dumps(document).encode()], dtype=np.object_))
    try:
        parsed = parse_request(inputs, HELPER)
    except WarmupRequestError as error:
        assert error.field == "PLAN" and error.code == INVALID_ARG
        return
    for plan in parsed.plans:
        assert len(plan.group_sizes) >= 1 and (plan.count is None or plan.count >= 1)


def test_the_tensors_stand_for_a_plan_document_and_pass_the_same_validator():
    inputs = {
        "MODELS": np.array([b"model-v1", b"text-encoder"], dtype=np.object_),
        "FEATURE_DIMS": np.array([64, 0], dtype=np.int64),
        "GROUP_SIZE_MIN": np.array([2], dtype=np.int64),
        "GROUP_SIZE_MAX": np.array([4], dtype=np.int64),
        "BATCH_SIZES": np.array([8, 1], dtype=np.int64),
        "MODE": np.array([b"load"], dtype=np.object_),
    }
    document = document_from_tensors(inputs)
    assert document == {
        "mode": "load",
        "defaults": {"group_size_min": 2, "group_size_max": 4, "batch_sizes": [8, 1]},
        "models": {"model-v1": {"feature_dim": 64}, "text-encoder": {"feature_dim": 0}},
    }
    from_tensors = parse_request(inputs, "warmup_helper")
    from_plan = parse_plan_document(document, "warmup_helper")
    assert from_tensors.plans == from_plan.plans and from_tensors.mode == from_plan.mode == "load"
    assert not from_tensors.from_plan and from_plan.from_plan


def test_a_value_error_names_the_tensor_and_keeps_the_documents_path():
    inputs = {
        "MODELS": np.array([b"model-v1"], dtype=np.object_),
        "GROUP_SIZE_MIN": np.array([1], dtype=np.int64),
        "GROUP_SIZE_MAX": np.array([2], dtype=np.int64),
        "BATCH_SIZES": np.array([4, 0], dtype=np.int64),
    }
    with pytest.raises(WarmupRequestError) as caught:
        parse_request(inputs, "warmup_helper")
    error = caught.value
    assert (error.field, error.path) == ("BATCH_SIZES", ("defaults", "batch_sizes", 1))
    assert str(error) == "BATCH_SIZES: must be at least 1, got 0"
    assert WarmupRequestError.from_message(error.response_message()).to_dict() == error.to_dict()
