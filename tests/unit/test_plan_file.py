"""Reading plan files: the example parses, and every mistake names its line."""

import json
import pathlib

import pytest

from triton_warmup.client import plan_file
from triton_warmup.client.plan_file import PlanFileError, load_plan, locate_plan_error
from triton_warmup.helper.request import WarmupRequestError

EXAMPLE_PLAN = pathlib.Path(__file__).resolve().parents[2] / "plans" / "example.yaml"

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "plans" / "example.yaml"


def write(tmp_path, text, name="plan.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_example_plan_in_the_repository_is_valid():
    document, request = load_plan(EXAMPLE)
    assert request.models == tuple(document["models"])
    assert request.plans[0].data["mask"] == {"file": "mask_all_items.bin"}


def test_json_plan_gives_the_same_request_as_yaml(tmp_path):
    document, from_yaml = load_plan(EXAMPLE)
    _, from_json = load_plan(write(tmp_path, json.dumps(document, indent=2), "plan.json"))
    assert from_json == from_yaml


# (plan text, line the error must name, words it must contain)
BAD_FILES = {
    "wrong type, deep": (
        "models:\n  model-v1:\n    group_size_max: 4\n    batch_sizes: [1, 2, zero]\n",
        4,
        "models.model-v1.batch_sizes.2",
    ),
    "unknown key": ("defaults:\n  group_size_max: 4\nmodels:\n  model-v1:\n    cuont: 3\n", 5, "cuont"),
    "bad data policy": (
        "models:\n  m:\n    group_size_max: 2\n    data:\n      x: ones\n",
        5,
        "random",
    ),
    "count zero": ("models:\n  m:\n    group_size_max: 2\n\n    count: 0\n", 5, "at least 1"),
    "missing group_size_max": ("models:\n  m:\n    count: 2\n", 2, "group_size_max is required"),
    "YAML syntax": ("models:\n  m:\n    group_size_max: [1, 2\n", 4, "not valid YAML"),
    "duplicate key": ("models:\n  m:\n    group_size_max: 2\n    group_size_max: 3\n", 4, "twice"),
    "tab indentation": ("models:\n\tm: {}\n", 2, "not valid YAML"),
}


@pytest.mark.parametrize("text, line, words", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_mistake_names_file_and_line(tmp_path, text, line, words):
    path = write(tmp_path, text)
    with pytest.raises(PlanFileError) as caught:
        load_plan(path)
    message = str(caught.value)
    assert message.startswith(f"{path}, line {line}: "), message
    assert words in message


def test_json_syntax_error_names_its_line(tmp_path):
    path = write(tmp_path, '{\n  "models": {\n    "m": {"group_size_max": 2,}\n  }\n}\n', "plan.json")
    with pytest.raises(PlanFileError, match=r"plan.json, line 3: not valid JSON"):
        load_plan(path)


def test_json_value_error_names_its_line(tmp_path):
    text = '{\n  "models": {\n    "m": {\n      "group_size_max": 2,\n      "count": -1\n    }\n  }\n}\n'
    with pytest.raises(PlanFileError, match=r"plan.json, line 5: models.m.count: must be at least 1"):
        load_plan(write(tmp_path, text, "plan.json"))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(PlanFileError, match="cannot read the plan"):
        load_plan(tmp_path / "absent.yaml")


def test_the_helpers_error_about_a_plan_gets_the_files_line(tmp_path):
    path = write(
        tmp_path,
        "models:\n  model.v1:\n    group_size_max: 2\n    data:\n      mask: {file: absent.bin}\n"
        "    batch_sizes: [1, 9]\n",
    )
    # The error as the helper sends it: its text, then itself as JSON.
    missing = WarmupRequestError(
        "PLAN", "no data file /r/model.v1/warmup/absent.bin", path=("models", "model.v1", "data", "mask", "file")
    )
    received = WarmupRequestError.from_message(f"[request id: 7] {missing.response_message()}")
    assert (received.field, received.path, received.message) == (missing.field, missing.path, missing.message)
    assert locate_plan_error(path, received) == (
        f"{path}, line 5: models.model.v1.data.mask.file: no data file /r/model.v1/warmup/absent.bin"
    )
    too_large = WarmupRequestError("PLAN", "too large", path=("models", "model.v1", "batch_sizes", 1))
    assert locate_plan_error(path, too_large) == f"{path}, line 6: models.model.v1.batch_sizes.1: too large"
    assert locate_plan_error(path, WarmupRequestError("MODELS", "no model 'x'")) is None
    assert WarmupRequestError.from_message("MODELS: no model 'x'") is None


def test_the_command_line_checks_every_plan_and_exits_2_if_one_is_bad(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: {group_size_max: 2}\nmodels:\n  m: {count: 0}\n")

    assert plan_file.main([str(EXAMPLE_PLAN)]) == 0
    assert plan_file.main([str(bad), str(EXAMPLE_PLAN)]) == 2

    out, err = capsys.readouterr()
    _, example = load_plan(EXAMPLE_PLAN)
    assert out.count(f"PASS: {EXAMPLE_PLAN}: mode {example.mode}, models {list(example.models)}") == 2
    assert f"FAILED: {bad}, line 3: models.m.count: must be at least 1, got 0" in err
