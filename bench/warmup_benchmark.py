#!/usr/bin/env python3
"""What warmup buys, and what it costs, measured on the embedded Triton.

One server serves a working copy of model_repository/. For each model and
each warmup condition the model is unloaded (so its next load starts fresh
stub processes), brought to READY in that condition, and every shape of the
helper's default plan is requested: the first request right after READY,
then --steady-requests more at the same shape.

Conditions:
  cold        the config without any model_warmup entry;
  seed-style  warmup at batch size 1 only, every group size, one run per
              sample (the original approach);
  count=N     this project's samples with warmup count N (--count-sweep);
  project     warmup_helper with its default plan (count 3).

Then: where the time to READY goes, how it grows with models, group sizes
and batch sizes (with a least-squares fit), parallel vs one-at-a-time loads,
one vs two instances, batched vs per-request execution in the pytorch
stand-in, and the cost of an unchanged re-trigger.

Writes warmup_benchmark.md, .json (every raw number) and .png to
--output-dir (default bench/results).
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import measure  # noqa: F401 - sets sys.path for the project's modules
from measure import (
    COLD,
    EXAMPLE_MODELS,
    PROJECT,
    SEED_STYLE,
    Session,
    Shape,
    copy_repository,
    percentile,
    plan_with_count,
    seed_style_config,
)
from report import HELPER_SHARE_TARGET, RATIO_TARGET, linear_fit, markdown, plot, summarize_condition

from embedded_triton import EmbeddedTriton, free_port  # noqa: E402
from warmup_plan import plan_warmup  # noqa: E402

PROJECT_ROOT = measure.PROJECT_ROOT
PER_REQUEST_MODEL = "model-v2-per-request"
TWO_INSTANCE_MODEL = "model-v2-two-instances"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=EXAMPLE_MODELS, help="Models to measure. Default: model-v1 model-v2 model-v3.")
    parser.add_argument("--group-size-max", type=int, default=4, help="Group sizes 1..N are planned. Default is 4, as in `make run`.")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="Batch sizes to plan. Default: the helper's default plan.")
    parser.add_argument("--steady-requests", type=int, default=50, help="Requests per shape after the first, per trial. Default is 50.")
    parser.add_argument("--trials", type=int, default=3, help="Fresh loads per model and condition; a shape's first-request latency is the median over them. Default is 3.")
    parser.add_argument("--count-sweep", type=int, nargs="*", default=[1, 2], help="Extra conditions: the project's samples with these warmup counts. Default: 1 2.")
    parser.add_argument("--skip", nargs="*", default=[], choices=("scaling", "parallel", "instances", "throughput", "retrigger"), help="Sections to leave out.")
    parser.add_argument("--throughput-requests", type=int, default=200, help="Requests per client in the throughput runs. Default is 200.")
    parser.add_argument("--smoke", action="store_true", help="A minute-long run for the test suite: model-v1, two shapes, few requests, small scaling.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results", help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.group_size_max, args.batch_sizes = ["model-v1"], 1, [1, 2]
        args.steady_requests, args.count_sweep, args.throughput_requests, args.trials = 10, [], 10, 1
        args.skip = sorted(set(args.skip) | {"parallel", "instances"})
    return args


def working_repository(workdir: pathlib.Path) -> pathlib.Path:
    """A copy of the project's repository plus the two models only the benchmark uses."""
    repository = copy_repository(workdir / "model_repository")
    # The parallel-load measurement needs loads in parallel; the helper's
    # default is 1 (README, "Known Triton issues"). The benchmark's samples
    # all pass, which is when more than 1 is safe.
    helper_config = repository / "warmup_helper" / "config.pbtxt"
    text = helper_config.read_text()
    serial = 'key: "max_parallel_loads"\n  value { string_value: "1" }'
    assert serial in text, "the helper's config no longer sets max_parallel_loads 1"
    helper_config.write_text(text.replace(serial, serial.replace('"1"', '"4"')))
    variants = {
        PER_REQUEST_MODEL: 'parameters { key: "STANDIN_EXECUTION" value { string_value: "per_request" } }\n',
        TWO_INSTANCE_MODEL: None,
    }
    for name, extra in variants.items():
        shutil.copytree(repository / "model-v2", repository / name)
        config = (repository / name / "config.pbtxt").read_text().replace('name: "model-v2"', f'name: "{name}"')
        if extra is None:
            config = config.replace("count: 1\n", "count: 2\n")
            assert "count: 2" in config, "model-v2's config no longer has 'count: 1'"
        else:
            config += extra
        (repository / name / "config.pbtxt").write_text(config)
    return repository


def feature_dim(session: Session, model: str) -> int:
    return int(session.bare_config(model).input[0].dims[-1])


def planned_shapes(session: Session, model: str, group_max: int, batch_sizes) -> List[Shape]:
    plan = plan_warmup(session.bare_config(model), range(1, group_max + 1), batch_sizes)
    return [Shape(group, batch) for group in plan.group_sizes for batch in plan.batch_sizes]


def bring_up(session: Session, model: str, condition: str, args) -> Dict:
    """Unload ``model`` and load it in ``condition``; seconds to READY and the
    helper's report entry (project condition only)."""
    session.unload([model])
    bare = session.bare_config(model)
    if condition == COLD:
        return {"seconds_to_ready": session.load_with_config(model, bare)}
    if condition == SEED_STYLE:
        return {"seconds_to_ready": session.load_with_config(model, seed_style_config(bare, args.group_size_max))}
    if condition.startswith("count="):
        config = plan_with_count(bare, args.group_size_max, args.batch_sizes, int(condition.split("=")[1]))
        return {"seconds_to_ready": session.load_with_config(model, config)}
    # The project: from the file without warmup, as a user's repository is.
    session.write_config(model, bare)
    report = session.trigger([model], args.group_size_max, args.batch_sizes)
    (entry,) = report["models"]
    return {"seconds_to_ready": entry["seconds_to_ready"], "report": report}


def combine_trials(trials: List[List[Dict]]) -> List[Dict]:
    """Per shape: the first request's latency as the median over the trials
    (each trial a fresh load), steady figures over every trial's requests."""
    rows = []
    for per_trial in zip(*trials):
        walls = [value for row in per_trial for value in row["steady_ms"]]
        computes = [value for row in per_trial for value in row["steady_compute_ms"]]
        firsts = [row["first_ms"] for row in per_trial]
        first_computes = [row["first_compute_ms"] for row in per_trial]
        p50, compute_p50 = statistics.median(walls), statistics.median(computes)
        rows.append(
            {
                "group": per_trial[0]["group"],
                "batch": per_trial[0]["batch"],
                "first_ms": statistics.median(firsts),
                "first_ms_trials": firsts,
                "first_compute_ms": statistics.median(first_computes),
                "first_compute_ms_trials": first_computes,
                "steady_p50_ms": p50,
                "steady_p99_ms": percentile(walls, 99),
                "steady_compute_p50_ms": compute_p50,
                "steady_compute_p99_ms": percentile(computes, 99),
                "ratio": statistics.median(firsts) / p50,
                "worst_trial_ratio": max(firsts) / p50,
                "compute_ratio": statistics.median(first_computes) / compute_p50 if compute_p50 else None,
                "steady_ms": walls,
                "steady_compute_ms": computes,
            }
        )
    return rows


def measure_latency(session: Session, args) -> Dict:
    conditions = [COLD, SEED_STYLE] + [f"count={count}" for count in args.count_sweep] + [PROJECT]
    latency = {}
    for model in args.models:
        shapes = planned_shapes(session, model, args.group_size_max, args.batch_sizes)
        raw = {condition: {"trials": [], "brought_up": []} for condition in conditions}
        # Conditions take turns within each trial, so slow drifts of the
        # machine spread over all of them alike.
        for trial in range(args.trials):
            for condition in conditions:
                brought_up = bring_up(session, model, condition, args)
                rows = session.measure_shapes(model, shapes, feature_dim(session, model), args.steady_requests)
                raw[condition]["trials"].append(rows)
                raw[condition]["brought_up"].append(brought_up)
                print(
                    f"{model:10} {condition:10} trial {trial + 1}: READY in {brought_up['seconds_to_ready']:.2f} s; "
                    f"worst first/p50 {max(row['ratio'] for row in rows):.2f}x, "
                    f"slowest first request {max(row['first_ms'] for row in rows):.2f} ms",
                    flush=True,
                )
        latency[model] = {}
        for condition in conditions:
            rows = combine_trials(raw[condition]["trials"])
            brought_up = raw[condition]["brought_up"]
            latency[model][condition] = {
                "seconds_to_ready": statistics.median(entry["seconds_to_ready"] for entry in brought_up),
                "report": brought_up[-1].get("report"),
                "reports": [entry.get("report") for entry in brought_up],
                "shapes": rows,
                "summary": summarize_condition(rows),
            }
    return latency


def cost_of_warmup(session: Session, latency: Dict) -> Dict:
    """Split each project-condition load into the helper's work, the warmup
    forwards and the rest of Triton's load; medians over the trials."""
    rows = []
    for model, conditions in latency.items():
        trials = []
        for report in conditions[PROJECT]["reports"]:
            (entry,) = report["models"]
            timings, lock = entry["timings"], entry["lock"]
            forwards = session.warmup_forward_seconds(model, lock["held_from"], lock["held_until"])
            helper_s = report["plan_s"] + timings["replan_s"] + timings["write_s"]
            trials.append(
                {
                    "seconds_to_ready": entry["seconds_to_ready"],
                    "client_seconds": report["client_seconds"],
                    "load_s": timings["load_s"],
                    "warmup_forward_s": forwards,
                    "triton_load_s": timings["load_s"] - forwards,
                    "helper_s": helper_s,
                    "helper_share": helper_s / entry["seconds_to_ready"],
                }
            )
        row = {key: statistics.median(trial[key] for trial in trials) for key in trials[0]}
        row.update(model=model, samples=entry["warmup_samples"], count=entry["count"], trials=trials)
        rows.append(row)
    return {"models": rows, "worst_helper_share": max(trial["helper_share"] for row in rows for trial in row["trials"])}


def scaling_points(args) -> List[tuple]:
    if args.smoke:
        return [(["model-v1"], 1, [1]), (["model-v1"], 2, [1, 2])]
    all_batches = [1, 2, 4, 8]
    points = [(EXAMPLE_MODELS[:count], 4, all_batches) for count in (1, 2, 3)]
    points += [(["model-v1"], group_max, all_batches) for group_max in (1, 8, 16, 32, 64)]
    points += [(["model-v1"], 16, all_batches[:count]) for count in (1, 2, 3)]
    return points


def measure_scaling(session: Session, args) -> Dict:
    points = []
    for models, group_max, batch_sizes in scaling_points(args):
        session.unload(EXAMPLE_MODELS)
        report = session.trigger(models, group_max, batch_sizes)
        points.append(
            {
                "models": models,
                "group_max": group_max,
                "batch_sizes": batch_sizes,
                "samples": sum(entry["warmup_samples"] for entry in report["models"]),
                "seconds": report["client_seconds"],
                "load_s": [entry["timings"]["load_s"] for entry in report["models"]],
            }
        )
        print(f"scaling: {len(models)} model(s), groups 1..{group_max}, batches {batch_sizes}: "
              f"{points[-1]['samples']} samples, READY in {points[-1]['seconds']:.2f} s", flush=True)
    single = [point for point in points if len(point["models"]) == 1]
    fit = None
    if len(single) >= 2:
        fit = {**linear_fit([p["samples"] for p in single], [p["seconds"] for p in single]), "points": len(single)}
    return {"points": points, "fit": fit}


def measure_parallel(session: Session) -> Dict:
    """One request for three models (parallel loads) vs three requests in a row."""
    session.unload(EXAMPLE_MODELS)
    one_request = session.trigger(EXAMPLE_MODELS, 4)["client_seconds"]
    session.unload(EXAMPLE_MODELS)
    sequential = sum(session.trigger([model], 4)["client_seconds"] for model in EXAMPLE_MODELS)
    return {"one_request_s": one_request, "sequential_s": sequential}


def measure_instances(session: Session) -> Dict:
    times = {}
    for model in ("model-v2", TWO_INSTANCE_MODEL):
        session.unload([model])
        times[model] = session.trigger([model], 4)["models"][0]["seconds_to_ready"]
    return {"one_instance_s": times["model-v2"], "two_instances_s": times[TWO_INSTANCE_MODEL]}


def measure_throughput(session: Session, args) -> Dict:
    results = {}
    for name, model in (("batched (one forward per execute)", "model-v2"), ("per request", PER_REQUEST_MODEL)):
        session.trigger([model], 4)
        dim = feature_dim(session, "model-v2")
        # A first round meets the batch sizes the batcher forms but the plan
        # did not warm (3, 5, 6, 7); the measured round runs warm.
        session.throughput(model, dim, clients=8, requests_per_client=max(5, args.throughput_requests // 10), group=4)
        results[name] = session.throughput(model, dim, clients=8, requests_per_client=args.throughput_requests, group=4)
        print(f"throughput {name}: {results[name]['requests_per_s']:.0f} requests/s", flush=True)
    return results


def measure_retrigger(session: Session, args, model: str) -> Dict:
    """The request that warmed ``model`` again: no write, no reload."""
    forwards_before = len([line for line in session.record.read_text().splitlines() if f'"model": "{model}"' in line])
    walls = []
    for _ in range(20):
        report = session.trigger([model], args.group_size_max, args.batch_sizes)
        assert not report["models"][0]["config_changed"], report
        walls.append(report["client_seconds"] * 1000)
    forwards_after = len([line for line in session.record.read_text().splitlines() if f'"model": "{model}"' in line])
    walls.sort()
    return {
        "requests": len(walls),
        "median_ms": walls[len(walls) // 2],
        "max_ms": walls[-1],
        "reloads": "none (no warmup forward ran)" if forwards_after == forwards_before else "yes",
    }


def run(args) -> Dict:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="warmup-bench-"))
    repository = working_repository(workdir)
    record = workdir / "standin_record.jsonl"
    record.touch()
    server = EmbeddedTriton(repository, workdir, http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port(), extra_env={"PYTORCH_STANDIN_RECORD": str(record)})
    results = {
        "command": " ".join(["python bench/warmup_benchmark.py", *(shlex.quote(a) for a in sys.argv[1:])]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {key: (str(value) if isinstance(value, pathlib.Path) else value) for key, value in vars(args).items()},
        "extras": {},
    }
    with server:
        print(f"server ready at {server.http_url}; working copy in {workdir}", flush=True)
        session = Session(server.http_url, repository, record)
        try:
            results["latency"] = measure_latency(session, args)
            results["cost"] = cost_of_warmup(session, results["latency"])
            if "retrigger" not in args.skip:
                results["extras"]["retrigger"] = measure_retrigger(session, args, args.models[-1])
            results["scaling"] = measure_scaling(session, args) if "scaling" not in args.skip else {"points": []}
            if "parallel" not in args.skip:
                results["extras"]["parallel"] = measure_parallel(session)
            if "instances" not in args.skip:
                results["extras"]["instances"] = measure_instances(session)
            if "throughput" not in args.skip:
                results["extras"]["throughput"] = measure_throughput(session, args)
        finally:
            session.close()
    shutil.rmtree(workdir, ignore_errors=True)

    project = [(model, data[PROJECT]["summary"]) for model, data in results["latency"].items()]
    worst_model, worst_summary = max(project, key=lambda item: item[1]["worst_ratio"])
    results["targets"] = {
        "project_worst_ratio": worst_summary["worst_ratio"],
        "project_worst_where": f"{worst_model} {worst_summary['worst_shape']}",
        "project_worst_compute_ratio": max(summary["worst_compute_ratio"] for _, summary in project),
        "ratio_met": worst_summary["worst_ratio"] <= RATIO_TARGET,
        "helper_share_met": results["cost"]["worst_helper_share"] <= HELPER_SHARE_TARGET,
    }
    return results


def rounded(value, digits: int = 4):
    """``value`` with every float rounded (milliseconds to 0.1 us, seconds to 0.1 ms)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item, digits) for item in value]
    return value


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    results = run(args)
    results["benchmark_seconds"] = time.monotonic() - started
    args.output_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(results)
    (args.output_dir / "warmup_benchmark.md").write_text(text)
    (args.output_dir / "warmup_benchmark.json").write_text(json.dumps(rounded(results), separators=(",", ":")))
    plot(results, args.output_dir / "warmup_benchmark.png")
    print(text)
    print(f"results in {args.output_dir} ({results['benchmark_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
