"""Time to READY when the server warms itself at start (warm_on_start) against
today's client trigger, side by side on the same repository.

Per trial, on a fresh copy of the example repository (PyTorch 2 model left
out unless --with-pytorch2), each way starts a fresh tritonserver with
``--load-model=warmup_helper`` and is timed from the server's process start
until every model of the repository is READY in Triton's repository index:

- client: the server starts, ``triton-warmup --all`` is sent once the
  helper is READY (what deploy/entrypoint.sh and triton-warmup-serve do);
- start: the helper's ``warm_on_start: all`` and nothing else.

Each way then restarts on the repository it warmed (samples recorded, as a
rolling update or a new replica sees it) and is timed again. The order of
the two ways alternates by trial. During each start warmup,
``/v2/health/ready`` is polled every 20 ms: what a platform that probes only
the server's readiness (Triton's SageMaker /ping answers from it) sees.

After each first start, either way, the first request at every planned
shape of model-v1 and text-encoder is sent, then 10 more at that shape:
READY must mean warm, so each shape's first server-side ``compute_infer`` is
compared with its steady median (the client trigger's figures show this
machine's floor for the same configs).
"""

import argparse
import pathlib
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional

import tritonclient.http as httpclient

from bench.measure import PROJECT_ROOT, Session, Shape, copy_repository, results_header, run_record
from bench.report import table, write_results
from triton_warmup import HELPER_MODEL
from triton_warmup.client import warm
from triton_warmup.client.flags import repository_index
from triton_warmup.embedded import EmbeddedTriton, free_port
from triton_warmup.example_models import COMPILED_ENCODER
from triton_warmup.client.install_helper import set_warm_on_start

WAYS = ("client", "start")
# Every model READY, with room for a slow first start.
READY_TIMEOUT_S = 600
INDEX_POLL_S = 0.05
READINESS_POLL_S = 0.02
# The targets: warm_on_start within this of the client trigger, and
# the first request at a planned shape within this of steady.
RATIO_TARGET = 1.05
FIRST_REQUEST_TARGET = 1.5
# The models whose planned shapes are probed after a start warmup, with the
# batch sizes --all plans for them (their configs' max_batch_size 8).
PROBED_MODELS = ("model-v1", "text-encoder")
PROBED_SHAPES = [Shape(group, batch) for batch in (1, 2, 4, 8) for group in range(1, 5)]
STEADY_REQUESTS = 10


def _health_code(url: str, endpoint: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/{endpoint}", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


class ReadinessProbe:
    """Polls ``/v2/health/ready`` on a thread: (seconds since start, HTTP
    code); and notes when ``/v2/health/live`` first answered 200 (the
    server's start-up, the helper's load included, is over)."""

    def __init__(self, url: str, started: float):
        self.url, self.started = url, started
        self.samples: List[tuple] = []
        self.live_s: Optional[float] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            if self.live_s is None and _health_code(self.url, "live") == 200:
                self.live_s = time.perf_counter() - self.started
            self.samples.append((time.perf_counter() - self.started, _health_code(self.url, "ready")))
            self._stop.wait(READINESS_POLL_S)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        return False

    def windows_of_200(self, live_s: float, all_ready_s: float) -> Dict:
        """200 answers between the server's start-up and the last model's
        READY: how often readiness flipped back to 200, and for how long."""
        windows, current = [], None
        for at, code in self.samples:
            if at > all_ready_s:
                break
            if code == 200:
                current = current or [at, at]
                current[1] = at
            elif current is not None:
                windows.append(current)
                current = None
        # The warmup's first load is the first 400 after the start-up; the
        # windows that open after it fall between its loads.
        first_400 = next((at for at, code in self.samples if at >= live_s and code == 400), all_ready_s)
        during = [window for window in windows if window[0] > first_400]
        return {
            "polls": sum(1 for at, _ in self.samples if at <= all_ready_s),
            "polls_400": sum(1 for at, code in self.samples if at <= all_ready_s and code == 400),
            "windows_200": len(windows),
            "windows_200_during_warmup": len(during),
            "seconds_200_during_warmup": round(sum(end - start for start, end in during), 3),
            "first_load_s": round(first_400, 3),
        }


def wait_all_ready(server: EmbeddedTriton, started: float) -> float:
    """Seconds from ``started`` until every model of the index is READY."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpclient.InferenceServerClient(server.http_url) as client:
        while time.monotonic() < deadline:
            try:
                index = repository_index(client, "http", None)
            except Exception:  # noqa: BLE001 - not listening yet, or the index race while a warmup writes
                index = []
            states = {entry["name"]: entry.get("state") for entry in index if not entry["name"].startswith(".")}
            if states and all(state == "READY" for state in states.values()):
                return time.perf_counter() - started
            if not server.is_running():
                raise RuntimeError(f"tritonserver exited. Log {server.log_path}:\n{server.log_tail()}")
            time.sleep(INDEX_POLL_S)
    raise TimeoutError(f"not every model READY within {READY_TIMEOUT_S} s. Log {server.log_path}")


def one_start(repository: pathlib.Path, workdir: pathlib.Path, way: str, probe_shapes: bool = False) -> Dict:
    server = EmbeddedTriton(repository, workdir, http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port(), log_verbose=0)
    started = time.perf_counter()
    server.start()
    try:
        with ReadinessProbe(server.http_url, started) as probe:
            if way == "client":
                server.wait_ready(READY_TIMEOUT_S)
                code = warm.main(["-u", server.http_url, "--all", "--json"])
                if code != 0:
                    raise RuntimeError(f"triton-warmup --all exited {code}. Log {server.log_path}")
            all_ready_s = wait_all_ready(server, started)
        run = {
            "way": way,
            "all_ready_s": round(all_ready_s, 3),
            "server_live_s": round(probe.live_s, 3) if probe.live_s is not None else None,
            "readiness": probe.windows_of_200(probe.live_s or 0.0, all_ready_s),
        }
        if probe_shapes:
            session = Session(server.http_url, repository, server.log_path)
            try:
                run["first_requests"] = {
                    model: [
                        {key: row[key] for key in ("group", "batch", "first_compute_ms", "steady_compute_p50_ms",
                                                   "compute_ratio")}
                        for row in session.measure_shapes(model, PROBED_SHAPES, STEADY_REQUESTS)
                    ]
                    for model in PROBED_MODELS
                }
            finally:
                session.close()
        return run
    finally:
        server.stop()


def trial(workdir: pathlib.Path, index: int, with_pytorch2: bool) -> List[Dict]:
    runs = []
    ways = WAYS if index % 2 == 0 else tuple(reversed(WAYS))
    for way in ways:
        repository = copy_repository(workdir / f"{index}-{way}" / "model_repository")
        if not with_pytorch2:
            shutil.rmtree(repository / COMPILED_ENCODER)
        if way == "start":
            set_warm_on_start(repository / HELPER_MODEL, "all")
        for start in ("first start", "restart"):
            probe_shapes = start == "first start"
            run = one_start(repository, workdir / f"{index}-{way}" / start.replace(" ", "-"), way, probe_shapes)
            run.update(trial=index, start=start)
            runs.append(run)
            print(f"trial {index + 1}, {way}, {start}: every model READY {run['all_ready_s']:.2f} s after the "
                  f"server's start; /v2/health/ready went back to 200 {run['readiness']['windows_200_during_warmup']} "
                  f"time(s) during the warmup", flush=True)
    return runs


def _median(runs: List[Dict], way: str, start: str, key: str = "all_ready_s") -> float:
    return statistics.median(run[key] for run in runs if run["way"] == way and run["start"] == start)


def _pair_ratios(runs: List[Dict], start: str) -> List[float]:
    by_trial: Dict[int, Dict[str, float]] = {}
    for run in runs:
        if run["start"] == start:
            by_trial.setdefault(run["trial"], {})[run["way"]] = run["all_ready_s"]
    return [pair["start"] / pair["client"] for pair in by_trial.values() if len(pair) == 2]


def first_requests(runs: List[Dict]) -> Dict[str, List[Dict]]:
    """Per way, model and planned shape, the median over trials of the first
    request's compute against its steady median."""
    by_shape: Dict[tuple, List[Dict]] = {}
    for run in runs:
        for model, rows in run.get("first_requests", {}).items():
            for row in rows:
                by_shape.setdefault((f"{model}, {run['way']}", row["group"], row["batch"]), []).append(row)
    medians: Dict[str, List[Dict]] = {}
    for (model, group, batch), rows in sorted(by_shape.items()):
        medians.setdefault(model, []).append({
            "group": group,
            "batch": batch,
            "first_compute_ms": statistics.median(row["first_compute_ms"] for row in rows),
            "steady_compute_p50_ms": statistics.median(row["steady_compute_p50_ms"] for row in rows),
            "compute_ratio": statistics.median(row["compute_ratio"] for row in rows),
        })
    return medians


def summarize(runs: List[Dict]) -> Dict:
    summary = {"first_requests": first_requests(runs)}
    for start in ("first start", "restart"):
        ratios = _pair_ratios(runs, start)
        summary[start] = {
            "client_median_s": _median(runs, "client", start),
            "start_median_s": _median(runs, "start", start),
            "pair_ratios": [round(ratio, 3) for ratio in ratios],
            "median_pair_ratio": round(statistics.median(ratios), 3),
            "within_target": statistics.median(ratios) <= RATIO_TARGET,
        }
    return summary


def markdown(results: Dict) -> str:
    runs, summary = results["runs"], results["summary"]
    parts = results_header("Warm at start (warm_on_start) against the client trigger", results)
    parts.append(
        f"\nModels: every model of the example repository{'' if results['settings']['with_pytorch2'] else ' but the PyTorch 2 one'}, "
        f"group sizes 1..4 (what `--all` and `warm_on_start: all` plan). From the server's process start until every "
        f"model is READY in Triton's index, seconds; {results['settings']['trials']} trials, the two ways in "
        f"alternating order, each on a fresh copy of the repository, then restarted on it. Target: start / client "
        f"<= {RATIO_TARGET}x by the median of the per-trial pairs.\n"
    )
    rows = []
    for start, figures in ((key, value) for key, value in summary.items() if key != "first_requests"):
        rows.append((start, f"{figures['client_median_s']:.2f}", f"{figures['start_median_s']:.2f}",
                     f"{figures['median_pair_ratio']:.3f}x", ", ".join(f"{ratio:.3f}" for ratio in figures["pair_ratios"]),
                     "yes" if figures["within_target"] else "no"))
    parts.append(table(("", "client trigger", "warm_on_start", "start / client (median of pairs)",
                        "per trial", f"<= {RATIO_TARGET}x"), rows))
    parts.append(
        f"\n## The first request at each planned shape after the first start\n\nServer-side `compute_infer`, ms; the "
        f"median over trials of each shape's first request after every model was READY, against the median of the "
        f"{STEADY_REQUESTS} that followed; target: at most {FIRST_REQUEST_TARGET}x. The same configs warmed by the "
        f"client trigger give this machine's floor.\n"
    )
    rows = []
    for model, shapes in summary["first_requests"].items():
        over = [row for row in shapes if row["compute_ratio"] > FIRST_REQUEST_TARGET]
        worst = max(shapes, key=lambda row: row["compute_ratio"])
        rows.append((model, len(shapes), len(over), f"g{worst['group']}xb{worst['batch']}",
                     f"{worst['first_compute_ms']:.3f}", f"{worst['steady_compute_p50_ms']:.3f}",
                     f"{worst['compute_ratio']:.2f}x",
                     f"{statistics.median(row['compute_ratio'] for row in shapes):.2f}x"))
    parts.append(table(("model, way", "planned shapes", f"over {FIRST_REQUEST_TARGET}x", "worst shape", "its first ms",
                        "its steady ms", "its ratio", "median ratio"), rows))
    parts.append(
        "\n## What `/v2/health/ready` said meanwhile\n\nPolled every 20 ms from the server's process start until "
        "every model was READY. Strict readiness (Triton's default) is 400 while a model loads and 200 when "
        "every loaded model is READY, so it flips back to 200 between loads: a platform that probes only the "
        "server's readiness can route traffic to a replica that is still warming.\n"
    )
    rows = []
    for run in runs:
        readiness = run["readiness"]
        rows.append((run["trial"] + 1, run["way"], run["start"], f"{run['all_ready_s']:.2f}", readiness["polls"],
                     readiness["polls_400"], readiness["windows_200"], readiness["windows_200_during_warmup"],
                     f"{readiness['seconds_200_during_warmup']:.2f}"))
    parts.append(table(("trial", "way", "start", "all READY s", "polls", "400s", "200 windows",
                        "200 windows after the first load", "seconds of 200 after it"), rows))
    parts.append(
        "\nThe first 200 window is the gap between the server's start-up and the warmup's first load "
        "(the helper's thread polls every 0.1 s; the client trigger waits for the server, then starts a process).\n"
    )
    return "\n".join(parts) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="Pairs of first starts (and restarts). Default is 5.")
    parser.add_argument("--with-pytorch2", action="store_true",
                        help="Keep the torch.compile example (a minute per first start). Default is off.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    results = {**run_record("bench.start_benchmark"),
               "settings": {"trials": args.trials, "with_pytorch2": args.with_pytorch2}, "runs": []}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="start-benchmark-"))
    try:
        for index in range(args.trials):
            results["runs"].extend(trial(workdir, index, args.with_pytorch2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["summary"] = summarize(results["runs"])
    write_results(args.output_dir, "start_benchmark", results, markdown(results))
    for start, figures in ((key, value) for key, value in results["summary"].items() if key != "first_requests"):
        print(f"{start}: client {figures['client_median_s']:.2f} s, warm_on_start {figures['start_median_s']:.2f} s, "
              f"{figures['median_pair_ratio']:.3f}x (median of pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
