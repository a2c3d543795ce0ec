"""Measuring one embedded Triton: bring a model to READY in a given warmup
condition, then time requests at each shape, client-side and server-side.

Used by warmup_benchmark.py; kept apart so that the script reads as the list
of measurements it makes.
"""

import concurrent.futures
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import shlex
import shutil
import statistics
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import tritonclient.http as httpclient
from tritonclient.grpc import model_config_pb2

from triton_warmup import HELPER_MODEL
from triton_warmup import example_models as gen_model
from triton_warmup import libtorch_backend
from triton_warmup.helper.preflight_record import record_path
from triton_warmup.client.flags import repository_index
from triton_warmup.client.warm import request_warmup, shape_arrays
from triton_warmup.helper.config_rewrite import read_config, render_config
from triton_warmup.helper.repository_guard import write_atomically
from triton_warmup.helper.warmup_plan import plan_warmup

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE_MODELS = ["model-v1", "model-v2", "model-v3"]
# The example whose steady compute is milliseconds (gen_model.py).
TEXT_ENCODER = gen_model.TEXT_ENCODER
# Loads of three models with many samples take seconds to minutes here.
REQUEST_TIMEOUT_S = 900

COLD = "cold"
SEED_STYLE = "seed-style"
PROJECT = "project"


def backend_record(backend: Optional[libtorch_backend.BuiltBackend] = None) -> Dict:
    """Which libtorch backend build ran a benchmark, for its results."""
    backend = backend or libtorch_backend.build(libtorch_backend.source_dir_from_environment())
    return {
        "library": str(backend.library),
        "pytorch_backend_commit": backend.commit,
        "sources": backend.info["sources"],
        "torch": backend.info["torch"],
        "compiler": backend.info["compiler"],
    }


def run_record(module: str, backend: Optional[libtorch_backend.BuiltBackend] = None) -> Dict:
    """What every benchmark's results start with: the command as run, the
    machine, the time and the libtorch backend build."""
    return {
        "command": " ".join([f"python -m {module}", *(shlex.quote(argument) for argument in sys.argv[1:])]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "backend": backend_record(backend),
    }


def backend_line(record: Dict) -> str:
    """One Markdown sentence naming the backend of ``backend_record``."""
    return (
        f"Backend: Triton's native libtorch backend, `{record['library']}`, built from pytorch_backend "
        f"{record['pytorch_backend_commit'][:12]} (core {record['sources']['core'][:12]}) against torch "
        f"{record['torch']} with {record['compiler']}.\n"
    )


def results_header(title: str, results: Dict) -> List[str]:
    """The first lines of a results page: its title, the ``run_record``
    (command, machine, date) and the backend that ran it."""
    return [
        f"# {title}\n",
        f"`{results['command']}` on {results['machine']}, {results['date']}.\n",
        backend_line(results["backend"]),
    ]


def copy_repository(destination: pathlib.Path) -> pathlib.Path:
    """A working copy of the project's repository at ``destination``, with
    the example models' files generated if `make models` has not run."""
    shutil.copytree(
        PROJECT_ROOT / "model_repository",
        destination,
        ignore=shutil.ignore_patterns("__pycache__", ".*.tmp", ".warmup_helper.lock", ".*.warmup-preflight.json"),
    )
    if not all((destination / model / "1" / "model.pt").exists() for model in EXAMPLE_MODELS + [TEXT_ENCODER]):
        gen_model.write_models(destination)
    return destination


def counters(client, model: str) -> Dict[str, int]:
    stats = client.get_inference_statistics(model_name=model)["model_stats"][0]
    inference = stats["inference_stats"]
    return {
        "successes": int(inference["success"]["count"]),
        "success_ns": int(inference["success"]["ns"]),
        "computes": int(inference["compute_infer"]["count"]),
        "compute_ns": int(inference["compute_infer"]["ns"]),
    }


def settled_counters(client, before: Dict[str, Dict[str, int]]) -> Dict[str, Dict[str, int]]:
    """The counters once Triton has counted the request just answered: it
    updates its statistics when it releases a request, which can be after
    the client has the response, and a read before that would hand this
    request's time to the next one."""
    deadline = time.monotonic() + 5
    while True:
        after = {model: counters(client, model) for model in before}
        if all(after[model]["successes"] > before[model]["successes"] for model in before):
            return after
        if time.monotonic() > deadline:
            raise RuntimeError(f"Triton's statistics did not count the request: {before} -> {after}")
        time.sleep(0.005)


@dataclasses.dataclass(frozen=True)
class Shape:
    group: int
    batch: int

    @property
    def label(self) -> str:
        return f"g{self.group}xb{self.batch}"


def memory_kib(pid: int) -> Dict[str, int]:
    """VmHWM (peak) and VmRSS of a process, in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0])
    return values


def helper_stub(server_pid: int) -> int:
    """The pid of the Python-backend stub that runs warmup_helper."""
    with open(f"/proc/{server_pid}/task/{server_pid}/children") as children:
        for pid in children.read().split():
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if f"/{HELPER_MODEL}/".encode() in cmdline.read():
                    return int(pid)
    raise RuntimeError("no warmup_helper stub found")


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


class Session:
    """One client session against the server that serves ``repository`` and
    logs to ``log_path``."""

    def __init__(self, http_url: str, repository: pathlib.Path, log_path: pathlib.Path):
        self.http_url = http_url
        self.repository = repository
        self.log_path = log_path
        self.client = httpclient.InferenceServerClient(
            http_url, connection_timeout=REQUEST_TIMEOUT_S, network_timeout=REQUEST_TIMEOUT_S
        )
        # Every condition starts from the model's config without warmup.
        self.bare_configs: Dict[str, model_config_pb2.ModelConfig] = {}

    def close(self) -> None:
        self.client.close()

    # -- configs and loads -------------------------------------------------

    def bare_config(self, model: str) -> model_config_pb2.ModelConfig:
        if model not in self.bare_configs:
            _, config = read_config(self.repository / model)
            del config.model_warmup[:]
            self.bare_configs[model] = config
        copy = model_config_pb2.ModelConfig()
        copy.CopyFrom(self.bare_configs[model])
        return copy

    def write_config(self, model: str, config: model_config_pb2.ModelConfig) -> None:
        write_atomically(self.repository / model / "config.pbtxt", render_config(config))

    def unload(self, models: Sequence[str]) -> None:
        """Unload and wait until Triton no longer lists the models as loaded,
        so that the next load starts fresh instances (a new TorchScript
        module, nothing profiled yet). The preflight record goes too: the
        benchmarks time a first start, where every sample is checked."""
        for model in models:
            self.client.unload_model(model)
            record_path(self.repository / model).unlink(missing_ok=True)
        deadline = time.monotonic() + 120
        while any(self.state(model) not in ("UNAVAILABLE", "") for model in models):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{models} did not unload")
            time.sleep(0.1)

    def state(self, model: str) -> str:
        for entry in repository_index(self.client, "http"):
            if entry["name"] == model:
                return entry.get("state", "")
        return ""

    def load_with_config(self, model: str, config: model_config_pb2.ModelConfig) -> float:
        """Write ``config`` and load the model directly; seconds to READY."""
        self.write_config(model, config)
        started = time.perf_counter()
        self.client.load_model(model)
        return time.perf_counter() - started

    def trigger(
        self,
        models: Sequence[str],
        group_max: int,
        batch_sizes: Optional[Sequence[int]] = None,
        group_min: int = 1,
    ) -> Dict:
        """One request to the helper; the report plus the client's wall time."""
        return self._send_warmup(shape_arrays(models, group_min, group_max, batch_sizes=batch_sizes))

    def trigger_plan(self, document: Dict) -> Dict:
        """One request to the helper with a plan document (``PLAN``), as
        ``triton-warmup --plan`` sends it; the report plus the client's wall time."""
        return self._send_warmup({"PLAN": np.array([json.dumps(document).encode("utf-8")], dtype=np.object_)})

    def _send_warmup(self, inputs: Dict[str, np.ndarray]) -> Dict:
        started = time.perf_counter()
        _, parsed = request_warmup(self.client, "http", inputs, timeout_s=REQUEST_TIMEOUT_S)
        wall = time.perf_counter() - started
        if parsed.failed:
            raise RuntimeError(f"warmup failed: {parsed.to_dict()}")
        # The benchmarks keep the report as the JSON the helper sent, with the client's time.
        return {**parsed.to_dict(), "client_seconds": wall}

    def statistics(self, model: str) -> Dict:
        """Triton's statistics of the loaded version of ``model``."""
        return self.client.get_inference_statistics(model_name=model)["model_stats"][0]

    def executions_by_batch_size(self, model: str) -> Dict[int, Dict[str, float]]:
        """Per batch size: how many executions the backend ran and their
        compute_infer seconds, from Triton's statistics."""
        return {
            int(entry["batch_size"]): {
                "count": int(entry["compute_infer"]["count"]),
                "seconds": int(entry["compute_infer"]["ns"]) / 1e9,
            }
            for entry in self.statistics(model).get("batch_stats", [])
        }

    def warmup_compute_seconds(self, model: str) -> float:
        """compute_infer of every execution of the version just loaded: read
        before any request, these are its warmup runs (Triton counts them in
        the new version's statistics)."""
        return sum(entry["seconds"] for entry in self.executions_by_batch_size(model).values())

    def loads_logged(self, model: str) -> int:
        """How many times Triton's log says it began loading ``model``."""
        return self.log_path.read_text(errors="replace").count(f'"loading: {model}:')

    # -- requests ----------------------------------------------------------

    def inputs_at(self, model: str, shape: Shape, rng: np.random.Generator):
        """Request inputs at ``shape`` for ``model``'s config: its variable
        dimension is the group, floats are random, integers are ones (every
        item kept, token id 1)."""
        inputs = []
        for spec in self.bare_config(model).input:
            dims = [shape.group if size == -1 else int(size) for size in spec.dims]
            dims = [shape.batch] + dims
            if spec.data_type == model_config_pb2.TYPE_FP32:
                data = rng.standard_normal(dims).astype(np.float32)
                datatype = "FP32"
            else:
                data, datatype = np.ones(dims, dtype=np.int64), "INT64"
            tensor = httpclient.InferInput(spec.name, dims, datatype)
            tensor.set_data_from_numpy(data)
            inputs.append(tensor)
        return inputs

    def compute_infer(self, model: str) -> tuple:
        """(count, ns) of the model's compute_infer statistics."""
        stats = self.client.get_inference_statistics(model_name=model)
        compute = stats["model_stats"][0]["inference_stats"]["compute_infer"]
        return int(compute["count"]), int(compute["ns"])

    def timed_request(self, model: str, inputs) -> tuple:
        """(client wall ms, server compute_infer ms) of one request."""
        count, ns = self.compute_infer(model)
        started = time.perf_counter()
        self.client.infer(model, inputs)
        wall_ms = (time.perf_counter() - started) * 1000
        # Triton updates the statistics after it sends the response: wait for
        # this request's entry, or it would count toward the next request.
        deadline = time.monotonic() + 1.0
        while True:
            count_after, ns_after = self.compute_infer(model)
            if count_after > count or time.monotonic() > deadline:
                return wall_ms, (ns_after - ns) / 1e6
            time.sleep(0.0005)

    def measure_shapes(self, model: str, shapes: Sequence[Shape], steady_requests: int) -> List[Dict]:
        """For each shape in order: the first request, then ``steady_requests`` more.

        A batch size b is sent as one request holding b samples ([b, g, D]):
        the dynamic batcher schedules it as a batch of b and the backend runs
        one forward of batch b, the tensor shape a warmup sample with
        batch_size b produces.
        """
        rng = np.random.default_rng(0)
        self.client.is_server_live()  # the connection is open before the first timed request
        prepared = {shape: self.inputs_at(model, shape, rng) for shape in shapes}
        rows = []
        for shape in shapes:
            first_ms, first_compute_ms = self.timed_request(model, prepared[shape])
            walls, computes = [], []
            for _ in range(steady_requests):
                wall_ms, compute_ms = self.timed_request(model, prepared[shape])
                walls.append(wall_ms)
                computes.append(compute_ms)
            p50 = statistics.median(walls)
            compute_p50 = statistics.median(computes)
            rows.append(
                {
                    "group": shape.group,
                    "batch": shape.batch,
                    "first_ms": first_ms,
                    "first_compute_ms": first_compute_ms,
                    "steady_p50_ms": p50,
                    "steady_p99_ms": percentile(walls, 99),
                    "steady_compute_p50_ms": compute_p50,
                    "steady_compute_p99_ms": percentile(computes, 99),
                    "ratio": first_ms / p50,
                    "compute_ratio": first_compute_ms / compute_p50 if compute_p50 else None,
                    "steady_ms": walls,
                    "steady_compute_ms": computes,
                }
            )
        return rows

    def throughput(self, model: str, clients: int, requests_per_client: int, group: int) -> Dict:
        """Batch-1 requests from ``clients`` threads at once, so that the
        dynamic batcher forms batches of up to ``clients``."""
        stats_before = self.statistics(model)
        batches_before = self.executions_by_batch_size(model)
        barrier = threading.Barrier(clients)

        def worker(seed: int) -> List[float]:
            rng = np.random.default_rng(seed)
            with httpclient.InferenceServerClient(self.http_url) as client:
                inputs = self.inputs_at(model, Shape(group, 1), rng)
                latencies = []
                barrier.wait()
                for _ in range(requests_per_client):
                    started = time.perf_counter()
                    client.infer(model, inputs)
                    latencies.append((time.perf_counter() - started) * 1000)
                return latencies

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            latencies = [value for result in pool.map(worker, range(clients)) for value in result]
        seconds = time.perf_counter() - started
        stats_after = self.statistics(model)
        batches_after = self.executions_by_batch_size(model)
        executions = int(stats_after["execution_count"]) - int(stats_before["execution_count"])
        inferences = int(stats_after["inference_count"]) - int(stats_before["inference_count"])
        return {
            "requests": len(latencies),
            "seconds": seconds,
            "requests_per_s": len(latencies) / seconds,
            "latency_p50_ms": statistics.median(latencies),
            "latency_p99_ms": percentile(latencies, 99),
            "executions": executions,
            "mean_batch": inferences / executions if executions else None,
            # Executions per batch size the backend ran, from Triton's statistics.
            "batch_sizes_run": {
                size: entry["count"] - batches_before.get(size, {"count": 0})["count"]
                for size, entry in sorted(batches_after.items())
                if entry["count"] > batches_before.get(size, {"count": 0})["count"]
            },
        }


def seed_style_config(bare: model_config_pb2.ModelConfig, group_max: int) -> model_config_pb2.ModelConfig:
    """The original approach's warmup: batch size 1 only, every group size,
    one run per sample (``count`` left unset, which Triton runs once)."""
    plan = plan_warmup(bare, group_sizes=range(1, group_max + 1), batch_sizes=[1], count=1)
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(bare)
    for sample in plan.samples:
        added = config.model_warmup.add()
        added.CopyFrom(sample)
        added.ClearField("count")
    return config


def plan_with_count(
    bare: model_config_pb2.ModelConfig, group_max: int, batch_sizes: Optional[Sequence[int]], count: int
) -> model_config_pb2.ModelConfig:
    """The samples warmup_helper writes, with another ``count`` (for the count sweep)."""
    plan = plan_warmup(bare, group_sizes=range(1, group_max + 1), batch_sizes=batch_sizes, count=count)
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(bare)
    config.model_warmup.extend(plan.samples)
    return config
