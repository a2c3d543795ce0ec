"""Plans that list their samples (what a plan made from traffic holds)."""

import pytest
import yaml

from triton_warmup import HELPER_MODEL
from triton_warmup.helper.job_planning import plan_jobs
from triton_warmup.helper.request import WarmupRequestError, parse_plan_document
from triton_warmup.helper.warmup_plan import GENERATED_PREFIX, plan_listed_samples
from test_warmup_plan import config
from repository_fixtures import PROJECT_REPOSITORY, snapshot

V1_SAMPLES = [
    {"batch_size": 4, "inputs": {"x": [7, 64], "mask": [7]}, "requests": 90},
    {"inputs": {"x": [2, 64], "mask": [2]}, "requests": 9},
    {"batch_size": 8, "inputs": {"x": [1, 64], "mask": [1]}},
]


def parse(document):
    return parse_plan_document(document, HELPER_MODEL)


def refused_path(document):
    with pytest.raises(WarmupRequestError) as refused:
        parse(document)
    return refused.value.path, str(refused.value)


def test_listed_samples_keep_their_order_and_counts():
    plan = parse({"defaults": {"group_size_max": 3, "count": 2}, "models": {"model-v1": {"samples": V1_SAMPLES}}}).plans[0]
    assert [sample.batch_size for sample in plan.samples] == [4, 1, 8]
    assert [dict(sample.inputs)["x"] for sample in plan.samples] == [(7, 64), (2, 64), (1, 64)]
    assert [sample.requests for sample in plan.samples] == [90, 9, None]
    # count comes from the defaults; the defaults' range does not apply.
    assert plan.count == 2
    assert plan.group_sizes == range(0)


@pytest.mark.parametrize(
    "document, path",
    [
        ({"defaults": {"samples": V1_SAMPLES}, "models": {"model-v1": {}}}, ("defaults", "samples")),
        ({"models": {"model-v1": {"samples": V1_SAMPLES, "batch_sizes": [1]}}}, ("models", "model-v1", "batch_sizes")),
        ({"models": {"model-v1": {"samples": []}}}, ("models", "model-v1", "samples")),
        ({"models": {"model-v1": {"samples": [{"inputs": {}}]}}}, ("models", "model-v1", "samples", 0, "inputs")),
        (
            {"models": {"model-v1": {"samples": [{"inputs": {"x": [0, 64]}}]}}},
            ("models", "model-v1", "samples", 0, "inputs", "x", 0),
        ),
        (
            {"models": {"model-v1": {"samples": [{"inputs": {"x": [2]}, "shape": 1}]}}},
            ("models", "model-v1", "samples", 0, "shape"),
        ),
        (
            {"models": {"model-v1": {"samples": [V1_SAMPLES[0], dict(V1_SAMPLES[0], requests=1)]}}},
            ("models", "model-v1", "samples", 1),
        ),
        (
            {"models": {"model-v1": {"samples": [{"inputs": {"x": [2]}, "data": {"x": "ones"}}]}}},
            ("models", "model-v1", "samples", 0, "data", "x"),
        ),
    ],
    ids=["in defaults", "with a range key", "empty", "no inputs", "zero dim", "unknown key", "repeated shape",
         "bad data policy"],
)
def test_a_wrong_listed_sample_is_refused_with_its_path(document, path):
    found, message = refused_path(document)
    assert found == path, message


def listed(document_samples):
    return parse({"models": {"model-v1": {"samples": document_samples}}}).plans[0].samples


# model-v1's own config: x FP32 [-1, 64], mask INT64 [-1], max_batch_size 8.
V1_CONFIG = (PROJECT_REPOSITORY / "model-v1" / "config.pbtxt").read_text()


def test_listed_samples_become_model_warmup_in_plan_order():
    plan = plan_listed_samples(config(V1_CONFIG), listed(V1_SAMPLES), count=3)
    assert [sample.name for sample in plan.samples] == [
        f"{GENERATED_PREFIX}sample1_batch4",
        f"{GENERATED_PREFIX}sample2_batch1",
        f"{GENERATED_PREFIX}sample3_batch8",
    ]
    assert [list(sample.inputs["x"].dims) for sample in plan.samples] == [[7, 64], [2, 64], [1, 64]]
    assert [sample.count for sample in plan.samples] == [3, 3, 3]
    assert plan.batch_sizes == (1, 4, 8)
    # Float inputs random, integer inputs zeros, as for a range.
    assert plan.samples[0].inputs["x"].random_data and plan.samples[0].inputs["mask"].zero_data


@pytest.mark.parametrize(
    "sample, path_tail, words",
    [
        ({"batch_size": 9, "inputs": {"x": [1, 64], "mask": [1]}}, ("batch_size",), "max_batch_size is 8"),
        ({"inputs": {"x": [1, 64], "mask": [1], "y": [1]}}, ("inputs", "y"), "no input 'y'"),
        ({"inputs": {"x": [1, 64]}}, ("inputs",), "input 'mask'"),
        ({"inputs": {"x": [1, 32], "mask": [1]}}, ("inputs", "x"), "[-1, 64]"),
        ({"inputs": {"x": [64], "mask": [1]}}, ("inputs", "x"), "do not fit"),
        ({"inputs": {"x": [5000, 64], "mask": [5000]}, "batch_size": 8}, (), "max_sample_bytes"),
    ],
    ids=["batch too big", "unknown input", "missing input", "fixed dim differs", "rank differs", "too many bytes"],
)
def test_a_listed_sample_the_config_cannot_take_is_refused(sample, path_tail, words):
    with pytest.raises(WarmupRequestError) as refused:
        plan_listed_samples(
            config(V1_CONFIG), listed([sample]), max_sample_bytes=1024 * 1024, plan_path=("models", "model-v1")
        )
    assert refused.value.path == ("models", "model-v1", "samples", 0) + path_tail
    assert words in str(refused.value)


def test_more_listed_samples_than_the_cap_are_refused():
    samples = [{"inputs": {"x": [group, 64], "mask": [group]}} for group in range(1, 6)]
    with pytest.raises(WarmupRequestError, match="max_warmup_samples"):
        plan_listed_samples(config(V1_CONFIG), listed(samples), max_samples=4)


def test_a_sample_data_file_is_checked_against_that_samples_dims(repository):
    warmup = repository / "model-v1" / "warmup"
    warmup.mkdir()
    # Three int64 values: enough for group size 3, short for group size 4.
    (warmup / "mask3.bin").write_bytes(b"\0" * 24)
    short = {"inputs": {"x": [4, 64], "mask": [4]}, "data": {"mask": {"file": "mask3.bin"}}}
    fits = {"inputs": {"x": [3, 64], "mask": [3]}, "data": {"mask": {"file": "mask3.bin"}}}
    request = parse({"models": {"model-v1": {"samples": [fits]}}})
    job = plan_jobs(repository, request)[0]
    assert job.rewrite.config.model_warmup[0].inputs["mask"].input_data_file == "mask3.bin"
    before = snapshot(repository)
    with pytest.raises(WarmupRequestError) as refused:
        plan_jobs(repository, parse({"models": {"model-v1": {"samples": [fits, short]}}}))
    assert refused.value.path == ("models", "model-v1", "samples", 1, "data", "mask", "file")
    assert "needs 32" in str(refused.value)
    assert snapshot(repository) == before


def test_hand_written_samples_stay_first_and_listed_ones_follow_in_order(repository):
    config_path = repository / "model-v1" / "config.pbtxt"
    hand_written = (
        '\nmodel_warmup [{ name: "by hand" batch_size: 1 inputs { key: "x" value: { data_type: TYPE_FP32 '
        'dims: [ 5, 64 ] zero_data: true } } inputs { key: "mask" value: { data_type: TYPE_INT64 dims: [ 5 ] '
        "zero_data: true } } }]\n"
    )
    config_path.write_text(config_path.read_text() + hand_written)
    job = plan_jobs(repository, parse({"models": {"model-v1": {"samples": V1_SAMPLES}}}))[0]
    names = [sample.name for sample in job.rewrite.config.model_warmup]
    assert names[0] == "by hand"
    assert [list(sample.inputs["x"].dims) for sample in job.rewrite.config.model_warmup[1:]] == [
        [7, 64], [2, 64], [1, 64]
    ]
    assert (job.samples, job.batch_sizes, job.group_sizes) == (3, (1, 4, 8), ())


def test_the_helpers_error_about_a_listed_sample_names_its_line_in_the_plan_file(tmp_path):
    from triton_warmup.client.plan_file import locate_plan_error

    plan = tmp_path / "traffic.yaml"
    plan.write_text(
        "models:\n"
        "  model-v1:\n"
        "    samples:\n"
        "    - batch_size: 1\n"
        "      inputs: {x: [2, 64], mask: [2]}\n"
        "    - batch_size: 2\n"
        "      inputs:\n"
        "        x: [3, 32]\n"
        "        mask: [3]\n"
    )
    request = parse_plan_document(yaml.safe_load(plan.read_text()), HELPER_MODEL)
    with pytest.raises(WarmupRequestError) as refused:
        plan_listed_samples(config(V1_CONFIG), request.plans[0].samples, plan_path=request.plans[0].plan_path)
    located = locate_plan_error(plan, refused.value)
    assert located.startswith(f"{plan}, line 8: models.model-v1.samples.1.inputs.x: dims [3, 32] do not fit")
