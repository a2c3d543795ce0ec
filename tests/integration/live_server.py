"""Driving a real embedded tritonserver from the integration tests.

Each test module starts its own server on free ports, serving its own copy of
the repository in a temporary folder, and shares it across the module's tests.

What ran inside the server is read from Triton itself: its verbose log (core's
"running warmup sample" lines, core's "prepared" line with every request's
shapes, the libtorch backend's "executing N requests" line) and its
statistics API. Servers therefore run with ``--log-verbose=1``.
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
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from triton_warmup.client.flags import repository_index
from triton_warmup.client.warm import request_warmup, shape_arrays
from triton_warmup.embedded import AUTO_COMPLETE_AUTO, EmbeddedTriton, free_port
from triton_warmup.report import WarmupReport

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
PROJECT_REPOSITORY = PROJECT_ROOT / "model_repository"
# The package's console scripts, installed beside this interpreter (make venv).
COMMANDS = pathlib.Path(sys.executable).parent
EXAMPLE_MODELS = ["model-v1", "model-v2", "model-v3"]

# A load of an example model with its warmup samples takes well under a
# second on the native backend; five minutes per request leaves room for
# many models, slow targets and a busy machine.
WARMUP_REQUEST_TIMEOUT_S = 300
# The log lines the evidence below is read from are verbose level 1.
EVIDENCE_LOG_VERBOSE = 1


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
    options.setdefault("log_verbose", EVIDENCE_LOG_VERBOSE)
    # As the launchers start it: without Triton's auto-complete where no
    # model needs it (a second less per Python model load).
    options.setdefault("auto_complete", AUTO_COMPLETE_AUTO)
    server = EmbeddedTriton(
        repository,
        workdir,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        # Log stamps (Triton's and torch's warnings) in UTC, as time.time().
        extra_env={"TZ": "UTC", **options.pop("extra_env", {})},
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
) -> Tuple[List[str], WarmupReport]:
    """Send one request to warmup_helper with the client's own code
    (``triton_warmup.client.warm.request_warmup``); return LOADED_MODELS and
    the report. Each array's dtype gives its Triton datatype, so tests can
    send wrong types on purpose."""
    with client_for(server, protocol) as client:
        return request_warmup(client, protocol, inputs, timeout_s=WARMUP_REQUEST_TIMEOUT_S)


def warmup_inputs(
    models: Sequence[str],
    group_min: int = 1,
    group_max: int = 2,
    feature_dims: Optional[Sequence[int]] = None,
    batch_sizes: Optional[Sequence[int]] = None,
) -> Dict[str, np.ndarray]:
    """The tensors ``triton-warmup --models ...`` sends (``shape_arrays``)."""
    return shape_arrays(models, group_min, group_max, feature_dims, batch_sizes)


def model_states(server: EmbeddedTriton, headers: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    with httpclient.InferenceServerClient(server.http_url) as client:
        index = repository_index(client, "http", headers)
    return {entry["name"]: entry.get("state", "UNAVAILABLE") for entry in index}


def triton_crashed(server: EmbeddedTriton, settle_s: float = 10.0) -> bool:
    """Whether tritonserver died of a segfault of its own (docs/safety.md, "Known
    Triton issues": it can, tearing down an instance whose warmup failed).

    Clients see the connection close while the dying server still prints its
    stack, so this waits up to ``settle_s`` for the process to end.
    """
    server.wait(settle_s)
    return not server.is_running() and "Signal (11) received" in server.log_text()


def stub_processes(server: EmbeddedTriton) -> set:
    """The process ids of the server's Python stubs now (its children)."""
    pid = server.pid
    children = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {
        int(child) for child in children
        if b"triton_python_backend_stub" in pathlib.Path(f"/proc/{child}/cmdline").read_bytes()
    }


def kernel_segfaults(pids) -> Optional[List[str]]:
    """The kernel log's segfault lines of these processes; None where this
    machine does not let the kernel log be read. A Python stub that frees a
    Triton object after its shared memory is gone crashes at its exit, which
    only the kernel's log shows (docs/safety.md)."""
    try:
        log = subprocess.run(["dmesg"], capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line for line in log.splitlines() if any(f"[{pid}]: segfault" in line for pid in pids)]


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


def _log_entries(server: EmbeddedTriton, pattern: "re.Pattern", window: Optional[tuple]) -> List[Dict]:
    """Matches of ``pattern`` in the server's log, each with its ``time``;
    only those inside ``window`` (start, end epoch seconds) if given."""
    year = datetime.datetime.now(datetime.timezone.utc).year
    entries = []
    for line in server.log_text().splitlines():
        match = pattern.search(line)
        if match is None or not _LOG_LINE.match(line):
            continue
        entry = {**match.groupdict(), "time": _log_time(line, year)}
        if window is None or window[0] <= entry["time"] <= window[1]:
            entries.append(entry)
    return entries


_WARMUP_RUN = re.compile(
    r"\"model '(?P<model>[^']+)' instance (?P<instance>\S+) is running warmup sample "
    r"'(?P<sample>[^']+)' for iteration (?P<iteration>\d+)\""
)
_EXECUTION = re.compile(r"\"model (?P<model>\S+), instance (?P<instance>\S+), executing (?P<requests>\d+) requests\"")
_PREPARED = re.compile(r"\] prepared: .*?, model: (?P<model>[^,]+), .*?\\ninputs:\\n(?P<inputs>.*?)\\noriginal requested outputs")
_PREPARED_INPUT = re.compile(r"input: (?P<name>[^,]+), type: \w+, original shape: \[[^\]]*\], batch \+ shape: \[(?P<shape>[^\]]*)\]")


def executions(server: EmbeddedTriton, model: str, window: Optional[tuple] = None) -> List[Dict]:
    """Each ``execute`` call the libtorch backend logged for ``model``: the
    ``instance`` and how many ``requests`` it ran as one batch."""
    return [
        {"instance": entry["instance"], "requests": int(entry["requests"]), "time": entry["time"]}
        for entry in _log_entries(server, _EXECUTION, window)
        if entry["model"] == model
    ]


def request_shapes(server: EmbeddedTriton, model: str, window: Optional[tuple] = None) -> List[Dict[str, List[int]]]:
    """Each request Triton prepared for ``model``: its inputs' shapes, batch
    dimension included (core logs every request it prepares, warmup ones too)."""
    shapes = []
    for entry in _log_entries(server, _PREPARED, window):
        if entry["model"] != model:
            continue
        shapes.append(
            {
                found["name"]: [int(size) for size in found["shape"].split(",") if size]
                for found in _PREPARED_INPUT.finditer(entry["inputs"])
            }
        )
    return shapes


def served_config(server: EmbeddedTriton, model: str) -> Dict:
    """The config Triton serves for ``model`` (JSON), as it reports it."""
    with httpclient.InferenceServerClient(server.http_url) as client:
        return client.get_model_config(model)


def sample_shapes(config: Dict) -> Dict[str, Dict]:
    """Per warmup sample of ``config`` (JSON): its batch size and each input's
    shape with the batch dimension in front when the model batches."""
    batching = int(config.get("max_batch_size", 0)) > 0
    samples = {}
    for sample in config.get("model_warmup", []):
        batch = int(sample.get("batch_size", 0))
        samples[sample["name"]] = {
            "batch": batch,
            "shapes": {
                name: ([batch] if batching else []) + [int(size) for size in spec.get("dims", [])]
                for name, spec in sample.get("inputs", {}).items()
            },
        }
    return samples


def warmup_runs(server: EmbeddedTriton, model: str, window: Optional[tuple] = None) -> List[Dict]:
    """Each warmup run Triton logged for ``model``: ``instance``, ``sample``,
    ``iteration``, ``requests`` (the backend's next ``execute`` on that
    instance) and the sample's ``shapes`` from the config Triton serves now.

    Read it soon after the load it is about: a later reload may serve other
    samples.
    """
    samples = sample_shapes(served_config(server, model))
    pending = {}
    runs = []
    # Core logs the sample, then the backend logs the execute that runs it, on
    # the same instance's thread: pair each run with its instance's next execute.
    year = datetime.datetime.now(datetime.timezone.utc).year
    for line in server.log_text().splitlines():
        if not _LOG_LINE.match(line):
            continue
        warmup, execution = _WARMUP_RUN.search(line), _EXECUTION.search(line)
        if warmup and warmup["model"] == model:
            stamp = _log_time(line, year)
            if window is None or window[0] <= stamp <= window[1]:
                run = {
                    "instance": warmup["instance"],
                    "sample": warmup["sample"],
                    "iteration": int(warmup["iteration"]),
                    "time": stamp,
                    "requests": None,
                    "shapes": samples[warmup["sample"]]["shapes"],
                }
                runs.append(run)
                pending[warmup["instance"]] = run
        elif execution and execution["model"] == model and execution["instance"] in pending:
            pending.pop(execution["instance"])["requests"] = int(execution["requests"])
    return runs


def model_statistics(server: EmbeddedTriton, model: str) -> Dict:
    """Triton's statistics of ``model``'s loaded version: warmup runs count
    in them, since they are executions of that version."""
    with httpclient.InferenceServerClient(server.http_url) as client:
        (stats,) = client.get_inference_statistics(model)["model_stats"]
    return stats


# Searched anywhere in a line: threads of the server write without a lock, so
# a warning can land after another line's text, before its newline.
_RECORD = re.compile(r"\[W\d{4} [\d:.]+ [^\]]*\] Warning: recorded (?P<record>\{.*?\}) \(function")


def recorded_inputs(server: EmbeddedTriton, model: str, window: Optional[tuple] = None) -> List[Dict]:
    """What a model written by ``target_models.write_recording_model`` saw:
    per forward, its inputs' ``shapes`` and the mask's ``sums`` (torch's
    warning lines, written from inside the libtorch backend).

    Each record takes the time of the Triton line before it: torch stamps its
    warnings from a clock that ran 0.4 s apart from Triton's here, and the
    windows come from Triton's lines.
    """
    year = datetime.datetime.now(datetime.timezone.utc).year
    records, last_stamp = [], None
    for line in server.log_text().splitlines():
        if _LOG_LINE.match(line):
            last_stamp = _log_time(line, year)
        match = _RECORD.search(line)
        if match is None or last_stamp is None:
            continue
        record = json.loads(match["record"])
        if record["model"] == model and (window is None or window[0] <= last_stamp <= window[1]):
            records.append({**record, "time": last_stamp})
    return records


def live_processes() -> List[Dict]:
    """Every live (not zombie) process: ``pid``, ``ppid``, ``name`` and ``cmdline``."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = dict(line.split(":\t", 1) for line in (entry / "status").read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if not status.get("State", "").startswith("Z"):
            found.append({"pid": int(entry.name), "ppid": int(status.get("PPid", "0")),
                          "name": status.get("Name", "").strip(), "cmdline": cmdline})
    return found


def run_module(module: str, *args: str, timeout: float = WARMUP_REQUEST_TIMEOUT_S):
    """Run ``python -m module`` from the project's root, as ``make bench``
    does; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT_ROOT,
    )
