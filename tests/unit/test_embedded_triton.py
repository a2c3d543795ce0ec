"""The launcher's pure parts: argv, environment and the assembled backend folder."""

import os
import pathlib
import sys

from embedded_triton import server


def test_options_become_flags_in_explicit_mode(tmp_path):
    argv = server.options_to_argv(
        server.server_options(tmp_path / "repo", tmp_path / "backends", 1, 2, 3, log_verbose=1)
    )
    assert f"--model-repository={tmp_path / 'repo'}" in argv
    assert f"--backend-directory={tmp_path / 'backends'}" in argv
    assert {"--http-port=1", "--grpc-port=2", "--metrics-port=3"} <= set(argv)
    assert "--model-control-mode=explicit" in argv
    assert "--load-model=warmup_helper" in argv
    assert "--log-verbose=1" in argv


def test_no_load_model_flags_outside_explicit_mode(tmp_path):
    argv = server.options_to_argv(server.server_options(tmp_path, tmp_path, model_control_mode="poll"))
    assert not [arg for arg in argv if arg.startswith("--load-model")]


def test_environment_puts_this_interpreter_first_and_the_wheel_libraries_on_the_path():
    install = server.TritonInstall.find()
    env = server.server_environment(install, base={"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib"})
    assert env["PATH"].split(os.pathsep)[0] == str(pathlib.Path(sys.executable).parent)
    libraries = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert libraries[0] == str(install.libraries)
    assert libraries[-1] == "/opt/lib"


def test_backend_folder_holds_the_python_backend_and_the_pytorch_standin(tmp_path):
    install = server.TritonInstall.find()
    backends = server.assemble_backend_directory(tmp_path / "backends", install)
    python_files = sorted(path.name for path in (backends / "python").iterdir())
    assert python_files == ["libtriton_python.so", "triton_python_backend_stub", "triton_python_backend_utils.py"]
    # Real files: Triton refuses a backend library that resolves outside the folder.
    assert not any(path.is_symlink() for path in (backends / "python").iterdir())
    assert os.access(backends / "python" / "triton_python_backend_stub", os.X_OK)
    assert sorted(path.name for path in (backends / "pytorch").iterdir()) == ["model.py"]
    assert (backends / "pytorch" / "model.py").read_bytes() == server.PYTORCH_STANDIN.read_bytes()
