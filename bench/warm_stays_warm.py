#!/usr/bin/env python3
"""Warm stays warm: after READY, is every warmed shape of every model fast at its first request?

One server with Triton's tracing on serves the four example TorchScript
models (model-v1..v3 and text-encoder) --requests requests each,
interleaved, with the shapes of bench/traffic_benchmark.py;
``triton-warmup-from-trace`` makes one plan of the trace. Then, --trials times per condition, each on a new
tritonserver process (libtorch keeps what it made per process):

* cold: the four models loaded without warmup;
* range, model by model: four helper requests, one per model, each the
  256-sample range plan (group sizes 1..--group-size-max, default 64, x
  batch sizes 1, 2, 4, 8);
* range, four in one request: the same plans in one request;
* traffic, model by model / four in one request: the plan made from traffic;
* range, four in one request, mismatched server: OMP_NUM_THREADS at the CPU
  count, so the server's OpenMP default differs from the models' intra-op
  count (1); only the helper's own answer (the largest sample first) keeps
  the shapes warm.

Only when every model is READY is any request sent. Then, model after model,
every recorded shape in the order the traffic first sent it: the first
request, then --steady more. The same pass then runs again, --passes in all.
A shape is slow when its first request's compute_infer (Triton's
statistics) is more than 1.5x its steady median and more than 30 us above
it. In the second pass every shape has run before; from the third on, the
server has also served a whole pass of traffic: the median of those
"settled" passes is the measurement's floor (a shape switch alone costs
something on a model whose steady compute is a fraction of a millisecond).
The tritonserver process's resident memory after READY is read from /proc.

Writes warm_stays_warm.md and .json to --output-dir (default bench/results).
"""

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
from typing import Dict, List, Optional

import numpy as np
import yaml

from bench.measure import results_header, PROJECT_ROOT, TEXT_ENCODER, Session, Shape, copy_repository, run_record
from bench.report import write_results
from bench.traffic_benchmark import BATCH_SIZES, LONGEST, range_plan, run_from_trace, traffic_shapes
from triton_warmup import threads
from triton_warmup.client import openmp_threads
from triton_warmup.embedded import EmbeddedTriton, free_port
from triton_warmup.traffic.trace import recording_flags

MODELS = ("model-v1", "model-v2", "model-v3", TEXT_ENCODER)
SLOW_RATIO = 1.5
SLOW_EXCESS_MS = 0.03
MISMATCHED = "range, four in one request, mismatched server"
CONDITIONS = (
    # (name, plan, in one request, extra server environment)
    ("cold", None, False, {}),
    ("range, model by model", "range", False, {}),
    ("range, four in one request", "range", True, {}),
    ("traffic, model by model", "traffic", False, {}),
    ("traffic, four in one request", "traffic", True, {}),
    (MISMATCHED, "range", True, {threads.OPENMP_VARIABLE: str(len(os.sched_getaffinity(0)))}),
)


def record(workdir: pathlib.Path, repository: pathlib.Path, requests: int) -> Dict:
    """One server, tracing on, serving the four models: ``requests`` requests
    per model, interleaved as a repository's clients send them. The trace,
    and per model the shapes in the order first sent and their counts."""
    trace = workdir / "trace.json"
    rng = np.random.default_rng(2026)
    sent = {model: traffic_shapes(requests, rng) for model in MODELS}
    server = EmbeddedTriton(repository, workdir / "recording", http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port(), extra_args=recording_flags(trace))
    with server:
        session = Session(server.http_url, repository, server.log_path)
        try:
            for model in MODELS:
                session.client.load_model(model)
            for index in range(requests):
                for model in MODELS:
                    batch, length = sent[model][index]
                    session.client.infer(model, session.inputs_at(model, Shape(length, batch), rng))
        finally:
            session.close()
    recorded = {}
    for model, shapes in sent.items():
        first_seen = list(dict.fromkeys(shapes))
        recorded[model] = {"first_seen": first_seen, "counts": {shape: shapes.count(shape) for shape in first_seen}}
    return {"trace": trace, "models": recorded}


def resident_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def is_slow(row: Dict) -> bool:
    steady = row["steady_compute_p50_ms"]
    return row["first_compute_ms"] > SLOW_RATIO * steady and row["first_compute_ms"] - steady > SLOW_EXCESS_MS


def repeat_is_slow(row: Dict) -> bool:
    """The same test on a request that is not a first one: the first steady
    request against the median of the others. How often it says "slow" is
    the noise of one request on this machine."""
    first, *others = row["steady_compute_ms"]
    steady = statistics.median(others)
    return first > SLOW_RATIO * steady and first - steady > SLOW_EXCESS_MS


def score(rows: List[Dict], counts: Dict) -> Dict:
    slow = [row for row in rows if is_slow(row)]
    total = sum(counts.values())
    return {
        "shapes": len(rows),
        "slow_shapes": len(slow),
        "slow_repeats": sum(1 for row in rows if repeat_is_slow(row)),
        "slow_traffic_share": sum(counts[(row["batch"], row["group"])] for row in slow) / total,
        "excess_ms": sum(max(0.0, row["first_compute_ms"] - row["steady_compute_p50_ms"]) for row in rows),
        "worst_ratio": max(row["compute_ratio"] or 1.0 for row in rows),
    }


def bring_up(session: Session, plan: Optional[Dict], together: bool) -> Dict:
    """Every model READY in the condition; the helper's seconds to READY."""
    if plan is None:
        seconds = sum(session.load_with_config(model, session.bare_config(model)) for model in MODELS)
        return {"seconds_to_ready": seconds, "samples": 0}
    for model in MODELS:
        session.write_config(model, session.bare_config(model))
    requests = [plan] if together else [{"models": {model: plan["models"][model]}} for model in MODELS]
    reports = [session.trigger_plan(document) for document in requests]
    entries = [entry for report in reports for entry in report["models"]]
    return {
        # The client's wall time of the helper requests: all four READY.
        "seconds_to_ready": sum(report["client_seconds"] for report in reports),
        "samples": sum(entry["warmup_samples"] for entry in entries),
        "threads_notes": sum(1 for entry in entries if entry.get("threads")),
    }


def run_trial(condition, plans, recorded, workdir: pathlib.Path, repository: pathlib.Path, trial: int, steady: int,
              passes: int = 2):
    name, plan_name, together, environment = condition
    folder = workdir / f"{name.replace(' ', '_').replace(',', '')}-{trial}"
    server = EmbeddedTriton(repository, folder, http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port(), extra_env=environment)
    with server:
        session = Session(server.http_url, repository, server.log_path)
        try:
            brought_up = bring_up(session, plans.get(plan_name), together)
            memory = resident_mib(server.pid)
            measured = []
            for _ in range(passes):
                measured.append({
                    model: session.measure_shapes(
                        model, [Shape(length, batch) for batch, length in recorded[model]["first_seen"]], steady)
                    for model in MODELS
                })
        finally:
            session.close()
    scored = [{model: score(rows[model], recorded[model]["counts"]) for model in MODELS} for rows in measured]
    result = {
        **brought_up,
        "resident_mib": memory,
        "models": scored[0],
        "floor": scored[1],
        # Passes 3.. (none unless --passes is over 2).
        "settled": scored[2:],
    }
    slow = [sum(entry["slow_shapes"] for entry in models.values()) for models in scored]
    shapes = sum(entry["shapes"] for entry in result["models"].values())
    print(f"{name}, trial {trial + 1}: READY in {brought_up['seconds_to_ready']:.2f} s, {memory:.0f} MiB; "
          f"{slow[0]} of {shapes} shapes slow (later passes {', '.join(map(str, slow[1:]))})", flush=True)
    return result


def settled_slow_shapes(trial: Dict) -> Optional[float]:
    """The median over the settled passes of the slow shapes of the four models."""
    counts = [sum(entry["slow_shapes"] for entry in models.values()) for models in trial.get("settled", [])]
    return statistics.median(counts) if counts else None


def summarize(trials: List[Dict]) -> Dict:
    def median(pick):
        return statistics.median(pick(trial) for trial in trials)

    summary = {
        "seconds_to_ready": median(lambda trial: trial["seconds_to_ready"]),
        "samples": trials[0]["samples"],
        "resident_mib": median(lambda trial: trial["resident_mib"]),
        "models": {},
    }
    for model in MODELS:
        summary["models"][model] = {
            key: median(lambda trial, key=key: trial["models"][model][key])
            for key in ("shapes", "slow_shapes", "slow_traffic_share", "excess_ms", "worst_ratio")
        }
        summary["models"][model]["floor_slow_shapes"] = median(lambda trial: trial["floor"][model]["slow_shapes"])
    summary["slow_shapes"] = median(lambda trial: sum(m["slow_shapes"] for m in trial["models"].values()))
    summary["slow_repeats"] = median(
        lambda trial: sum(m["slow_repeats"] for part in ("models", "floor") for m in trial[part].values()))
    summary["floor_slow_shapes"] = median(lambda trial: sum(m["slow_shapes"] for m in trial["floor"].values()))
    settled = [settled_slow_shapes(trial) for trial in trials]
    summary["settled_slow_shapes"] = statistics.median(settled) if None not in settled else None
    summary["shapes"] = sum(entry["shapes"] for entry in summary["models"].values())
    return summary


def markdown(results: Dict) -> str:
    lines = results_header("Warm stays warm", results) + [
        f"The four example models, each with {results['requests']} recorded requests (sequence lengths "
        f"log-normal around 12 in 1..{LONGEST}, batch sizes {', '.join(map(str, BATCH_SIZES))}). Medians over "
        f"{results['trials']} trials per condition, each on a new tritonserver. Every model is READY before "
        "any request; then every recorded shape of each model, in the order the traffic first sent it. A shape "
        f"is slow when its first request's compute_infer is over {SLOW_RATIO}x its steady median and over "
        f"{SLOW_EXCESS_MS * 1000:.0f} us above it. The same pass then runs again, {results['passes']} in all. "
        "'second pass': every shape has run once before. 'settled passes': the median of passes 3 and later, "
        "after the server has served whole passes of traffic; what is slow there is the measurement's floor. "
        "'slow repeats' judges a request that is not a first one the same way (each shape's first steady "
        "request against the median of the others, first and second pass, out of twice the shapes): how often "
        f"one request is that slow by chance. The launcher set `{results['openmp_setting']}` "
        "(`triton-warmup-threads`) except where the condition says otherwise.\n",
        "| condition | samples | s to READY | server MiB | slow shapes | second pass | settled passes | "
        "slow repeats | " + " | ".join(f"{model} slow (traffic)" for model in MODELS) + " |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in MODELS) + " |",
    ]
    for row in results["conditions"]:
        cells = [
            f"{row['models'][model]['slow_shapes']:g} of {row['models'][model]['shapes']:g} "
            f"({row['models'][model]['slow_traffic_share']:.1%})"
            for model in MODELS
        ]
        lines.append(
            f"| {row['condition']} | {row['samples']} | {row['seconds_to_ready']:.2f} | {row['resident_mib']:.0f} | "
            f"{row['slow_shapes']:g} of {row['shapes']:g} ({row['slow_shapes'] / row['shapes']:.1%}) | "
            f"{row['floor_slow_shapes']:g} | {_or_dash(row.get('settled_slow_shapes'))} | "
            f"{row['slow_repeats']:g} of {2 * row['shapes']:g} | "
            + " | ".join(cells) + " |"
        )
    lines += ["", "Per trial, slow shapes of the four models in each pass, first pass first:", ""]
    for row in results["conditions"]:
        per_trial = "; ".join(
            " / ".join(
                str(sum(m["slow_shapes"] for m in models.values()))
                for models in [trial["models"], trial["floor"], *trial.get("settled", [])]
            )
            for trial in row["trials"]
        )
        lines.append(f"- {row['condition']}: {per_trial}")
    return "\n".join(lines) + "\n"


def _or_dash(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:g}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1500, help="Requests to record per model. Default is 1500.")
    parser.add_argument("--trials", type=int, default=3, help="Fresh servers per condition. Default is 3.")
    parser.add_argument("--steady", type=int, default=3, help="Requests after the first, per shape. Default is 3.")
    parser.add_argument("--passes", type=int, default=4,
                        help="Passes over the recorded shapes per trial, at least 2. Default is 4.")
    parser.add_argument("--group-size-max", type=int, default=LONGEST,
                        help=f"The range plan's largest group size. Default is {LONGEST}.")
    parser.add_argument("--conditions", nargs="+", default=[condition[0] for condition in CONDITIONS],
                        help="Only these conditions (by name). Default is all.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    if args.passes < 2:
        parser.error("--passes must be at least 2: the second pass is part of the results")
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="warm-stays-warm-"))
    repository = copy_repository(workdir / "model_repository")
    recording = record(workdir, repository, args.requests)
    recorded = recording["models"]
    print(f"recorded {args.requests} requests per model: "
          + ", ".join(f"{model} {len(entry['counts'])} shapes" for model, entry in recorded.items()), flush=True)
    traffic = workdir / "traffic.yaml"
    run_from_trace([recording["trace"]], repository, traffic, "-m", *MODELS)
    plans = {
        "range": {"models": {model: range_plan(model, args.group_size_max)["models"][model] for model in MODELS}},
        "traffic": yaml.safe_load(traffic.read_text()),
    }
    setting = threads.openmp_setting(openmp_threads.repository_configs(repository), threads.Machine.here())
    rows = []
    for condition in CONDITIONS:
        if condition[0] not in args.conditions:
            continue
        trials = [run_trial(condition, plans, recorded, workdir, repository, trial, args.steady, args.passes)
                  for trial in range(args.trials)]
        rows.append({"condition": condition[0], **summarize(trials), "trials": trials})
    results = {
        **run_record("bench.warm_stays_warm"),
        "requests": args.requests,
        "trials": args.trials,
        "passes": args.passes,
        "openmp_setting": f"{threads.OPENMP_VARIABLE}={setting.value}" if setting.value else setting.reason,
        "conditions": rows,
    }
    write_results(args.output_dir, "warm_stays_warm", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
