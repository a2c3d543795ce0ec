"""Driving a real embedded tritonserver from the integration tests.

Each test module starts its own server on free ports, serving its own copy of
the repository in a temporary folder, and shares it across the module's tests:
a model load costs seconds here (a Python stub that imports torch per
instance), so loads are the budget to spend carefully.
"""

import contextlib
import datetime
import json
import pathlib
import re
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import np_to_triton_dtype

from embedded_triton import EmbeddedTriton, free_port

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
PROJECT_REPOSITORY = PROJECT_ROOT / "model_repository"
EXAMPLE_MODELS = ["model-v1", "model-v2", "model-v3"]

# Loading a model with its warmup samples takes about 4 s per instance here;
# five minutes per request leaves room for several models on a busy machine.
WARMUP_REQUEST_TIMEOUT_S = 300

# The pytorch stand-in appends every forward to this file in the server's
# workdir (PYTORCH_STANDIN_RECORD), stamped with the stub's clock.
STANDIN_RECORD = "standin_record.jsonl"


@contextlib.contextmanager
def running_server(template: pathlib.Path, workdir: pathlib.Path, **options):
    """Serve a copy of ``template`` from ``workdir``; always stop the server."""
    repository = workdir / "model_repository"
    shutil.copytree(template, repository, symlinks=True)
    with serving(repository, workdir, **options) as server:
        yield server


@contextlib.contextmanager
def serving(repository: pathlib.Path, workdir: pathlib.Path, **options):
    """Serve ``repository`` itself (several servers may share one); logs go to ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = EmbeddedTriton(
        repository,
        workdir,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        extra_env={"PYTORCH_STANDIN_RECORD": str(workdir / STANDIN_RECORD), "TZ": "UTC"},
        **options,
    )
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def template_with_helper_parameters(template: pathlib.Path, destination: pathlib.Path, **parameters: str):
    """A copy of ``template`` whose warmup_helper config sets ``parameters``."""
    shutil.copytree(template, destination)
    helper_config = destination / "warmup_helper" / "config.pbtxt"
    config = text_format.Parse(helper_config.read_text(), model_config_pb2.ModelConfig())
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    helper_config.write_text(text_format.MessageToString(config))
    return destination


def client_for(server: EmbeddedTriton, protocol: str):
    """A client for ``server``; use it in a ``with`` block: an open HTTP
    connection makes Triton wait its whole exit timeout at shutdown."""
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient.InferenceServerClient(
        server.http_url,
        connection_timeout=WARMUP_REQUEST_TIMEOUT_S,
        network_timeout=WARMUP_REQUEST_TIMEOUT_S,
    )


def url_for(server: EmbeddedTriton, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


def send_warmup(
    server: EmbeddedTriton,
    protocol: str,
    inputs: Dict[str, Optional[np.ndarray]],
):
    """Send one request to warmup_helper; return (LOADED_MODELS, REPORT dict).

    ``inputs`` maps input names to arrays; the Triton datatype follows the
    array's dtype, so tests can send wrong types on purpose.
    """
    module = grpcclient if protocol == "grpc" else httpclient
    tensors = []
    for name, array in inputs.items():
        datatype = "BYTES" if array.dtype == np.object_ else np_to_triton_dtype(array.dtype)
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    with client_for(server, protocol) as client:
        if protocol == "grpc":
            result = client.infer("warmup_helper", tensors, client_timeout=WARMUP_REQUEST_TIMEOUT_S)
        else:
            result = client.infer("warmup_helper", tensors)
    loaded = [name.decode() for name in result.as_numpy("LOADED_MODELS").reshape(-1)]
    return loaded, json.loads(result.as_numpy("REPORT").reshape(-1)[0])


def warmup_inputs(
    models: Sequence[str],
    group_min: int = 1,
    group_max: int = 2,
    feature_dims: Optional[Sequence[int]] = None,
    batch_sizes: Optional[Sequence[int]] = None,
) -> Dict[str, np.ndarray]:
    inputs = {
        "MODELS": np.array([name.encode() for name in models], dtype=np.object_),
        "GROUP_SIZE_MIN": np.array([group_min], dtype=np.int64),
        "GROUP_SIZE_MAX": np.array([group_max], dtype=np.int64),
    }
    if feature_dims is not None:
        inputs["FEATURE_DIMS"] = np.array(feature_dims, dtype=np.int64)
    if batch_sizes is not None:
        inputs["BATCH_SIZES"] = np.array(batch_sizes, dtype=np.int64)
    return inputs


def model_states(server: EmbeddedTriton, headers: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    with httpclient.InferenceServerClient(server.http_url) as client:
        index = client.get_model_repository_index(headers=headers)
    return {entry["name"]: entry.get("state", "UNAVAILABLE") for entry in index}


def triton_crashed(server: EmbeddedTriton) -> bool:
    """Whether tritonserver died of a segfault of its own (README, "Known
    Triton issues": it can, tearing down an instance whose warmup failed)."""
    return not server.is_running() and "Signal (11) received" in server.log_text()


def restart(server: EmbeddedTriton) -> EmbeddedTriton:
    """Start ``server`` again on the same repository, ports and log file."""
    server.stop()
    server.start()
    return server.wait_ready()


def repository_snapshot(repository: pathlib.Path) -> Dict[str, bytes]:
    """Every file's bytes, so a test can show that nothing on disk changed."""
    return {
        str(path.relative_to(repository)): path.read_bytes()
        for path in sorted(repository.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


_LOG_LINE = re.compile(r"^[IWE](?P<month>\d\d)(?P<day>\d\d) (?P<clock>\d\d:\d\d:\d\d\.\d+) ")


def _log_time(line: str, year: int) -> float:
    """Epoch seconds of a tritonserver log line (the server runs with TZ=UTC)."""
    match = _LOG_LINE.match(line)
    stamp = datetime.datetime.strptime(
        f"{year}-{match['month']}-{match['day']} {match['clock']}", "%Y-%m-%d %H:%M:%S.%f"
    )
    return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()


def wait_for_log(server: EmbeddedTriton, texts: Sequence[str], timeout: float = 10.0) -> str:
    """The server's log once it holds every one of ``texts``.

    A Python stub's log lines reach Triton's log asynchronously (they can
    land after the response that followed them), so a test that looks for a
    helper's line waits a little for it.
    """
    deadline = time.monotonic() + timeout
    while True:
        log = server.log_text()
        missing = [text for text in texts if text not in log]
        if not missing:
            return log
        assert time.monotonic() < deadline, f"not in the log of {server.http_url} within {timeout} s: {missing}"
        time.sleep(0.1)


def load_windows(server: EmbeddedTriton, model: str) -> List[tuple]:
    """(start, ready) epoch times of each successful load of ``model``, from
    Triton's own 'loading' and 'successfully loaded' log lines."""
    year = datetime.datetime.now(datetime.timezone.utc).year
    windows, started = [], None
    for line in server.log_text().splitlines():
        if f'"loading: {model}:' in line:
            started = _log_time(line, year)
        elif started is not None and f"successfully loaded '{model}'" in line:
            windows.append((started, _log_time(line, year)))
            started = None
    return windows


def standin_runs(server: EmbeddedTriton, model: str, window: Optional[tuple] = None) -> List[Dict]:
    """The forwards the pytorch stand-in recorded for ``model``, with the
    stub's own clock; only those inside ``window`` (start, ready) if given."""
    record = server.workdir / STANDIN_RECORD
    if not record.exists():
        return []
    runs = [json.loads(line) for line in record.read_text().splitlines()]
    runs = [run for run in runs if run["model"] == model]
    if window is not None:
        runs = [run for run in runs if window[0] <= run["time"] <= window[1]]
    return runs


def run_script(script: str, *args: str, timeout: float = WARMUP_REQUEST_TIMEOUT_S):
    """Run one of the project's scripts as a user would; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT_ROOT,
    )
