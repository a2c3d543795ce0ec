#!/usr/bin/env python3
"""A range plan against a plan made from traffic, on the same recorded traffic.

Per model (--models: text-encoder, whose steady compute is milliseconds, and
model-v1, whose is a fraction of one), an embedded server (Triton's native
libtorch backend) records --requests requests with Triton's own tracing:
group sizes (sequence lengths) drawn from a log-normal around 12 (1..64),
batch sizes 1, 2, 4 and 8 at 70, 15, 10 and 5%. ``triton-warmup-from-trace``
makes plans of the trace. Then the model is brought to READY in each
condition, --trials times:

* cold: no warmup;
* range: group sizes 1..(longest length seen) x batch sizes 1, 2, 4, 8, the
  plan a person writes who knows only the range;
* traffic, frequent first: every recorded shape, recorded data, the most
  frequent warmed first (``--order frequent-first``);
* traffic, frequent last: the same samples, the most frequent warmed last
  (the default order);
* traffic --cover 0.95: the most frequent shapes that carry 95% of requests,
  in the default order.

Each trial runs on a new tritonserver process, because libtorch keeps
compiled kernels per process: a second load in one process is not cold.

After READY every recorded shape is requested in the order the traffic first
sent it: the first request, then --steady more. From Triton's statistics
(compute_infer per request), the first request's ratio to the steady median
decides whether a shape was still slow; the share of recorded requests on
slow shapes weighs each shape by its traffic. It also times reading the
trace and making the plan, on the recorded trace and on one of --read-requests
requests made of its records repeated (renumbered), in a child process with
its peak memory.

Writes traffic_benchmark.md and .json to --output-dir (default bench/results).
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import yaml

from bench.measure import results_header, PROJECT_ROOT, TEXT_ENCODER, Session, Shape, run_record, copy_repository
from bench.report import write_results
from triton_warmup.embedded import EmbeddedTriton, free_port
from triton_warmup.traffic.trace import recording_flags

DEFAULT_MODELS = (TEXT_ENCODER, "model-v1")
LONGEST = 64
BATCH_SIZES = (1, 2, 4, 8)
BATCH_SHARES = (0.70, 0.15, 0.10, 0.05)
# A first request this many times its shape's steady compute counts as slow.
SLOW_RATIO = 1.5
COVER = 0.95
FIRST = "traffic, frequent first"
LAST = "traffic, frequent last"
COVERED = f"traffic --cover {COVER}"
CONDITIONS = ("cold", "range", FIRST, LAST, COVERED)


def traffic_shapes(count: int, rng: np.random.Generator) -> List[Tuple[int, int]]:
    """(batch, length) of each request: most requests on a few lengths."""
    lengths = np.clip(np.round(rng.lognormal(np.log(12), 0.7, count)), 1, LONGEST).astype(int)
    batches = rng.choice(BATCH_SIZES, size=count, p=BATCH_SHARES)
    return [(int(batch), int(length)) for batch, length in zip(batches, lengths)]


def record_traffic(model: str, workdir: pathlib.Path, repository: pathlib.Path, requests: int) -> Dict:
    """Serve with tracing on, send the traffic, stop; the trace and what was sent."""
    trace = workdir / f"{model}-trace.json"
    rng = np.random.default_rng(2026)
    shapes = traffic_shapes(requests, rng)
    server = EmbeddedTriton(
        repository, workdir / f"{model}-recording", http_port=free_port(), grpc_port=free_port(),
        metrics_port=free_port(), extra_args=recording_flags(trace),
    )
    started = time.perf_counter()
    with server:
        session = Session(server.http_url, repository, server.log_path)
        try:
            session.client.load_model(model)
            for batch, length in shapes:
                session.client.infer(model, session.inputs_at(model, Shape(length, batch), rng))
        finally:
            session.close()
    first_seen = list(dict.fromkeys(shapes))
    counts = {shape: shapes.count(shape) for shape in first_seen}
    return {"trace": trace, "seconds": time.perf_counter() - started, "first_seen": first_seen, "counts": counts}


def run_from_trace(traces: List[pathlib.Path], repository: pathlib.Path, output: pathlib.Path, *options: str) -> Dict:
    """``triton-warmup-from-trace`` in a child process: its wall time, peak
    memory (the child's own, from wait4) and JSON summary."""
    command = [sys.executable, "-m", "triton_warmup.client.from_trace", *map(str, traces), "-r", str(repository),
               "-o", str(output), "--json", "--no-progress", *options]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        # wait4 reaped the child; tell Popen so that it does not wait again.
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {child.returncode}")
        out.seek(0)
        summary = json.load(out)
    return {"seconds": seconds, "peak_mib": usage.ru_maxrss / 1024, "summary": summary}


def scaled_trace(trace: pathlib.Path, destination: pathlib.Path, requests: int) -> int:
    """A trace of about ``requests`` requests made of the recorded one's
    records, repeated with new ids; written as Triton writes it. Its size."""
    records = json.loads(trace.read_text())
    ids = sorted({record["id"] for record in records})
    copies = max(1, round(requests / len(ids)))
    with open(destination, "w") as out:
        out.write("[")
        for copy in range(copies):
            offset = copy * (max(ids) + 1)
            for index, record in enumerate(records):
                if copy or index:
                    out.write(",")
                out.write(json.dumps({**record, "id": record["id"] + offset}, separators=(",", ":")))
        out.write("]")
    return copies * len(ids)


def range_plan(model: str, longest: int) -> Dict:
    return {"models": {model: {"group_size_min": 1, "group_size_max": longest, "batch_sizes": list(BATCH_SIZES)}}}


def bring_up(session: Session, model: str, condition: str, plans: Dict[str, Dict]) -> Dict:
    """Load ``model`` on a server that has not loaded it yet, in ``condition``."""
    bare = session.bare_config(model)
    if condition == "cold":
        return {"seconds_to_ready": session.load_with_config(model, bare), "samples": 0}
    session.write_config(model, bare)
    report = session.trigger_plan(plans[condition])
    (entry,) = report["models"]
    return {"seconds_to_ready": entry["seconds_to_ready"], "samples": entry["warmup_samples"]}


def score(rows: List[Dict], counts: Dict[Tuple[int, int], int]) -> Dict:
    """Per trial: slow shapes, the share of traffic on them, the excess of
    the first requests over steady, the traffic-weighted median ratio."""
    total = sum(counts.values())
    slow = [row for row in rows if (row["compute_ratio"] or 0) > SLOW_RATIO]
    weighted = sorted(
        (row["compute_ratio"] or 1.0, counts[(row["batch"], row["group"])]) for row in rows
    )
    running, median = 0, None
    for ratio, count in weighted:
        running += count
        if running * 2 >= total:
            median = ratio
            break
    return {
        "slow_shapes": len(slow),
        "slow_traffic_share": sum(counts[(row["batch"], row["group"])] for row in slow) / total,
        "excess_ms": sum(max(0.0, row["first_compute_ms"] - row["steady_compute_p50_ms"]) for row in rows),
        "weighted_median_ratio": median,
        "worst_ratio": max(row["compute_ratio"] or 1.0 for row in rows),
    }


def warm_positions(model: str, plan: Optional[Dict]) -> Dict[Tuple[int, int], int]:
    """(batch, group) -> the 1-based position at which the plan warms it
    (Triton runs the samples in this order); empty for no plan."""
    if plan is None:
        return {}
    entry = plan["models"][model]
    if "samples" in entry:
        shapes = [(sample["batch_size"], next(iter(sample["inputs"].values()))[0]) for sample in entry["samples"]]
    else:
        # The helper's range order: group size, then batch size.
        shapes = [
            (batch, group)
            for group in range(entry["group_size_min"], entry["group_size_max"] + 1)
            for batch in entry["batch_sizes"]
        ]
    return {shape: index for index, shape in enumerate(shapes, start=1)}


def slow_by_quarter(trial: Dict, samples: int) -> List[int]:
    """Slow shapes by the quarter of the plan in which they were warmed."""
    quarters = [0, 0, 0, 0]
    for row in trial["rows"]:
        if row["warmed_at"] is not None and (row["compute_ratio"] or 0) > SLOW_RATIO:
            quarters[min(3, (row["warmed_at"] - 1) * 4 // samples)] += 1
    return quarters


def measure_condition(model: str, condition: str, plans: Dict, recorded: Dict, workdir: pathlib.Path,
                      repository: pathlib.Path, args) -> Dict:
    """--trials runs of ``condition``, each on a new tritonserver process:
    libtorch keeps compiled kernels per process, so a second load in the same
    process is not cold (here, model-v1's first load left 156 of 161 shapes
    slow and the next loads of the same process 7 and 8)."""
    shapes = [Shape(length, batch) for batch, length in recorded["first_seen"]]
    trials = []
    for trial in range(args.trials):
        folder = workdir / f"{model}-{condition.replace(' ', '_')}-{trial}"
        server = EmbeddedTriton(repository, folder, http_port=free_port(), grpc_port=free_port(),
                                metrics_port=free_port())
        with server:
            session = Session(server.http_url, repository, server.log_path)
            try:
                brought_up = bring_up(session, model, condition, plans)
                rows = session.measure_shapes(model, shapes, args.steady)
            finally:
                session.close()
        positions = warm_positions(model, plans.get(condition))
        trials.append({
            **brought_up,
            **score(rows, recorded["counts"]),
            "rows": [
                {
                    "batch": row["batch"],
                    "group": row["group"],
                    "requests": recorded["counts"][(row["batch"], row["group"])],
                    "warmed_at": positions.get((row["batch"], row["group"])),
                    "compute_ratio": row["compute_ratio"],
                    "first_compute_ms": row["first_compute_ms"],
                    "steady_compute_p50_ms": row["steady_compute_p50_ms"],
                }
                for row in rows
            ],
        })
        print(
            f"{model}, {condition}: READY in {brought_up['seconds_to_ready']:.2f} s ({brought_up['samples']} samples); "
            f"{trials[-1]['slow_shapes']} of {len(shapes)} shapes slow, "
            f"{trials[-1]['slow_traffic_share']:.1%} of traffic",
            flush=True,
        )
    keys = ("seconds_to_ready", "slow_shapes", "slow_traffic_share", "excess_ms", "weighted_median_ratio", "worst_ratio")
    return {
        "condition": condition,
        "samples": trials[0]["samples"],
        **{key: statistics.median(trial[key] for trial in trials) for key in keys},
        "trials": trials,
    }


def coverage_of(plans: Dict, model: str, condition: str, recorded: Dict) -> float:
    """The share of recorded requests whose shape the condition's plan warms."""
    warmed = warm_positions(model, plans.get(condition))
    total = sum(recorded["counts"].values())
    return sum(count for shape, count in recorded["counts"].items() if shape in warmed) / total


def markdown(results: Dict) -> str:
    lines = results_header("Range plan vs traffic plan", results) + [
        f"Per model, {results['requests']} requests recorded with Triton's tracing: sequence lengths (group "
        f"sizes) log-normal around 12 in 1..{LONGEST}, batch sizes {', '.join(map(str, BATCH_SIZES))} at "
        f"{', '.join(f'{share:.0%}' for share in BATCH_SHARES)}. Medians over {results['trials']} trials per condition, each on a "
        f"new tritonserver process (libtorch keeps compiled kernels per process, so a second load in one "
        f"process is not cold). A shape is slow when its first request after READY took more than {SLOW_RATIO}x its steady "
        "compute_infer (Triton's statistics); 'traffic on slow shapes' weighs each shape by its recorded "
        "requests; 'excess' sums the first requests' compute above steady over all recorded shapes (each is "
        "paid once per instance). The range plan is the best a range can do here: group sizes up to the "
        "longest one recorded, every batch size.\n",
    ]
    for model, result in results["models"].items():
        recorded = result["recording"]
        lines += [
            f"## {model}\n",
            f"{recorded['distinct_shapes']} distinct shapes recorded (longest {recorded['longest']}); the 10 most "
            f"frequent carry {recorded['top10_share']:.1%} of the requests.\n",
            "| condition | samples | recorded requests warmed | s to READY | slow shapes | traffic on slow shapes | "
            "excess ms | traffic-weighted median ratio | worst ratio |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in result["conditions"]:
            lines.append(
                f"| {row['condition']} | {row['samples']} | {row['coverage']:.1%} | {row['seconds_to_ready']:.2f} | "
                f"{row['slow_shapes']:g} of {recorded['distinct_shapes']} | {row['slow_traffic_share']:.1%} | "
                f"{row['excess_ms']:.1f} | {row['weighted_median_ratio']:.2f}x | {row['worst_ratio']:.2f}x |"
            )
        lines += [
            "",
            "Slow warmed shapes by the quarter of the plan in which they were warmed (first to last), per trial:",
            "",
        ]
        for row in result["conditions"]:
            if row["samples"]:
                quarters = "; ".join(
                    " / ".join(map(str, slow_by_quarter(trial, row["samples"]))) for trial in row["trials"]
                )
                lines.append(f"- {row['condition']}: {quarters}")
        lines.append("")
    lines += [
        "## Reading traces\n",
        "`triton-warmup-from-trace` in a child process (trace read as a stream, plan checked, data files "
        "written): the command's wall time, of it the reading as the command reports it, and the child's "
        "peak resident memory. The scaled trace is a recorded one's records repeated with new ids.\n",
        "| model | trace | requests | MiB | command s | of it reading s | requests/s read | peak MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, result in results["models"].items():
        for run in result["reading"]:
            peak = "-" if run["peak_mib"] is None else f"{run['peak_mib']:.0f}"
            lines.append(
                f"| {model} | {run['trace']} | {run['requests']} | {run['mib']:.1f} | {run['seconds']:.2f} | "
                f"{run['reading_s']:.2f} | {run['requests'] / run['reading_s']:.0f} | {peak} |"
            )
    return "\n".join(lines) + "\n"


def measure_model(model: str, workdir: pathlib.Path, repository: pathlib.Path, args) -> Dict:
    recorded = record_traffic(model, workdir, repository, args.requests)
    counts = recorded["counts"]
    print(f"{model}: recorded {args.requests} requests, {len(counts)} shapes, in {recorded['seconds']:.1f} s",
          flush=True)
    paths = {condition: workdir / f"{model}-{index}.yaml" for index, condition in enumerate(CONDITIONS)}
    full = run_from_trace([recorded["trace"]], repository, paths[LAST], "-m", model)
    run_from_trace([recorded["trace"]], repository, paths[FIRST], "-m", model, "--order", "frequent-first")
    run_from_trace([recorded["trace"]], repository, paths[COVERED], "-m", model, "--cover", str(COVER))
    scaled = workdir / f"{model}-scaled.json"
    scaled_trace(recorded["trace"], scaled, args.read_requests)
    reading = []
    for name, path in (("recorded", recorded["trace"]), ("scaled", scaled)):
        run = full if name == "recorded" else run_from_trace([path], repository, workdir / "scaled.yaml", "-m", model)
        reading.append({"trace": name, "requests": run["summary"]["requests"], "mib": path.stat().st_size / 2**20,
                        "seconds": run["seconds"], "reading_s": run["summary"]["seconds_reading"],
                        "peak_mib": run["peak_mib"]})
        print(f"{model}: from-trace on {reading[-1]['requests']} requests ({reading[-1]['mib']:.0f} MiB): "
              f"{run['seconds']:.2f} s", flush=True)
    scaled.unlink()

    longest = max(length for _, length in counts)
    plans = {"range": range_plan(model, longest)}
    plans.update({condition: yaml.safe_load(paths[condition].read_text()) for condition in (FIRST, LAST, COVERED)})
    conditions = []
    for condition in CONDITIONS:
        row = measure_condition(model, condition, plans, recorded, workdir, repository, args)
        row["coverage"] = coverage_of(plans, model, condition, recorded)
        conditions.append(row)
    return {
        "recording": {
            "distinct_shapes": len(counts),
            "longest": longest,
            "top10_share": sum(sorted(counts.values(), reverse=True)[:10]) / args.requests,
            "seconds": recorded["seconds"],
        },
        "reading": reading,
        "conditions": conditions,
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help=f"Models to measure. Default is {' '.join(DEFAULT_MODELS)}.")
    parser.add_argument("--requests", type=int, default=1500, help="Requests to record. Default is 1500.")
    parser.add_argument("--trials", type=int, default=3, help="Fresh loads per condition. Default is 3.")
    parser.add_argument("--steady", type=int, default=3, help="Requests after the first, per shape. Default is 3.")
    parser.add_argument("--read-requests", type=int, default=100_000,
                        help="Requests in the scaled trace that times the reading. Default is 100000.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="traffic-bench-"))
    repository = copy_repository(workdir / "model_repository")
    results = {
        **run_record("bench.traffic_benchmark"),
        "requests": args.requests,
        "trials": args.trials,
        "models": {model: measure_model(model, workdir, repository, args) for model in args.models},
    }
    write_results(args.output_dir, "traffic_benchmark", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
