#!/usr/bin/env python3
"""Re-warm under traffic: what a serving model's clients see while the helper re-warms it.

Each trial runs on a new tritonserver process. The model (model-v1 or
text-encoder, with --instances 1 and 2) is first warmed through the helper
with group sizes 1..--group-size (default 8) x batch sizes 1 and 4. Then
clients send requests at those shapes, and a poller asks every 50 ms
whether the model is READY:

* closed loop: --closed-clients threads (default 3) send without pause;
* open loop: requests are due at a fixed rate (--rate per model); each is
  timed from when it was due, so queueing shows as latency.

After half a second (not counted) and --phase-s seconds (default 3) more,
the helper re-warms the model with group sizes up to --rewarm-group-size
(default 32); the clients go on for --phase-s seconds after its answer. Requests are counted in the phase in
which they were sent: before, during the re-warm, after. Both ways the
helper can re-warm run as conditions: "in place" (its default) and
"reload" (its parameter ``rewarm: reload``, what it did before).

With the traffic stopped, every newly warmed shape is probed: as many
requests as the model has instances, one at a time (Triton gives each to the
idle instance that waited longest, so each instance gets one), then twice as
many more. A first request is slow when its compute_infer (Triton's
statistics) is over 1.5x the shape's steady median (and, by the rule of
bench/warm_stays_warm.py, also 30 us above it).

Writes rewarm_under_traffic.md and .json to --output-dir (default bench/results).
"""

import argparse
import dataclasses
import pathlib
import queue
import statistics
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

import numpy as np
import tritonclient.http as httpclient

from bench.measure import PROJECT_ROOT, TEXT_ENCODER, Session, Shape, copy_repository, percentile, results_header, run_record
from bench.report import table, write_results
from triton_warmup import HELPER_MODEL
from triton_warmup.embedded import EmbeddedTriton, free_port
from triton_warmup.helper.config_rewrite import read_config, render_config
from triton_warmup.helper.repository_guard import write_atomically

MODELS = ["model-v1", TEXT_ENCODER]
BATCH_SIZES = [1, 4]
CLOSED, OPEN = "closed loop", "open loop"
IN_PLACE, RELOAD = "in place", "reload"
# Open-loop rates: a quarter (model-v1) and about half (text-encoder) of
# what 3 closed-loop clients got from one instance here (model-v1 about
# 1900 requests/s, text-encoder about 115). The clients share the server's
# CPUs: Python at more than 500 requests/s would measure itself.
DEFAULT_RATES = {"model-v1": 500, TEXT_ENCODER: 50}
POLL_S = 0.05
SETTLE_S = 0.5
# bench/warm_stays_warm.py's rule for a slow first request.
SLOW_RATIO, SLOW_EXCESS_MS = 1.5, 0.03


@dataclasses.dataclass
class Sent:
    at: float
    latency_ms: float
    ok: bool


class Traffic:
    """Client threads at warmed shapes, and a readiness poller, until ``stop``."""

    def __init__(self, session: Session, model: str, mode: str, clients: int, rate: float, group_size: int):
        self.session, self.model, self.mode = session, model, mode
        self.clients, self.rate = clients, rate
        self.shapes = [Shape(group, batch) for group in range(1, group_size + 1) for batch in BATCH_SIZES]
        self.sent: List[Sent] = []
        self.not_ready: List[float] = []
        self.polls = 0
        self.errors: List[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []

    def start(self) -> None:
        workers = self.clients if self.mode == CLOSED else max(8, self.clients)
        due: "queue.Queue[Optional[float]]" = queue.Queue()
        # Requests fall due only once every client has its inputs ready, or
        # the first ones would count the clients' own start as latency.
        ready = threading.Barrier(workers + (1 if self.mode == OPEN else 0))
        for seed in range(workers):
            self._threads.append(threading.Thread(target=self._client, args=(seed, due, ready), daemon=True))
        if self.mode == OPEN:
            self._threads.append(threading.Thread(target=self._schedule, args=(due, workers, ready), daemon=True))
        self._threads.append(threading.Thread(target=self._poll, daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _schedule(self, due: "queue.Queue", workers: int, ready: threading.Barrier) -> None:
        ready.wait()
        interval = 1.0 / self.rate
        next_at = time.perf_counter()
        while not self._stop.is_set():
            due.put(next_at)
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))
        for _ in range(workers):
            due.put(None)

    def _client(self, seed: int, due: "queue.Queue", ready: threading.Barrier) -> None:
        rng = np.random.default_rng(seed)
        with httpclient.InferenceServerClient(self.session.http_url, network_timeout=60) as client:
            prepared = [self.session.inputs_at(self.model, shape, rng) for shape in self.shapes]
            client.is_server_live()  # the connection is open before the first timed request
            ready.wait()
            while not self._stop.is_set():
                if self.mode == OPEN:
                    at = due.get()
                    if at is None:
                        return
                    time.sleep(max(0.0, at - time.perf_counter()))
                else:
                    at = time.perf_counter()
                ok = True
                try:
                    client.infer(self.model, prepared[rng.integers(len(prepared))])
                except Exception as error:  # noqa: BLE001 - a lost request is a result
                    ok = False
                    with self._lock:
                        self.errors.append(str(error)[:200])
                with self._lock:
                    self.sent.append(Sent(at, (time.perf_counter() - at) * 1000, ok))

    def _poll(self) -> None:
        with httpclient.InferenceServerClient(self.session.http_url) as client:
            while not self._stop.is_set():
                at = time.perf_counter()
                try:
                    ready = client.is_model_ready(self.model)
                except Exception:  # noqa: BLE001 - an unanswered poll counts as not READY
                    ready = False
                self.polls += 1
                if not ready:
                    self.not_ready.append(at)
                time.sleep(max(0.0, POLL_S - (time.perf_counter() - at)))


def phase_figures(sent: List[Sent], start: float, end: float) -> Dict:
    chosen = [entry for entry in sent if start <= entry.at < end]
    latencies = [entry.latency_ms for entry in chosen if entry.ok]
    return {
        "requests": len(chosen),
        "failed": sum(1 for entry in chosen if not entry.ok),
        "seconds": end - start,
        "per_s": len(chosen) / (end - start) if end > start else None,
        "p50_ms": percentile(latencies, 50) if latencies else None,
        "p99_ms": percentile(latencies, 99) if latencies else None,
        "max_ms": max(latencies) if latencies else None,
    }


def set_instances(repository: pathlib.Path, model: str, instances: int) -> None:
    _, config = read_config(repository / model)
    del config.model_warmup[:]
    config.instance_group[0].count = instances
    write_atomically(repository / model / "config.pbtxt", render_config(config))


def set_rewarm(repository: pathlib.Path, how: str, duty_percent: Optional[int]) -> None:
    _, config = read_config(repository / HELPER_MODEL)
    config.parameters["rewarm"].string_value = "in_place" if how == IN_PLACE else "reload"
    if duty_percent is not None:
        config.parameters["rewarm_duty_percent"].string_value = str(duty_percent)
    write_atomically(repository / HELPER_MODEL / "config.pbtxt", render_config(config))


def probe_new_shapes(session: Session, model: str, shapes: List[Shape], instances: int) -> Dict:
    """The first request at each shape on each instance, against the shape's steady median."""
    rng = np.random.default_rng(1)
    session.client.is_server_live()
    rows = []
    for shape in shapes:
        inputs = session.inputs_at(model, shape, rng)
        timed = [session.timed_request(model, inputs)[1] for _ in range(3 * instances)]
        steady = statistics.median(timed[instances:])
        for first in timed[:instances]:
            rows.append({"group": shape.group, "batch": shape.batch, "first_ms": first, "steady_ms": steady})
    over = [row for row in rows if row["first_ms"] > SLOW_RATIO * row["steady_ms"]]
    slow = [row for row in over if row["first_ms"] - row["steady_ms"] > SLOW_EXCESS_MS]
    return {
        "firsts": len(rows),
        "over_1_5x": len(over),
        "slow": len(slow),
        "worst_ratio": max(row["first_ms"] / row["steady_ms"] for row in rows) if rows else None,
        "rows": rows,
    }


def run_trial(model: str, instances: int, mode: str, how: str, trial: int, workdir: pathlib.Path, args) -> Dict:
    folder = workdir / f"{model}-{instances}-{mode.replace(' ', '_')}-{how.replace(' ', '_')}-{trial}"
    repository = copy_repository(folder / "model_repository")
    set_instances(repository, model, instances)
    set_rewarm(repository, how, args.duty_percent)
    server = EmbeddedTriton(repository, folder, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with server:
        session = Session(server.http_url, repository, server.log_path)
        try:
            session.trigger([model], args.group_size, BATCH_SIZES)
            traffic = Traffic(session, model, mode, args.closed_clients, args.rate[model], args.group_size)
            traffic.start()
            # Requests of the clients' first moments are not counted.
            time.sleep(SETTLE_S)
            before_start = time.perf_counter()
            time.sleep(args.phase_s)
            rewarm_start = time.perf_counter()
            report = session.trigger([model], args.rewarm_group_size, BATCH_SIZES)
            rewarm_end = time.perf_counter()
            time.sleep(args.phase_s)
            after_end = time.perf_counter()
            traffic.stop()
            entry = report["models"][0]
            new_shapes = [Shape(group, batch) for group in range(args.group_size + 1, args.rewarm_group_size + 1)
                          for batch in BATCH_SIZES]
            probe = probe_new_shapes(session, model, new_shapes[:: args.probe_every], instances)
            loads = session.loads_logged(model)
        finally:
            session.close()
    phases = {
        "before": phase_figures(traffic.sent, before_start, rewarm_start),
        "during": phase_figures(traffic.sent, rewarm_start, rewarm_end),
        "after": phase_figures(traffic.sent, rewarm_end, after_end),
    }
    result = {
        "phases": phases,
        "rewarm_s": rewarm_end - rewarm_start,
        "rewarm": entry.get("rewarm"),
        "rewarm_reason": entry.get("rewarm_reason"),
        "in_place_runs": entry.get("in_place_runs"),
        "status": entry["status"],
        "loads_logged": loads,
        "polls": traffic.polls,
        "not_ready": len(traffic.not_ready),
        "failed": sum(phase["failed"] for phase in phases.values()),
        "errors": traffic.errors[:5],
        "p99_ratio": phases["during"]["p99_ms"] / phases["before"]["p99_ms"]
        if phases["during"]["p99_ms"] and phases["before"]["p99_ms"] else None,
        "probe": {key: value for key, value in probe.items() if key != "rows"},
        "probe_rows": probe["rows"],
    }
    print(f"{model}, {instances} instance(s), {mode}, {how}, trial {trial + 1}: "
          f"p99 {phases['before']['p99_ms']:.1f} -> {phases['during']['p99_ms'] or 0:.1f} ms "
          f"({result['p99_ratio'] or 0:.2f}x) over {result['rewarm_s']:.2f} s, {result['rewarm']}; "
          f"failed {result['failed']}, not READY {result['not_ready']}; "
          f"first requests over 1.5x: {probe['over_1_5x']} of {probe['firsts']}", flush=True)
    return result


def summarize(trials: List[Dict]) -> Dict:
    def median(pick):
        values = [pick(trial) for trial in trials if pick(trial) is not None]
        return statistics.median(values) if values else None

    summary = {
        "p99_ratio": median(lambda trial: trial["p99_ratio"]),
        "rewarm_s": median(lambda trial: trial["rewarm_s"]),
        "failed": sum(trial["failed"] for trial in trials),
        "not_ready": sum(trial["not_ready"] for trial in trials),
        "probe_over_1_5x": median(lambda trial: trial["probe"]["over_1_5x"]),
        "probe_slow": median(lambda trial: trial["probe"]["slow"]),
        "probe_firsts": trials[0]["probe"]["firsts"],
        "rewarm": sorted({trial["rewarm"] or "-" for trial in trials}),
        "rewarm_reason": trials[0]["rewarm_reason"],
        "phases": {},
    }
    for phase in ("before", "during", "after"):
        summary["phases"][phase] = {
            key: median(lambda trial: trial["phases"][phase][key])
            for key in ("requests", "p50_ms", "p99_ms", "max_ms")
        }
    return summary


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(results: Dict) -> str:
    lines = results_header("Re-warm under traffic", results)
    lines.append(
        f"Medians of {results['trials']} fresh servers per row. The model was warmed at group sizes "
        f"1..{results['group_size']} x batch sizes {BATCH_SIZES}, then re-warmed up to group size "
        f"{results['rewarm_group_size']} while clients sent requests at the first shapes: "
        f"{results['closed_clients']} threads without pause (closed loop), or requests due at a fixed rate "
        f"(open loop, {', '.join(f'{model} {rate}/s' for model, rate in results['rate'].items())}), timed from "
        f"when they were due. Phases of {results['phase_s']} s before and after the re-warm. \"p99 x\" is p99 "
        "during the re-warm over p99 before (target: at most 2). Failed and not-READY are summed over the "
        "trials. \"firsts over 1.5x\": with the traffic stopped, the first request at each newly warmed shape "
        "on each instance, against that shape's steady compute_infer (Triton's statistics); in brackets those "
        "also 30 us above it (the rule of warm_stays_warm.py).\n"
    )
    header = ["model", "instances", "clients", "re-warm", "p50 / p99 / max before (ms)", "during", "after",
              "p99 x", "re-warm s", "failed", "not READY", "firsts over 1.5x"]
    rows = []
    for row in results["rows"]:
        summary = row["summary"]
        phases = summary["phases"]
        rows.append([
            row["model"], row["instances"], row["clients"], row["how"],
            " / ".join(_ms(phases["before"][key]) for key in ("p50_ms", "p99_ms", "max_ms")),
            " / ".join(_ms(phases["during"][key]) for key in ("p50_ms", "p99_ms", "max_ms")),
            " / ".join(_ms(phases["after"][key]) for key in ("p50_ms", "p99_ms", "max_ms")),
            "-" if summary["p99_ratio"] is None else f"{summary['p99_ratio']:.2f}",
            f"{summary['rewarm_s']:.2f}",
            summary["failed"],
            summary["not_ready"],
            f"{summary['probe_over_1_5x']:g} ({summary['probe_slow']:g}) of {summary['probe_firsts']}",
        ])
    lines.append(table(header, rows))
    lines.append("\n## What the helper did, per row\n")
    for row in results["rows"]:
        summary = row["summary"]
        lines.append(f"- {row['model']}, {row['instances']} instance(s), {row['clients']}, {row['how']}: "
                     f"{', '.join(summary['rewarm'])}: {summary['rewarm_reason']}")
    lines.append("\n## Per trial\n")
    for row in results["rows"]:
        ratios = ", ".join("-" if trial["p99_ratio"] is None else f"{trial['p99_ratio']:.2f}x"
                           for trial in row["trials"])
        requests = ", ".join(str(trial["phases"]["during"]["requests"]) for trial in row["trials"])
        rates = ", ".join(f"{trial['phases']['before']['per_s']:.0f}/{trial['phases']['during']['per_s']:.0f}"
                          for trial in row["trials"])
        lines.append(f"- {row['model']}, {row['instances']}, {row['clients']}, {row['how']}: p99 x {ratios}; "
                     f"requests during the re-warm {requests}; requests/s before/during {rates}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS, help="Default is both.")
    parser.add_argument("--instances", nargs="+", type=int, default=[1, 2], help="Default is 1 and 2.")
    parser.add_argument("--clients", nargs="+", default=[CLOSED, OPEN], choices=[CLOSED, OPEN],
                        help="Default is both.")
    parser.add_argument("--how", nargs="+", default=[IN_PLACE, RELOAD], choices=[IN_PLACE, RELOAD],
                        help="Default is both.")
    parser.add_argument("--trials", type=int, default=3, help="Fresh servers per row. Default is 3.")
    parser.add_argument("--phase-s", type=float, default=3.0, help="Seconds before and after. Default is 3.")
    parser.add_argument("--closed-clients", type=int, default=3, help="Closed-loop threads. Default is 3.")
    parser.add_argument("--rate", type=float, nargs="+", default=None,
                        help=f"Open-loop requests per second, one per model. Default: {DEFAULT_RATES}.")
    parser.add_argument("--group-size", type=int, default=8, help="Warmed before. Default is 8.")
    parser.add_argument("--rewarm-group-size", type=int, default=32, help="Re-warmed up to. Default is 32.")
    parser.add_argument("--duty-percent", type=int, default=None,
                        help="The helper's rewarm_duty_percent. Default: the helper's own.")
    parser.add_argument("--probe-every", type=int, default=1, help="Probe every n-th new shape. Default is 1.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    if args.rate is not None and len(args.rate) != len(args.models):
        parser.error("--rate takes one rate per model of --models")
    args.rate = dict(zip(args.models, args.rate)) if args.rate else {model: DEFAULT_RATES[model] for model in args.models}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="rewarm-under-traffic-"))
    rows = []
    for model in args.models:
        for instances in args.instances:
            for mode in args.clients:
                for how in args.how:
                    trials = [run_trial(model, instances, mode, how, trial, workdir, args) for trial in range(args.trials)]
                    rows.append({"model": model, "instances": instances, "clients": mode, "how": how,
                                 "summary": summarize(trials), "trials": trials})
    results = {
        **run_record("bench.rewarm_under_traffic"),
        "trials": args.trials,
        "phase_s": args.phase_s,
        "closed_clients": args.closed_clients,
        "rate": args.rate,
        "group_size": args.group_size,
        "rewarm_group_size": args.rewarm_group_size,
        "duty_percent": args.duty_percent,
        "rows": rows,
    }
    write_results(args.output_dir, "rewarm_under_traffic", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
