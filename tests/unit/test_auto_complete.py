"""Whether a repository can start without Triton's config auto-complete
(triton_warmup/auto_complete.py, client/auto_complete_flag.py, deploy/entrypoint.sh)."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from tritonclient.grpc import model_config_pb2

from triton_warmup import auto_complete
from triton_warmup.client import auto_complete_flag
from triton_warmup.helper.config_rewrite import read_config, render_config

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
ENTRYPOINT = PROJECT_ROOT / "deploy" / "entrypoint.sh"
EXAMPLES = PROJECT_ROOT / "model_repository"
PLAIN_PYTHON_MODEL = "class TritonPythonModel:\n    def execute(self, requests):\n        return []\n"


@pytest.fixture
def examples(tmp_path):
    """The example repository's configs and Python files (no weights: the rule reads neither)."""
    root = tmp_path / "repository"
    for folder in EXAMPLES.iterdir():
        if folder.is_dir():
            shutil.copytree(folder, root / folder.name,
                            ignore=lambda _, names: [name for name in names
                                                     if not name.endswith((".pbtxt", ".py")) and "." in name])
    return root


def python_model(tmp_path, source, name="pre", **config_fields):
    folder = tmp_path / name
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.py").write_text(source)
    config = model_config_pb2.ModelConfig(name=name, backend="python", **config_fields)
    if "input" not in config_fields:
        config.input.add(name="TEXT", data_type=model_config_pb2.TYPE_STRING, dims=[1])
    if "output" not in config_fields:
        config.output.add(name="IDS", data_type=model_config_pb2.TYPE_INT64, dims=[-1])
    (folder / "config.pbtxt").write_bytes(render_config(config))
    return auto_complete_flag.read_model_folder(folder)


def test_the_example_repository_needs_no_auto_complete_and_the_reason_counts_what_it_saves(examples):
    setting = auto_complete_flag.repository_setting(examples)
    assert setting.disable and setting.flags == (auto_complete.DISABLE_FLAG,)
    # tokenizer and warmup_helper are Python models; compiled-encoder runs the PyTorch 2 runtime.
    assert "a Python model (2 here) or a PyTorch 2 model (1 here)" in setting.reason


def test_a_model_without_a_config_keeps_triton_s_default_and_is_named(examples):
    (examples / "model-v3" / "config.pbtxt").unlink()
    setting = auto_complete_flag.repository_setting(examples)
    assert not setting.disable and setting.flags == ()
    assert "'model-v3' may need it: it has no config.pbtxt" in setting.reason


def test_an_unreadable_config_keeps_triton_s_default(examples):
    (examples / "model-v1" / "config.pbtxt").write_text("input { name: ")
    setting = auto_complete_flag.repository_setting(examples)
    assert not setting.disable and "'model-v1' may need it: its config.pbtxt could not be read" in setting.reason


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt", "openvino", "my_custom"])
def test_a_backend_that_may_fill_in_fields_keeps_triton_s_default(examples, backend):
    folder = examples / "model-v1"
    _, config = read_config(folder)
    config.ClearField("platform")
    config.backend = backend
    (folder / "config.pbtxt").write_bytes(render_config(config))
    setting = auto_complete_flag.repository_setting(examples)
    assert not setting.disable and f"backend '{backend}' may fill in fields of its own" in setting.reason


@pytest.mark.parametrize("source, defined", [
    (PLAIN_PYTHON_MODEL, False),
    ("class TritonPythonModel:\n    @staticmethod\n    def auto_complete_config(c):\n        return c\n", True),
    # The method may come from the base class or from an import.
    ("class TritonPythonModel(Base):\n    pass\n", None),
    ("from elsewhere import TritonPythonModel\n", None),
    ("class TritonPythonModel(:\n", None),
])
def test_a_python_model_s_file_shows_whether_it_asks_for_auto_complete(source, defined):
    assert auto_complete.defines_auto_complete(source) is defined


def test_a_python_model_that_defines_auto_complete_config_keeps_it_in_any_version(tmp_path):
    model = python_model(tmp_path, PLAIN_PYTHON_MODEL)
    assert auto_complete.why_auto_complete(model) is None
    (tmp_path / "pre" / "2").mkdir()
    (tmp_path / "pre" / "2" / "model.py").write_text(
        "class TritonPythonModel:\n    def auto_complete_config(c):\n        return c\n")
    model = auto_complete_flag.read_model_folder(tmp_path / "pre")
    assert auto_complete.why_auto_complete(model) == "version 2's TritonPythonModel defines auto_complete_config"


def test_a_python_model_s_file_is_read_under_the_config_s_default_model_filename(tmp_path):
    model = python_model(tmp_path, PLAIN_PYTHON_MODEL, default_model_filename="serve.py")
    assert auto_complete.why_auto_complete(model) == "its model file was not found in any version folder"
    (tmp_path / "pre" / "1" / "serve.py").write_text(PLAIN_PYTHON_MODEL)
    assert auto_complete.why_auto_complete(auto_complete_flag.read_model_folder(tmp_path / "pre")) is None


@pytest.mark.parametrize("fields, why", [
    ({"input": []}, "it declares no inputs"),
    ({"output": []}, "it declares no outputs"),
    ({"input": [model_config_pb2.ModelInput(name="TEXT", dims=[1])]}, "its input 'TEXT' has no data_type"),
    ({"output": [model_config_pb2.ModelOutput(name="IDS", data_type=model_config_pb2.TYPE_INT64)]},
     "its output 'IDS' has no dims"),
])
def test_inputs_and_outputs_left_for_a_backend_to_fill_in_keep_it(tmp_path, fields, why):
    assert auto_complete.why_auto_complete(python_model(tmp_path, PLAIN_PYTHON_MODEL, **fields)) == why


def test_an_empty_repository_changes_nothing():
    assert not auto_complete.auto_complete_setting([]).disable


def test_several_models_that_need_it_are_counted(examples):
    for name in ("model-v1", "model-v2"):
        (examples / name / "config.pbtxt").unlink()
    assert "'model-v1' may need it" in auto_complete_flag.repository_setting(examples).reason
    assert "(and 1 more model(s))" in auto_complete_flag.repository_setting(examples).reason


@pytest.mark.parametrize("flags", [["--disable-auto-complete-config"], ["--strict-model-config=false"],
                                   ["--log-verbose=1", "--strict-model-config=true"]])
def test_the_server_s_own_flags_decide_over_the_repository(examples, flags):
    setting = auto_complete_flag.server_flags(examples, flags)
    assert not setting.disable and setting.reason == "auto-complete left as the server's own flags set it"
    assert auto_complete_flag.server_flags(examples, ["--log-verbose=1"]).disable


def test_the_command_prints_the_flag_or_nothing_and_the_reason(run_cli, examples):
    result = run_cli(auto_complete_flag.main, str(examples), "--", "--log-verbose=1")
    assert (result.returncode, result.stdout.strip()) == (0, auto_complete.DISABLE_FLAG)
    assert "no config of the" in result.stderr
    result = run_cli(auto_complete_flag.main, str(examples), "--", "--strict-model-config=false")
    assert (result.returncode, result.stdout.strip()) == (0, "")
    (examples / "tokenizer" / "config.pbtxt").unlink()
    result = run_cli(auto_complete_flag.main, str(examples))
    assert (result.returncode, result.stdout.strip()) == (0, "")
    assert "'tokenizer' may need it: it has no config.pbtxt" in result.stderr


def run_entrypoint(repository, tmp_path, *args, **environ):
    """deploy/entrypoint.sh as it is, with a stand-in tritonserver that prints its arguments."""
    server = tmp_path / "server"
    server.write_text('#!/bin/sh\nfor arg in "$@"; do echo "$arg"; done\n')
    server.chmod(0o755)
    env = {**os.environ, "MODEL_REPOSITORY": str(repository), "TRITONSERVER": str(server), "OMP_NUM_THREADS": "1",
           "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **environ}
    return subprocess.run(["bash", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=60)


def test_the_entrypoint_adds_the_flag_where_the_repository_allows_and_never_twice(examples, tmp_path):
    result = run_entrypoint(examples, tmp_path, "--log-verbose=1")
    assert result.returncode == 0, result.stderr
    arguments = result.stdout.split()
    assert arguments.count(auto_complete.DISABLE_FLAG) == 1 and arguments[-1] == "--log-verbose=1"
    assert "no config of the" in result.stderr

    result = run_entrypoint(examples, tmp_path, auto_complete.DISABLE_FLAG)
    assert result.stdout.split().count(auto_complete.DISABLE_FLAG) == 1

    for run in (run_entrypoint(examples, tmp_path, AUTO_COMPLETE="keep"),
                run_entrypoint(examples, tmp_path, "--strict-model-config=false")):
        assert run.returncode == 0 and auto_complete.DISABLE_FLAG not in run.stdout.split()


def test_the_entrypoint_refuses_an_unknown_auto_complete_setting(examples, tmp_path):
    result = run_entrypoint(examples, tmp_path, AUTO_COMPLETE="sometimes")
    assert result.returncode == 2 and "AUTO_COMPLETE must be auto or keep, not sometimes" in result.stderr
    assert result.stdout == ""
