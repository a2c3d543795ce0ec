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

The second part (``--parts idle``) asks whether a warmed shape stays fast
after an idle pause. Each server warms the four models in one helper request
(group sizes 1..16 x batch sizes 1, 2), then per model: --idle-steady
requests back to back at a warmed shape (group 8, batch 1), and --idle-requests
more after each idle gap (50 ms, 200 ms, 1 s, 5 s), server-side
compute_infer; then the same back to back at the largest warmed shape (the
steady latency a thread count changes). Repositories: the example one, whose
models agree on 1 intra-op thread, and two mixed ones, text-encoder without
``INTRA_OP_THREAD_COUNT`` (as most real configs) or at 2; each mixed one as
the launcher used to leave it (OpenMP's default, 2 here) and with its policy
(``OMP_NUM_THREADS`` at the smallest count). The conditions alternate within
each of --idle-trials rounds, since a 2-CPU machine's load drifts. Also read:
the machine's busy share and the server's CPU while the gaps were measured
(/proc/stat and /proc/PID/stat). Writes warm_after_idle.md and .json.
Issue 40's repository (model-v1 beside the MiniLM-class model alone) goes
to warm_after_idle_issue_repository (text-encoder as that model) and to
warm_after_idle_minilm (a MiniLM-sized encoder, 6 layers of width 384, as
the issue describes it).
"""

import argparse
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
import yaml

from bench.adapt_benchmark import MINILM, write_minilm_sized
from bench.measure import results_header, PROJECT_ROOT, TEXT_ENCODER, Session, Shape, copy_repository, run_record
from bench.report import write_results
from bench.traffic_benchmark import BATCH_SIZES, LONGEST, range_plan, run_from_trace, traffic_shapes
from triton_warmup import threads
from triton_warmup.client import openmp_threads
from triton_warmup.embedded import EmbeddedTriton, free_port
from triton_warmup.helper.config_rewrite import read_config, render_config
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


# -- warm after an idle gap ---------------------------------------------------

IDLE_GAPS_S = (0.05, 0.2, 1.0, 5.0)
IDLE_SHAPE = Shape(8, 1)
IDLE_PLAN = {"group_size_min": 1, "group_size_max": 16, "batch_sizes": [1, 2]}
LARGEST_SHAPE = Shape(16, 2)
# The model whose count the mixed repositories change: the MiniLM-class one.
LARGER_MODEL = TEXT_ENCODER
OPENMP_DEFAULT = str(len(os.sched_getaffinity(0)))
QUIET, ONE_CPU_BUSY = "quiet", "one CPU busy"
GAP_VARIANTS = (QUIET, ONE_CPU_BUSY)
# A process that keeps one CPU busy, as another model's traffic or any other
# process would; stopped and continued with signals, so that starting it
# costs nothing at the gap.
_BUSY_LOOP = "while True:\n    pass\n"
# (name, repository variant, extra server environment). "before": what the
# launcher left before issue 40, OMP_NUM_THREADS unset, which OpenMP reads as
# one thread per CPU; set to that here, since the launcher now sets it.
IDLE_CONDITIONS = (
    ("agreeing (all 1)", "agreeing", {}),
    ("mixed, text-encoder without a count, before", "no count", {threads.OPENMP_VARIABLE: OPENMP_DEFAULT}),
    ("mixed, text-encoder without a count, smallest count", "no count", {}),
    ("mixed, text-encoder at 2, before", "2", {threads.OPENMP_VARIABLE: OPENMP_DEFAULT}),
    ("mixed, text-encoder at 2, smallest count", "2", {}),
    # OpenMP's threads sleep at once instead of spinning first: no two of a
    # team busy-wait for each other on one CPU, at a wake per parallel region.
    ("mixed, text-encoder at 2, smallest count, OMP_WAIT_POLICY=passive", "2", {"OMP_WAIT_POLICY": "passive"}),
)
# The repository of issue 40 as its user warmed it: model-v1 and the
# MiniLM-class model alone. With one OpenMP team in the process, libgomp's
# threads spin after each region (GOMP_SPINCOUNT); with more teams than
# CPUs, as when model-v1..v3 all run teams of 2, they spin about 100 times
# instead and sleep at once (its "throttled" spin count).
ISSUE_MODELS = ("model-v1", TEXT_ENCODER)
ISSUE_CONDITIONS = (
    ("agreeing (all 1), model-v1 and text-encoder", "agreeing", {}, ISSUE_MODELS),
    ("mixed, text-encoder without a count, before, model-v1 and text-encoder", "no count",
     {threads.OPENMP_VARIABLE: OPENMP_DEFAULT}, ISSUE_MODELS),
    ("mixed, text-encoder without a count, smallest count, model-v1 and text-encoder", "no count", {}, ISSUE_MODELS),
    # With one team, spinning holds: what it costs in CPU while the server idles.
    ("mixed, text-encoder without a count, before, OMP_WAIT_POLICY=active, model-v1 and text-encoder", "no count",
     {threads.OPENMP_VARIABLE: OPENMP_DEFAULT, "OMP_WAIT_POLICY": "active"}, ISSUE_MODELS),
)
# Issue 40's repository as its text has it: model-v1 and a MiniLM-sized
# model (bench.adapt_benchmark's: 6 layers of width 384, random weights)
# that the user added with no INTRA_OP_THREAD_COUNT, so libtorch gives it one
# thread per core; "agreeing" gives it 1, as the examples have.
MINILM_MODELS = ("model-v1", MINILM)
MINILM_CONDITIONS = (
    ("agreeing (all 1), model-v1 and minilm-sized", "minilm agreeing", {}, MINILM_MODELS),
    ("mixed, minilm-sized without a count, before, model-v1 and minilm-sized", "minilm no count",
     {threads.OPENMP_VARIABLE: OPENMP_DEFAULT}, MINILM_MODELS),
    ("mixed, minilm-sized without a count, smallest count, model-v1 and minilm-sized", "minilm no count", {},
     MINILM_MODELS),
)
# Spinning instead of sleeping, measured for its CPU cost: not a default.
SPINNING = ("mixed, text-encoder without a count, before, OMP_WAIT_POLICY=active", "no count",
            {threads.OPENMP_VARIABLE: OPENMP_DEFAULT, "OMP_WAIT_POLICY": "active"})


def idle_repository(workdir: pathlib.Path, variant: str) -> pathlib.Path:
    """A copy of the example repository; in the mixed variants, text-encoder
    without ``INTRA_OP_THREAD_COUNT`` or at ``variant`` threads; in the
    "minilm" ones, with the MiniLM-sized model added, at 1 thread or without
    a count."""
    repository = copy_repository(workdir / f"repository-{variant.replace(' ', '-')}")
    if variant.startswith("minilm"):
        write_minilm_sized(repository)
        folder = repository / MINILM
        _, config = read_config(folder)
        if variant == "minilm no count":
            del config.parameters[threads.THREAD_COUNT_PARAMETER]
        else:
            config.parameters[threads.THREAD_COUNT_PARAMETER].string_value = "1"
        (folder / "config.pbtxt").write_bytes(render_config(config))
    elif variant != "agreeing":
        folder = repository / LARGER_MODEL
        _, config = read_config(folder)
        if variant == "no count":
            del config.parameters[threads.THREAD_COUNT_PARAMETER]
        else:
            config.parameters[threads.THREAD_COUNT_PARAMETER].string_value = variant
        (folder / "config.pbtxt").write_bytes(render_config(config))
    return repository


def _cpu_ticks() -> tuple:
    """(busy, total) jiffies of the whole machine."""
    fields = [int(value) for value in pathlib.Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _busy_share(before: tuple, after: tuple) -> float:
    return (after[0] - before[0]) / max(1, after[1] - before[1])


def _process_ticks(pid: int) -> int:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def _request_ms(session: Session, model: str, inputs, gap_s: float = 0.0, busy=None) -> float:
    """Server-side compute_infer of one request sent after ``gap_s`` of
    silence: the statistics are read before the gap, so that nothing reaches
    the server during it. ``busy`` (a stopped busy-loop process) runs through
    the gap and the request."""
    count, ns = session.compute_infer(model)
    if busy is not None:
        busy.send_signal(signal.SIGCONT)
    try:
        if gap_s:
            time.sleep(gap_s)
        session.client.infer(model, inputs)
    finally:
        if busy is not None:
            busy.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 2.0
    while True:
        count_after, ns_after = session.compute_infer(model)
        if count_after > count or time.monotonic() > deadline:
            return (ns_after - ns) / 1e6
        time.sleep(0.0005)


def idle_trial(condition, repositories: Dict[str, pathlib.Path], workdir: pathlib.Path, trial: int,
               steady: int, per_gap: int, gaps_s=IDLE_GAPS_S) -> Dict:
    name, variant, environment, *rest = condition
    models_of = rest[0] if rest else MODELS
    repository = repositories[variant]
    # Letters, digits and dashes only: the Python backend starts its stub
    # through a shell, unquoted, and a "(" in the path fails the load.
    folder = workdir / f"idle-{re.sub('[^a-z0-9]+', '-', name.lower())}-{trial}"
    load_before = os.getloadavg()[0]
    server = EmbeddedTriton(repository, folder, http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port(), extra_env=environment)
    with server:
        setting = server.openmp_setting
        openmp = environment.get(threads.OPENMP_VARIABLE) or (str(setting.value) if setting.value else "unset")
        session = Session(server.http_url, repository, server.log_path)
        busy = None
        try:
            for model in models_of:
                session.write_config(model, session.bare_config(model))
            report = session.trigger_plan({"models": {model: dict(IDLE_PLAN) for model in models_of}})
            notes = {entry["name"]: entry.get("threads") for entry in report["models"]}
            rng = np.random.default_rng(trial)
            session.client.is_server_live()
            models = {}
            # Everyone else's load, with this benchmark and its server idle.
            background = _cpu_ticks()
            time.sleep(1.0)
            background = _busy_share(background, _cpu_ticks())
            busy = subprocess.Popen([sys.executable, "-c", _BUSY_LOOP])
            busy.send_signal(signal.SIGSTOP)
            machine_before, process_before, started = _cpu_ticks(), _process_ticks(server.pid), time.monotonic()
            for model in models_of:
                inputs = session.inputs_at(model, IDLE_SHAPE, rng)
                back_to_back = [_request_ms(session, model, inputs) for _ in range(steady)]
                gaps = {variant: {str(gap): [] for gap in gaps_s} for variant in GAP_VARIANTS}
                for gap in gaps_s:
                    # The two ways alternate, so that drift hits both alike.
                    for _ in range(per_gap):
                        for variant in GAP_VARIANTS:
                            gaps[variant][str(gap)].append(_request_ms(
                                session, model, inputs, gap, busy=busy if variant == ONE_CPU_BUSY else None))
                models[model] = {"back_to_back_ms": back_to_back, "after_gap_ms": gaps}
            machine_after, process_after, wall = _cpu_ticks(), _process_ticks(server.pid), time.monotonic() - started
            for model in models_of:
                inputs = session.inputs_at(model, LARGEST_SHAPE, rng)
                models[model]["largest_ms"] = [_request_ms(session, model, inputs) for _ in range(steady)]
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
            session.close()
    ticks = os.sysconf("SC_CLK_TCK")
    busy = _busy_share(machine_before, machine_after)
    result = {
        "condition": name,
        "openmp": openmp,
        "load_average_before": load_before,
        "background_busy_share": background,
        # The whole machine's busy share of all CPUs while the gaps ran (the
        # busy loop's included), and the server's own CPU in CPUs.
        "machine_busy_share": busy,
        "server_cpus": (process_after - process_before) / ticks / wall,
        "threads_notes": notes,
        "models": models,
    }
    line = "; ".join(
        f"{model} {statistics.median(entry['back_to_back_ms']):.3f} ms, after gaps "
        + " | ".join("/".join(f"{statistics.median(values):.2f}" for values in by_gap.values())
                     for by_gap in entry["after_gap_ms"].values())
        for model, entry in models.items())
    print(f"{name}, round {trial + 1} (OMP_NUM_THREADS={openmp}, others' load {background:.0%}): {line}", flush=True)
    return result


def summarize_idle(trials: List[Dict]) -> Dict:
    """Medians over every request of every round, per model and gap."""
    models_of = list(trials[0]["models"])
    summary = {"openmp": trials[0]["openmp"], "machine_busy_share": [trial["machine_busy_share"] for trial in trials],
               "background_busy_share": [trial["background_busy_share"] for trial in trials],
               "server_cpus": statistics.median(trial["server_cpus"] for trial in trials),
               "load_average_before": [trial["load_average_before"] for trial in trials],
               "threads_notes": trials[0]["threads_notes"], "models": {}}
    for model in models_of:
        # The first back-to-back requests follow the warmup's last one and
        # the previous model's gaps: the later half is steady.
        steady = statistics.median(value for trial in trials
                                   for value in trial["models"][model]["back_to_back_ms"][len(trial["models"][model]["back_to_back_ms"]) // 2:])
        largest = statistics.median(value for trial in trials for value in trial["models"][model]["largest_ms"][1:])
        gaps = {variant: {} for variant in GAP_VARIANTS}
        for variant in GAP_VARIANTS:
            for gap in trials[0]["models"][model]["after_gap_ms"][variant]:
                values = [value for trial in trials for value in trial["models"][model]["after_gap_ms"][variant][gap]]
                gaps[variant][gap] = {"median_ms": statistics.median(values), "max_ms": max(values),
                                           "ratio": statistics.median(values) / steady}
        summary["models"][model] = {"back_to_back_ms": steady, "largest_ms": largest, "after_gap": gaps}
    return summary


def idle_markdown(results: Dict) -> str:
    gaps_s = results.get("gaps_s", IDLE_GAPS_S)
    gaps = ", ".join(f"{gap * 1000:g} ms" if gap < 1 else f"{gap:g} s" for gap in gaps_s)
    lines = results_header("Warm after an idle gap", results) + [
        f"Each condition on a new tritonserver per round, {results['rounds']} rounds, the conditions alternating "
        f"within each. The models warmed in one helper request (group sizes 1..16 x batch sizes 1, 2). "
        f"Per model at a warmed shape (group {IDLE_SHAPE.group}, batch {IDLE_SHAPE.batch}), server-side "
        f"compute_infer: {results['steady']} requests back to back (the later half is 'steady'), then "
        f"{results['per_gap']} after each idle gap ({gaps}) each way, alternating: on a quiet machine "
        "(first figure), and with one CPU kept busy by another process through the gap and the request "
        "(second figure), as another model's traffic or any other process would. Nothing reaches the "
        "server during a gap. Medians over the rounds' requests, and in brackets that median over steady. "
        "'largest': back to back at the largest warmed shape (group "
        f"{LARGEST_SHAPE.group}, batch {LARGEST_SHAPE.batch}). 'others' load': the share of both CPUs busy "
        "during 1 s before the gaps, with this benchmark and its server idle, per round; 'server CPUs': the "
        "server's own CPU time over the gaps' wall time.\n",
    ]
    for model in MODELS + (MINILM,):
        if not any(model in row["models"] for row in results["conditions"]):
            continue
        lines += [f"## {model}", "",
                  "| condition | OMP_NUM_THREADS | steady ms | largest ms | "
                  + " | ".join(f"after {gap:g} s" for gap in gaps_s) + " |",
                  "| --- | --- | --- | --- | " + " | ".join("---" for _ in gaps_s) + " |"]
        for row in results["conditions"]:
            if model not in row["models"]:
                continue
            entry = row["models"][model]
            quiet, ran = (entry["after_gap"][variant] for variant in GAP_VARIANTS)
            cells = [f"{quiet[gap]['median_ms']:.2f} / {ran[gap]['median_ms']:.2f} "
                     f"({quiet[gap]['ratio']:.1f}x / {ran[gap]['ratio']:.1f}x)" for gap in quiet]
            lines.append(f"| {row['condition']} | {row['openmp']} | {entry['back_to_back_ms']:.3f} | "
                         f"{entry['largest_ms']:.3f} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Machine and server CPU", "", "| condition | others' load per round | load average before | "
              "server CPUs while the gaps ran |", "| --- | --- | --- | --- |"]
    for row in results["conditions"]:
        lines.append(f"| {row['condition']} | {', '.join(f'{share:.0%}' for share in row['background_busy_share'])} | "
                     f"{', '.join(f'{load:.2f}' for load in row['load_average_before'])} | {row['server_cpus']:.2f} |")
    notes = {row["condition"]: row["threads_notes"] for row in results["conditions"]}
    lines += ["", "The helper's `threads` notes:", ""]
    for condition, by_model in notes.items():
        for model, note in by_model.items():
            if note:
                lines.append(f"- {condition}, {model}: {note}")
    return "\n".join(lines) + "\n"


def run_idle(args, workdir: pathlib.Path) -> None:
    """The four-model conditions into ``--idle-output``, issue 40's
    repository into the same name with ``_issue_repository`` (text-encoder)
    and ``_minilm`` (the MiniLM-sized model): three runs, each with its
    conditions alternating."""
    four = [condition for condition in IDLE_CONDITIONS if condition[0] in args.conditions]
    if SPINNING[0] in args.conditions:
        four.append(SPINNING)
    issue = [condition for condition in ISSUE_CONDITIONS if condition[0] in args.conditions]
    minilm = [condition for condition in MINILM_CONDITIONS if condition[0] in args.conditions]
    for conditions, name in ((four, args.idle_output), (issue, f"{args.idle_output}_issue_repository"),
                             (minilm, f"{args.idle_output}_minilm")):
        if conditions:
            _run_idle_conditions(args, workdir, conditions, name)


def _run_idle_conditions(args, workdir: pathlib.Path, conditions, name: str) -> None:
    repositories = {variant: idle_repository(workdir, variant) for variant in {condition[1] for condition in conditions}}
    trials: Dict[str, List[Dict]] = {condition[0]: [] for condition in conditions}
    for trial in range(args.idle_trials):
        for condition in conditions:
            # Spinning is measured once: its cost is the CPU, not a latency.
            if condition is SPINNING and trial:
                continue
            trials[condition[0]].append(
                idle_trial(condition, repositories, workdir, trial, args.idle_steady, args.idle_requests,
                           args.idle_gaps))
    results = {
        **run_record("bench.warm_stays_warm"),
        "rounds": args.idle_trials,
        "gaps_s": list(args.idle_gaps),
        "steady": args.idle_steady,
        "per_gap": args.idle_requests,
        "conditions": [{"condition": condition, **summarize_idle(rows), "trials": rows}
                       for condition, rows in trials.items()],
    }
    write_results(args.output_dir, name, results, idle_markdown(results))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1500, help="Requests to record per model. Default is 1500.")
    parser.add_argument("--trials", type=int, default=3, help="Fresh servers per condition. Default is 3.")
    parser.add_argument("--steady", type=int, default=3, help="Requests after the first, per shape. Default is 3.")
    parser.add_argument("--passes", type=int, default=4,
                        help="Passes over the recorded shapes per trial, at least 2. Default is 4.")
    parser.add_argument("--group-size-max", type=int, default=LONGEST,
                        help=f"The range plan's largest group size. Default is {LONGEST}.")
    parser.add_argument("--conditions", nargs="+",
                        default=[condition[0] for condition in
                                 CONDITIONS + IDLE_CONDITIONS + (SPINNING,) + ISSUE_CONDITIONS
                                 + MINILM_CONDITIONS],
                        help="Only these conditions (by name). Default is all.")
    parser.add_argument("--parts", nargs="+", choices=("shapes", "idle"), default=["shapes", "idle"],
                        help="Warmed shapes at their first request, and warm after an idle gap. Default is both.")
    parser.add_argument("--idle-output", default="warm_after_idle",
                        help="The idle part's results file name, without suffix. Default is warm_after_idle.")
    parser.add_argument("--idle-gaps", type=float, nargs="+", default=list(IDLE_GAPS_S),
                        help="Idle gaps in seconds. Default is 0.05 0.2 1 5.")
    parser.add_argument("--idle-trials", type=int, default=3,
                        help="Rounds of the idle-gap conditions, each on new servers. Default is 3.")
    parser.add_argument("--idle-steady", type=int, default=20,
                        help="Back-to-back requests per model and shape in the idle-gap part. Default is 20.")
    parser.add_argument("--idle-requests", type=int, default=2,
                        help="Requests after each idle gap, per model, round and way. Default is 2.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    if args.passes < 2:
        parser.error("--passes must be at least 2: the second pass is part of the results")
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="warm-stays-warm-"))
    if "idle" in args.parts:
        run_idle(args, workdir)
    if "shapes" not in args.parts:
        return 0
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
