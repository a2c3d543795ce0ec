"""Planning model_warmup samples from a model's own config."""

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from triton_warmup.helper.warmup_plan import (
    GENERATED_PREFIX,
    default_batch_sizes,
    plan_warmup,
    sample_dims,
)
from triton_warmup.helper.request import WarmupRequestError

EXAMPLE = """
name: "model-v2"
platform: "pytorch_libtorch"
max_batch_size: 8
input [
  { name: "x" data_type: TYPE_FP32 dims: [ -1, 128 ] },
  { name: "mask" data_type: TYPE_INT64 dims: [ -1 ] }
]
output [ { name: "output" data_type: TYPE_FP32 dims: [ 16 ] } ]
dynamic_batching { }
"""


def config(text=EXAMPLE):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def shapes(plan):
    return [
        (sample.batch_size, {name: list(data.dims) for name, data in sample.inputs.items()})
        for sample in plan.samples
    ]


@pytest.mark.parametrize(
    "max_batch, preferred, expected",
    [
        (8, [], [1, 2, 4, 8]),
        (6, [], [1, 2, 4, 6]),
        (8, [3, 6], [1, 2, 3, 4, 6, 8]),
        (1, [], [1]),
        (0, [], [1]),
    ],
)
def test_default_batch_sizes(max_batch, preferred, expected):
    model = config()
    model.max_batch_size = max_batch
    model.dynamic_batching.preferred_batch_size.extend(preferred)
    assert default_batch_sizes(model) == expected


def test_one_sample_per_group_size_and_batch_size():
    plan = plan_warmup(config(), group_sizes=range(1, 4))
    assert len(plan.samples) == 3 * 4
    assert plan.group_sizes == (1, 2, 3)
    assert plan.batch_sizes == (1, 2, 4, 8)
    assert (8, {"x": [3, 128], "mask": [3]}) in shapes(plan)
    assert len({sample.name for sample in plan.samples}) == len(plan.samples)
    assert all(sample.name.startswith(GENERATED_PREFIX) for sample in plan.samples)


def test_names_and_data_types_come_from_the_config():
    model = config(
        """
        name: "other" max_batch_size: 2
        input [
          { name: "ids" data_type: TYPE_INT32 dims: [ -1 ] },
          { name: "flags" data_type: TYPE_BOOL dims: [ -1 ] },
          { name: "scale" data_type: TYPE_FP16 dims: [ 1 ] },
          { name: "text" data_type: TYPE_STRING dims: [ 1 ] }
        ]
        """
    )
    sample = plan_warmup(model, group_sizes=[5], batch_sizes=[2]).samples[0]
    assert set(sample.inputs) == {"ids", "flags", "scale", "text"}
    assert sample.inputs["ids"].data_type == model_config_pb2.TYPE_INT32
    assert sample.inputs["ids"].zero_data and not sample.inputs["ids"].random_data
    assert sample.inputs["flags"].zero_data
    assert sample.inputs["text"].zero_data
    assert sample.inputs["scale"].random_data
    assert list(sample.inputs["scale"].dims) == [1]
    assert list(sample.inputs["ids"].dims) == [5]


def test_count_is_written_on_every_sample():
    plan = plan_warmup(config(), group_sizes=[1], count=5)
    assert {sample.count for sample in plan.samples} == {5}


def test_requested_batch_sizes_replace_the_default():
    plan = plan_warmup(config(), group_sizes=[2], batch_sizes=[3])
    assert shapes(plan) == [(3, {"x": [2, 128], "mask": [2]})]


def test_batch_size_above_max_is_refused():
    with pytest.raises(WarmupRequestError) as caught:
        plan_warmup(config(), group_sizes=[1], batch_sizes=[4, 16])
    assert caught.value.field == "BATCH_SIZES"
    assert "16" in str(caught.value) and "max_batch_size is 8" in str(caught.value)


def test_model_without_batching_takes_batch_one_only():
    model = config()
    model.max_batch_size = 0
    plan = plan_warmup(model, group_sizes=[2])
    assert shapes(plan) == [(1, {"x": [2, 128], "mask": [2]})]
    with pytest.raises(WarmupRequestError, match="does not batch"):
        plan_warmup(model, group_sizes=[2], batch_sizes=[2])


def test_variable_trailing_dim_takes_the_feature_dim():
    model = config(EXAMPLE.replace("[ -1, 128 ]", "[ -1, -1 ]"))
    plan = plan_warmup(model, group_sizes=[3], batch_sizes=[1], feature_dim=32)
    assert shapes(plan) == [(1, {"x": [3, 32], "mask": [3]})]


def test_variable_trailing_dim_without_feature_dim_is_refused():
    model = config(EXAMPLE.replace("[ -1, 128 ]", "[ -1, -1 ]"))
    with pytest.raises(WarmupRequestError) as caught:
        plan_warmup(model, group_sizes=[3])
    assert caught.value.field == "FEATURE_DIMS"
    assert "'x'" in str(caught.value)


def test_feature_dim_matching_the_config_is_accepted():
    plan = plan_warmup(config(), group_sizes=[1], batch_sizes=[1], feature_dim=128)
    assert shapes(plan) == [(1, {"x": [1, 128], "mask": [1]})]


def test_feature_dim_contradicting_the_config_is_refused():
    with pytest.raises(WarmupRequestError) as caught:
        plan_warmup(config(), group_sizes=[1], feature_dim=64)
    assert caught.value.field == "FEATURE_DIMS"
    assert "64" in str(caught.value) and "128" in str(caught.value)


def test_feature_dim_for_a_model_without_rank_two_inputs_is_refused():
    model = config('name: "ids" max_batch_size: 4 input [ { name: "ids" data_type: TYPE_INT64 dims: [ -1 ] } ]')
    assert len(plan_warmup(model, group_sizes=[1, 2]).samples) == 2 * 3
    with pytest.raises(WarmupRequestError, match="give 0"):
        plan_warmup(model, group_sizes=[1], feature_dim=16)


def test_model_without_group_dim_gets_one_sample_per_batch_size():
    model = config('name: "fixed" max_batch_size: 4 input [ { name: "v" data_type: TYPE_FP32 dims: [ 3, 8 ] } ]')
    plan = plan_warmup(model, group_sizes=range(1, 50))
    assert shapes(plan) == [(b, {"v": [3, 8]}) for b in (1, 2, 4)]


def test_plan_above_the_cap_is_refused_without_building_it():
    with pytest.raises(WarmupRequestError) as caught:
        plan_warmup(config(), group_sizes=range(1, 10**9), max_samples=1024)
    assert caught.value.field == "GROUP_SIZE_MAX"
    assert "1024" in str(caught.value)


@pytest.mark.parametrize(
    "group_sizes, batch_sizes, feature_dim, field",
    [
        (range(10**9, 10**9 + 1), [1], None, "GROUP_SIZE_MAX"),
        (range(1, 3), [1], 10**8, "FEATURE_DIMS"),
        (range(3000, 3001), [1, 8], None, "BATCH_SIZES"),
    ],
    ids=["one huge group", "huge feature dim", "batch makes it too big"],
)
def test_sample_above_the_byte_cap_is_refused_naming_what_makes_it_big(
    group_sizes, batch_sizes, feature_dim, field
):
    # Inputs x [-1, D] FP32 and mask [-1] INT64: one sample of group g, batch b
    # holds b * (g * D * 4 + g * 8) bytes.
    model = config(
        'name: "var" max_batch_size: 8 input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, -1 ] },'
        ' { name: "mask" data_type: TYPE_INT64 dims: [ -1 ] } ]'
    )
    dim = feature_dim or 1000
    with pytest.raises(WarmupRequestError) as caught:
        plan_warmup(
            model, group_sizes=group_sizes, batch_sizes=batch_sizes, feature_dim=dim,
            max_sample_bytes=64 * 2**20,
        )
    assert caught.value.field == field and "max_sample_bytes" in str(caught.value)
    largest = max(batch_sizes) * (group_sizes[-1] * dim * 4 + group_sizes[-1] * 8)
    assert f"needs {largest} bytes" in str(caught.value)


def test_sample_at_the_byte_cap_is_planned():
    model = config(
        'name: "var" max_batch_size: 8 input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]'
    )
    # Group 4, batch 2: 2 * 4 * 4 * 4 bytes = 128.
    plan = plan_warmup(model, group_sizes=[4], batch_sizes=[2], max_sample_bytes=128)
    assert len(plan.samples) == 1
    with pytest.raises(WarmupRequestError):
        plan_warmup(model, group_sizes=[4], batch_sizes=[2], max_sample_bytes=127)


def test_model_without_inputs_is_refused():
    with pytest.raises(WarmupRequestError, match="no inputs"):
        plan_warmup(config('name: "empty" max_batch_size: 1'), group_sizes=[1])


@pytest.mark.parametrize(
    "dims, expected",
    [([-1], [7]), ([-1, 64], [7, 64]), ([-1, -1], [7, 32]), ([3, -1, -1], [3, 7, 32]), ([-1, 5, -1], [7, 5, 32])],
)
def test_sample_dims(dims, expected):
    assert sample_dims(dims, group_size=7, feature_dim=32) == expected


def test_data_policies_fill_each_input_as_the_plan_says():
    plan = plan_warmup(
        config(), group_sizes=[2], batch_sizes=[1], feature_dim=128,
        data={"mask": {"file": "mask.bin"}}, default_data={"x": "zero", "absent": "zero"},
    )
    inputs = plan.samples[0].inputs
    assert inputs["mask"].input_data_file == "mask.bin"
    assert inputs["x"].zero_data and not inputs["x"].random_data


def test_without_a_policy_floats_are_random_and_integers_zero():
    inputs = plan_warmup(config(), group_sizes=[1], batch_sizes=[1], feature_dim=128).samples[0].inputs
    assert inputs["x"].random_data and inputs["mask"].zero_data


def test_a_policy_for_an_input_the_model_lacks_is_refused_with_its_path():
    with pytest.raises(WarmupRequestError) as caught:
        plan_warmup(config(), group_sizes=[1], feature_dim=128, data={"tokens": "zero"})
    assert caught.value.field == "PLAN"
    assert caught.value.path == ("models", "model-v2", "data", "tokens")
    assert "['x', 'mask']" in str(caught.value)
