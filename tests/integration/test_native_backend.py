"""The embedded server runs Triton's native libtorch backend, built from source:
the server process itself opens libtriton_pytorch.so and runs the TorchScript,
with no Python stub per model instance."""

import pathlib

import pytest

from live_server import live_processes, model_states, send_warmup, wait_for_log, warmup_inputs
from target_models import copy_model

# Server start plus two small loads; the margin is for a busy machine.
MODULE_TIMEOUT_S = 120
TWO_INSTANCES = "model-v1-two-instances"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]


@pytest.fixture(scope="module")
def server(start_server):
    server = start_server("native")
    model_dir = copy_model(server.model_repository, "model-v1", TWO_INSTANCES)
    config = model_dir / "config.pbtxt"
    config.write_text(config.read_text().replace("count: 1", "count: 2"))
    loaded, report = send_warmup(server, "http", warmup_inputs(["model-v1", TWO_INSTANCES], 1, 1))
    assert loaded == ["model-v1", TWO_INSTANCES], report
    return server


def children(pid: int):
    """(pid, command name) of every live process whose parent is ``pid``."""
    return [(process["pid"], process["name"]) for process in live_processes() if process["ppid"] == pid]


def test_triton_opens_the_built_library_from_the_backend_folder(server):
    library = server.backend_directory / "pytorch" / "libtriton_pytorch.so"
    log = wait_for_log(server, [f"OpenLibraryHandle: {library}"])
    assert "libtorch.cc" in log and "TRITONBACKEND_Initialize: pytorch" in log
    # Each instance was initialized by the backend's own code (libtorch.cc),
    # not by the Python backend (python_be.cc).
    for instance in ("model-v1_0_0", f"{TWO_INSTANCES}_0_0", f"{TWO_INSTANCES}_0_1"):
        (line,) = [line for line in log.splitlines() if f"TRITONBACKEND_ModelInstanceInitialize: {instance} " in line]
        assert "] libtorch.cc:" in line or " libtorch.cc:" in line, line


def test_the_server_process_itself_maps_the_backend_and_libtorch(server):
    maps = pathlib.Path(f"/proc/{server.pid}/maps").read_text()
    mapped = {pathlib.Path(line.split()[-1]).name for line in maps.splitlines() if ".so" in line}
    assert "libtriton_pytorch.so" in mapped
    assert "libtorch_cpu.so" in mapped


def test_no_stub_process_per_model_instance(server):
    assert model_states(server)[TWO_INSTANCES] == "READY"
    # Three libtorch instances are loaded; the only stub is the helper's
    # (a Python backend model), so the server has exactly one child.
    stubs = [name for _, name in children(server.pid) if name.startswith("triton_python")]
    assert len(stubs) == 1, children(server.pid)
    assert len(children(server.pid)) == 1
