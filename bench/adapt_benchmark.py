"""A plan that learns from traffic: how soon a recurring cold shape is warm,
what learning costs the traffic, and whether a restart starts warm for it.

Per trial and model, a fresh tritonserver with ``--trace-config
triton,file=...`` and the helper's ``watch_rate`` 1 and ``adapt`` on serves
the model warmed at lengths 1..16 (batch 1). A client thread sends a steady
open-loop load (each request timed from when it was due): first only
warmed lengths, then with one shape the plan lacks (batch 2, length 24) mixed in (every
``UNPLANNED_EVERY``-th request) until the shape has been learned and a few
seconds more. Reported:

- the time from the unplanned shape's third request (the helper's
  ``adapt_min_requests`` is 3) to the moment its learned sample is in the
  config (written after it ran in place, so warm);
- the p99 of the warmed lengths before and while it was learned;
- the cold share the helper's metrics showed before and after;
- each request at the unplanned shape, client-side, in order;
- after a restart on the same repository, warmed as the docs recommend
  (the same ``triton-warmup`` plan, which keeps learned samples), the first
  request at the learned shape against its steady median, server-side
  (``compute_infer`` of Triton's statistics API).

Models: text-encoder (the example, a few ms per request) and a MiniLM-sized
encoder generated here (6 layers, width 384, 12 heads: about 8 ms per
request on 2 CPUs), as in the issue's targets.
"""

import argparse
import pathlib
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Dict, List, Optional

import numpy as np
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from bench.measure import PROJECT_ROOT, Session, copy_repository, percentile, results_header, run_record
from bench.report import table, write_results
from bench.watch_benchmark import helper_parameters
from triton_warmup import HELPER_MODEL
from triton_warmup.client.states import warmth
from triton_warmup.client.warm import request_warmup, shape_arrays
from triton_warmup.embedded import EmbeddedTriton, free_port
from triton_warmup.helper.metrics import COLD_REQUESTS, REQUESTS_SEEN
from triton_warmup.helper.warmup_plan import LEARNED_PREFIX

TEXT_ENCODER = "text-encoder"
MINILM = "minilm-sized"
# A 0.1 ms model, where a new shape's first request costs the most relative
# to steady (oneDNN makes its primitives for the shape); no target of its own.
MODEL_V1 = "model-v1"
MODELS = (TEXT_ENCODER, MINILM, MODEL_V1)
WARM_LENGTHS = range(1, 17)
UNPLANNED_LENGTH = 24
# A batch size the plan lacks too: a new batch size costs the first request more than a new length.
UNPLANNED_BATCH = 2
UNPLANNED_EVERY = 20
RPS = {TEXT_ENCODER: 100.0, MINILM: 30.0, MODEL_V1: 200.0}
BEFORE_S = 8.0
AFTER_S = 5.0
LEARN_TIMEOUT_S = 180.0
STEADY_REQUESTS = 20
IDLE_BEFORE_FIRST_S = 1.0
# The targets.
WARM_WITHIN_S = {TEXT_ENCODER: 30.0, MINILM: 90.0}
P99_TARGET = 1.5
RESTART_TARGET = 1.5


def write_minilm_sized(repository: pathlib.Path) -> None:
    """A TorchScript encoder of MiniLM's size (random weights): token and
    position embeddings, 6 transformer layers of width 384 with 12 heads,
    mean pooling over the mask."""
    import torch  # noqa: PLC0415 - only the benchmark makes it

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens = torch.nn.Embedding(30522, 384)
            self.positions = torch.nn.Embedding(512, 384)
            layer = torch.nn.TransformerEncoderLayer(384, 12, 1536, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            hidden = self.tokens(input_ids) + self.positions(positions)
            hidden = self.encoder(hidden, src_key_padding_mask=attention_mask == 0)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    torch.manual_seed(0)
    folder = repository / MINILM
    (folder / "1").mkdir(parents=True)
    torch.jit.script(Encoder().eval()).save(str(folder / "1" / "model.pt"))
    config = text_format.Parse(
        (repository / TEXT_ENCODER / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    config.name = MINILM
    config.output[0].dims[:] = [384]
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))


def _inputs(model: str, length: int, batch: int = 1):
    if model == MODEL_V1:
        x = httpclient.InferInput("x", [batch, length, 64], "FP32")
        x.set_data_from_numpy(np.zeros((batch, length, 64), np.float32))
        mask = httpclient.InferInput("mask", [batch, length], "INT64")
        mask.set_data_from_numpy(np.ones((batch, length), np.int64))
        return [x, mask]
    ids = httpclient.InferInput("input_ids", [batch, length], "INT64")
    ids.set_data_from_numpy(np.ones((batch, length), np.int64))
    mask = httpclient.InferInput("attention_mask", [batch, length], "INT64")
    mask.set_data_from_numpy(np.ones((batch, length), np.int64))
    return [ids, mask]


def _learned(repository: pathlib.Path, model: str) -> bool:
    return LEARNED_PREFIX in (repository / model / "config.pbtxt").read_text()


class Traffic:
    """The open-loop load, in a thread: warmed lengths in a seeded order,
    and the unplanned one every ``UNPLANNED_EVERY``-th request once asked."""

    def __init__(self, server: EmbeddedTriton, model: str, rps: float, seed: int):
        self.server, self.model, self.rps = server, model, rps
        self.rng = np.random.default_rng(seed)
        self.unplanned = False
        self.sent: List[Dict] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        prepared = {length: _inputs(self.model, length) for length in WARM_LENGTHS}
        unplanned_inputs = _inputs(self.model, UNPLANNED_LENGTH, UNPLANNED_BATCH)
        with httpclient.InferenceServerClient(self.server.http_url, network_timeout=600) as client:
            started = time.perf_counter()
            index = 0
            while not self._stop.is_set():
                due = started + index / self.rps
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                unplanned = self.unplanned and index % UNPLANNED_EVERY == 0
                inputs = unplanned_inputs if unplanned else prepared[int(self.rng.choice(list(WARM_LENGTHS)))]
                try:
                    client.infer(self.model, inputs)
                except Exception:  # noqa: BLE001 - counted
                    self.failed += 1
                done = time.perf_counter()
                self.sent.append({"due": due, "done": done, "ms": (done - due) * 1000, "unplanned": unplanned})
                index += 1


def one_trial(workdir: pathlib.Path, model: str, trial: int) -> Dict:
    repository = copy_repository(workdir / "model_repository")
    if model == MINILM:
        write_minilm_sized(repository)
    for name in [path.name for path in repository.iterdir()]:
        if name not in (model, HELPER_MODEL):
            shutil.rmtree(repository / name)
    helper_parameters(repository, watch_rate="1", adapt="on")
    traces = workdir / "traces"
    traces.mkdir(mode=0o700)
    trace = [f"--trace-config=triton,file={traces / 'trace.json'}"]
    plan = shape_arrays([model], WARM_LENGTHS.start, WARM_LENGTHS.stop - 1, batch_sizes=[1])
    server = EmbeddedTriton(repository, workdir / "first", http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port(), log_verbose=0, extra_args=trace)
    with server:
        with httpclient.InferenceServerClient(server.http_url, network_timeout=900) as client:
            request_warmup(client, "http", plan)
            deadline = time.monotonic() + 60
            while client.get_trace_settings(model).get("trace_rate") != "1":
                assert time.monotonic() < deadline, "the watch did not turn tracing on"
                time.sleep(0.1)
        traffic = Traffic(server, model, RPS[model], trial)
        traffic.start()
        time.sleep(BEFORE_S)
        counts_on = _read_counts_of(server, model)
        on_at = time.perf_counter()
        traffic.unplanned = True
        learned_at = None
        while time.perf_counter() - on_at < LEARN_TIMEOUT_S:
            if _learned(repository, model):
                learned_at = time.perf_counter()
                break
            time.sleep(0.05)
        counts_learned = _read_counts_of(server, model)
        time.sleep(AFTER_S)
        traffic.stop()
        # The watch reads a trace within about two of its 1 s cycles.
        time.sleep(3)
        counts_end = _read_counts_of(server, model)
        log = server.log_text()
    unplanned = [request for request in traffic.sent if request["unplanned"]]
    third = unplanned[2]["due"] if len(unplanned) >= 3 else None
    warmed = [request for request in traffic.sent if not request["unplanned"]]
    before = [request["ms"] for request in warmed if on_at - BEFORE_S + 1 <= request["due"] < on_at]
    # The learning: from the third sighting until the sample was written,
    # and at least 2 s, so that a p99 has requests to stand on.
    window_end = max(learned_at or on_at, (third or on_at) + 2.0)
    during = [request["ms"] for request in warmed if (third or on_at) <= request["due"] <= window_end]
    learned_lines = [
        line.split("warmup_helper: ", 1)[-1].rstrip('"') for line in log.splitlines() if "warmup_helper: learned" in line
    ]
    restart = restarted(workdir, repository, model, plan, trace)
    return {
        "model": model,
        "trial": trial,
        "rps": RPS[model],
        "failed_requests": traffic.failed,
        "learned": learned_at is not None,
        "seconds_third_sighting_to_warm": None if learned_at is None or third is None else learned_at - third,
        "seconds_first_sighting_to_warm": None if learned_at is None or not unplanned else learned_at - unplanned[0]["due"],
        "p99_before_ms": percentile(before, 99) if before else None,
        "p99_during_ms": percentile(during, 99) if during else None,
        "requests_before": len(before),
        "requests_during": len(during),
        "cold_share_before": _share(counts_on, counts_learned),
        "cold_share_after": _share(counts_learned, counts_end),
        "unplanned_ms": [round(request["ms"], 3) for request in unplanned],
        "unplanned_after_learned": sum(1 for request in unplanned if learned_at and request["due"] > learned_at),
        "helper_log": learned_lines,
        **restart,
    }


def _read_counts_of(server: EmbeddedTriton, model: str) -> Dict[str, float]:
    """The helper's observed and cold requests of ``model`` on the metrics port."""
    with urllib.request.urlopen(f"http://localhost:{server.metrics_port}/metrics", timeout=10) as response:
        figures = warmth(response.read().decode()).get((model, "1"), {})
    return {"seen": figures.get(REQUESTS_SEEN, 0.0), "cold": figures.get(COLD_REQUESTS, 0.0)}


def _share(start: Dict[str, float], end: Dict[str, float]) -> Optional[float]:
    seen = end["seen"] - start["seen"]
    return (end["cold"] - start["cold"]) / seen if seen else None


def restarted(workdir: pathlib.Path, repository: pathlib.Path, model: str, plan, trace) -> Dict:
    """A second server on the same repository, warmed with the same plan:
    the first request at the learned shape against its steady median."""
    server = EmbeddedTriton(repository, workdir / "restart", http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port(), log_verbose=0, extra_args=trace)
    with server:
        session = Session(server.http_url, repository, server.log_path)
        try:
            request_warmup(session.client, "http", plan)
            figures = {}
            # A planned shape first, as the control: each first request comes
            # after the same idle second, whose own cost (docs/warm-stays-warm.md)
            # is then in both.
            for label, inputs in (("planned", _inputs(model, 8)),
                                  ("learned", _inputs(model, UNPLANNED_LENGTH, UNPLANNED_BATCH))):
                time.sleep(IDLE_BEFORE_FIRST_S)
                first_wall, first = session.timed_request(model, inputs)
                steady = [session.timed_request(model, inputs)[1] for _ in range(STEADY_REQUESTS)]
                figures[label] = (first_wall, first, statistics.median(steady))
        finally:
            session.close()
    first_wall, first, median = figures["learned"]
    _, planned_first, planned_median = figures["planned"]
    return {
        "restart_first_ms": first,
        "restart_first_wall_ms": first_wall,
        "restart_steady_ms": median,
        "restart_ratio": first / median if median else None,
        "restart_planned_ratio": planned_first / planned_median if planned_median else None,
    }


def summarize(results: Dict) -> Dict:
    summary = {}
    for model in {run["model"] for run in results["runs"]}:
        runs = [run for run in results["runs"] if run["model"] == model]

        def median(key):
            values = [run[key] for run in runs if run[key] is not None]
            return statistics.median(values) if values else None

        p99_ratios = [run["p99_during_ms"] / run["p99_before_ms"] for run in runs
                      if run["p99_during_ms"] and run["p99_before_ms"]]
        summary[model] = {
            "trials": len(runs),
            "learned": sum(run["learned"] for run in runs),
            "seconds_third_sighting_to_warm": median("seconds_third_sighting_to_warm"),
            "p99_ratio": statistics.median(p99_ratios) if p99_ratios else None,
            "failed_requests": sum(run["failed_requests"] for run in runs),
            "cold_share_before": median("cold_share_before"),
            "cold_share_after": median("cold_share_after"),
            "restart_ratio": median("restart_ratio"),
            "restart_planned_ratio": median("restart_planned_ratio"),
        }
    return summary


def _number(value, pattern="{:.2f}"):
    return "-" if value is None else pattern.format(value)


def markdown(results: Dict) -> str:
    parts = results_header("Learning shapes from traffic", results)
    parts.append(
        f"\nEach model warmed at lengths {WARM_LENGTHS.start}..{WARM_LENGTHS.stop - 1} (batch 1) on a fresh server "
        f"with `watch_rate` 1 and `adapt` on; an open-loop load ({', '.join(f'{m} {r:.0f}/s' for m, r in RPS.items())}), "
        f"{BEFORE_S:.0f} s of warmed lengths, then batch {UNPLANNED_BATCH} at length {UNPLANNED_LENGTH} every "
        f"{UNPLANNED_EVERY}th request "
        f"until it was learned, and {AFTER_S:.0f} s more. The restart: a second server on the same repository, "
        f"warmed with the same plan; after {IDLE_BEFORE_FIRST_S:.0f} s idle, server-side `compute_infer` of the "
        f"first request at a planned shape (batch 1, length 8: the control) and then, after another idle second, at "
        f"the learned shape, each against the median of {STEADY_REQUESTS} more at its shape.\n"
    )
    rows = []
    for run in results["runs"]:
        rows.append((run["model"], run["trial"] + 1, _number(run["seconds_third_sighting_to_warm"]),
                     _number(run["p99_before_ms"], "{:.2f}"), _number(run["p99_during_ms"], "{:.2f}"),
                     f"{run['requests_during']}", run["failed_requests"],
                     _number(run["cold_share_before"], "{:.1%}"), _number(run["cold_share_after"], "{:.1%}"),
                     ", ".join(f"{ms:.1f}" for ms in run["unplanned_ms"][:4]),
                     f"{_number(run['restart_first_ms'])} / {_number(run['restart_steady_ms'])}",
                     _number(run["restart_planned_ratio"], "{:.2f}x")))
    parts.append("\n## Runs\n")
    parts.append(table(("model", "trial", "s from 3rd sighting to warm", "p99 before ms", "p99 during ms",
                        "requests during", "failed", "cold share before", "cold share after",
                        "first unplanned requests ms (client)", "after restart: first / steady ms",
                        "planned shape's first / steady (control)"), rows))
    parts.append("\n## Against the targets (medians over the trials)\n")
    rows = []
    for model, figures in sorted(results["summary"].items()):
        rows.append((model, f"{_number(figures['seconds_third_sighting_to_warm'])} s"
                     + (f" (target {WARM_WITHIN_S[model]:.0f} s)" if model in WARM_WITHIN_S else ""),
                     f"{figures['failed_requests']} (target 0)", f"{_number(figures['p99_ratio'])}x (target {P99_TARGET}x)",
                     f"{_number(figures['restart_ratio'])}x (target {RESTART_TARGET}x)",
                     f"{_number(figures['restart_planned_ratio'])}x", f"{figures['learned']} of {figures['trials']}"))
    parts.append(table(("model", "3rd sighting to warm", "failed requests", "p99 during / before",
                        "first after restart / steady", "a planned shape's, the control", "learned"), rows))
    parts.append("\n## What the helper logged\n")
    for run in results["runs"]:
        for line in run["helper_log"]:
            parts.append(f"- {run['model']}, trial {run['trial'] + 1}: `{line}`")
    return "\n".join(parts) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3, help="Trials per model. Default is 3.")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                        help=f"Models. Default is {' '.join(MODELS)}.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    results = {**run_record("bench.adapt_benchmark"), "settings": {"trials": args.trials}, "runs": []}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="adapt-benchmark-"))
    try:
        for trial in range(args.trials):
            for model in args.models:
                run = one_trial(workdir / f"{model}-{trial}", model, trial)
                results["runs"].append(run)
                print(f"trial {trial + 1}, {model}: warm {_number(run['seconds_third_sighting_to_warm'])} s after the "
                      f"third sighting; p99 {_number(run['p99_before_ms'])} -> {_number(run['p99_during_ms'])} ms; "
                      f"{run['failed_requests']} failed; after restart {_number(run['restart_ratio'])}x steady",
                      flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["summary"] = summarize(results)
    write_results(args.output_dir, "adapt_benchmark", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
