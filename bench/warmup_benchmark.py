#!/usr/bin/env python3
"""What warmup buys, and what it costs, measured on the embedded Triton.

One server (Triton's native libtorch backend, built from source) serves a
working copy of model_repository/. For each model and each warmup condition
the model is unloaded (so its next load creates fresh instances with a newly
loaded TorchScript module), brought to READY in that condition, and every
shape of the helper's default plan is requested: the first request right
after READY, then --steady-requests more at the same shape. Each request is
timed by the client and by Triton (compute_infer from the statistics API).

Conditions:
  cold        the config without any model_warmup entry;
  seed-style  warmup at batch size 1 only, every group size, one run per
              sample (the original approach);
  count=N     this project's samples with warmup count N (--count-sweep);
  project     warmup_helper with its default plan (count 3).

Then: where the time to READY goes, how it grows with models, group sizes
and batch sizes (with a least-squares fit), parallel vs one-at-a-time loads,
one vs two instances, throughput with dynamic batching, the cost of an
unchanged re-trigger, and how many warmed shapes TorchScript keeps fast
(1..64 group sizes x 4 batch sizes, in plan order and reversed).

Writes warmup_benchmark.md, .json (every raw number) and .png to
--output-dir (default bench/results).
"""

import argparse
import json
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional

from triton_warmup import HELPER_MODEL as HELPER
from bench.measure import (
    PROJECT_ROOT,
    COLD,
    EXAMPLE_MODELS,
    PROJECT,
    SEED_STYLE,
    TEXT_ENCODER,
    Session,
    run_record, Shape,
    copy_repository,
    percentile,
    plan_with_count,
    seed_style_config,
)
from bench.report import HELPER_SHARE_TARGET, RATIO_TARGET, linear_fit, markdown, plot, summarize_condition

from triton_warmup.embedded import EmbeddedTriton, free_port
from tritonclient.grpc import model_config_pb2
from triton_warmup.helper.warmup_plan import plan_warmup

TWO_INSTANCE_MODEL = "model-v2-two-instances"
SPECIALIZATION_MODEL = "model-v1"
SPECIALIZATION_BATCHES = [1, 2, 4, 8]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=EXAMPLE_MODELS + [TEXT_ENCODER], help="Models to measure. Default: model-v1 model-v2 model-v3 text-encoder.")
    parser.add_argument("--group-size-max", type=int, default=4, help="Group sizes 1..N are planned. Default is 4, as in `make run`.")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="Batch sizes to plan. Default: the helper's default plan.")
    parser.add_argument("--steady-requests", type=int, default=50, help="Requests per shape after the first, per trial. Default is 50.")
    parser.add_argument("--trials", type=int, default=3, help="Fresh loads per model and condition; a shape's first-request latency is the median over them. Default is 3.")
    parser.add_argument("--count-sweep", type=int, nargs="*", default=[1, 2], help="Extra conditions: the project's samples with these warmup counts. Default: 1 2.")
    parser.add_argument("--skip", nargs="*", default=[], choices=("scaling", "preflight", "parallel", "instances", "throughput", "retrigger", "specialization"), help="Sections to leave out.")
    parser.add_argument("--specialization-groups", type=int, default=64, help="Group sizes 1..N x batch sizes 1, 2, 4, 8 in the specialization study. Default is 64 (256 shapes).")
    parser.add_argument("--throughput-requests", type=int, default=200, help="Requests per client in the throughput runs. Default is 200.")
    parser.add_argument("--smoke", action="store_true", help="A minute-long run for the test suite: model-v1, two shapes, few requests, small scaling.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results", help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.group_size_max, args.batch_sizes = ["model-v1"], 1, [1, 2]
        args.steady_requests, args.count_sweep, args.throughput_requests, args.trials = 10, [], 10, 1
        args.specialization_groups = 2
        args.skip = sorted(set(args.skip) | {"instances"})
    return args


def working_repository(workdir: pathlib.Path) -> pathlib.Path:
    """A copy of the project's repository plus the model only the benchmark uses."""
    repository = copy_repository(workdir / "model_repository")
    shutil.copytree(repository / "model-v2", repository / TWO_INSTANCE_MODEL)
    config_path = repository / TWO_INSTANCE_MODEL / "config.pbtxt"
    config = config_path.read_text().replace('name: "model-v2"', f'name: "{TWO_INSTANCE_MODEL}"')
    assert "count: 1\n" in config, "model-v2's config no longer has 'count: 1'"
    config_path.write_text(config.replace("count: 1\n", "count: 2\n"))
    return repository


def planned_shapes(session: Session, model: str, group_max: int, batch_sizes) -> List[Shape]:
    plan = plan_warmup(session.bare_config(model), range(1, group_max + 1), batch_sizes)
    return [Shape(group, batch) for group in plan.group_sizes for batch in plan.batch_sizes]


def bring_up(session: Session, model: str, condition: str, args) -> Dict:
    """Unload ``model`` and load it in ``condition``; seconds to READY, the
    warmup runs' compute_infer seconds, and the helper's report entry
    (project condition only)."""
    session.unload([model])
    bare = session.bare_config(model)
    if condition == COLD:
        brought_up = {"seconds_to_ready": session.load_with_config(model, bare)}
    elif condition == SEED_STYLE:
        brought_up = {"seconds_to_ready": session.load_with_config(model, seed_style_config(bare, args.group_size_max))}
    elif condition.startswith("count="):
        config = plan_with_count(bare, args.group_size_max, args.batch_sizes, int(condition.split("=")[1]))
        brought_up = {"seconds_to_ready": session.load_with_config(model, config)}
    else:
        # The project: from the file without warmup, as a user's repository is.
        session.write_config(model, bare)
        report = session.trigger([model], args.group_size_max, args.batch_sizes)
        (entry,) = report["models"]
        brought_up = {"seconds_to_ready": entry["seconds_to_ready"], "report": report}
    # Before any request: every execution of the new version is a warmup run.
    brought_up["warmup_compute_s"] = session.warmup_compute_seconds(model)
    return brought_up


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
                rows = session.measure_shapes(model, shapes, args.steady_requests)
                raw[condition]["trials"].append(rows)
                raw[condition]["brought_up"].append(brought_up)
                print(
                    f"{model:12} {condition:10} trial {trial + 1}: READY in {brought_up['seconds_to_ready']:.2f} s; "
                    f"worst compute first/p50 {max(row['compute_ratio'] or 0 for row in rows):.2f}x, "
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
                "brought_up": brought_up,
                "shapes": rows,
                "summary": summarize_condition(rows),
            }
    return latency


def cost_of_warmup(session: Session, latency: Dict) -> Dict:
    """Split each project-condition load into the helper's work, the warmup
    runs (their compute_infer in Triton's statistics) and the rest of
    Triton's load; medians over the trials."""
    rows = []
    for model, conditions in latency.items():
        trials = []
        for brought_up in conditions[PROJECT]["brought_up"]:
            report = brought_up["report"]
            (entry,) = report["models"]
            timings = entry["timings"]
            forwards = brought_up["warmup_compute_s"]
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
                    # The model was unloaded: its samples ran on a scratch copy.
                    "preflight_s": timings["preflight_s"],
                    "preflight_scratch_load_s": entry["preflight"]["load_s"],
                    "preflight_share": timings["preflight_s"] / entry["seconds_to_ready"],
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
                "preflight_s": [entry["timings"]["preflight_s"] for entry in report["models"]],
            }
        )
        print(f"scaling: {len(models)} model(s), groups 1..{group_max}, batches {batch_sizes}: "
              f"{points[-1]['samples']} samples, READY in {points[-1]['seconds']:.2f} s, "
              f"preflight {sum(points[-1]['preflight_s']):.2f} s", flush=True)
    single = [point for point in points if len(point["models"]) == 1]
    fit = None
    if len(single) >= 2:
        fit = {**linear_fit([p["samples"] for p in single], [p["seconds"] for p in single]), "points": len(single)}
    return {"points": points, "fit": fit}


def set_helper_parameters(session: Session, **parameters: str) -> None:
    """Reload warmup_helper with ``parameters`` set (its file keeps the rest)."""
    config = session.bare_config(HELPER)
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    session.load_with_config(HELPER, config)


def measure_parallel(session: Session, args) -> Dict:
    """Every example model warmed from unloaded in one request: loads one at
    a time or all at once, with the preflight on and off; medians of
    --trials runs each. Decides the default of max_parallel_loads."""
    models = EXAMPLE_MODELS[:2] if args.smoke else EXAMPLE_MODELS + [TEXT_ENCODER]
    runs = []
    for preflight in ("true", "false"):
        for max_parallel in ("1", str(len(models))):
            set_helper_parameters(session, preflight=preflight, max_parallel_loads=max_parallel)
            seconds, preflight_s = [], []
            for _ in range(1 if args.smoke else args.trials):
                session.unload(models)
                report = session.trigger(models, args.group_size_max, args.batch_sizes)
                seconds.append(report["client_seconds"])
                preflight_s.append(sum(entry["timings"]["preflight_s"] for entry in report["models"]))
            runs.append(
                {
                    "preflight": preflight == "true",
                    "max_parallel_loads": int(max_parallel),
                    "seconds": seconds,
                    "median_s": statistics.median(seconds),
                    "preflight_median_s": statistics.median(preflight_s),
                }
            )
            print(f"parallel: preflight {preflight}, max_parallel_loads {max_parallel}: all "
                  f"{len(models)} READY in {runs[-1]['median_s']:.2f} s (median)", flush=True)
    # Back to the file's settings (the benchmark's working copy).
    set_helper_parameters(session)
    return {"models": models, "runs": runs}


def measure_preflight(session: Session, args) -> Dict:
    """The preflight's share of the time to READY for a 256-sample plan
    (SPECIALIZATION_MODEL, group sizes 1..64 x batch sizes 1, 2, 4, 8): from
    unloaded (a scratch copy runs every sample) and as a re-warm of the READY
    model that knew 4 of them (requests to the serving model run the rest)."""
    model = SPECIALIZATION_MODEL
    group_max = 4 if args.smoke else args.specialization_groups
    batches = [1, 2] if args.smoke else SPECIALIZATION_BATCHES
    rows = []
    for case in ("not loaded", "READY"):
        trials = []
        for _ in range(1 if args.smoke else args.trials):
            session.unload([model])
            session.write_config(model, session.bare_config(model))
            if case == "READY":
                session.trigger([model], 1, batches[:1])
            (entry,) = session.trigger([model], group_max, batches)["models"]
            record = entry["preflight"]
            trials.append(
                {
                    "samples": entry["warmup_samples"],
                    "checked": record["samples_checked"],
                    "how": record["how"],
                    "preflight_s": record["seconds"],
                    "scratch_load_s": record["load_s"],
                    "seconds_to_ready": entry["seconds_to_ready"],
                    "share": record["seconds"] / entry["seconds_to_ready"],
                }
            )
        row = {key: statistics.median(trial[key] for trial in trials)
               for key in ("preflight_s", "seconds_to_ready", "share")}
        row.update(case=case, model=model, samples=trials[0]["samples"], checked=trials[0]["checked"],
                   how=trials[0]["how"], trials=trials)
        rows.append(row)
        print(f"preflight ({case}): {row['checked']} of {row['samples']} samples by {row['how']} in "
              f"{row['preflight_s']:.2f} s of {row['seconds_to_ready']:.2f} s to READY "
              f"({row['share'] * 100:.0f}%)", flush=True)
    session.write_config(model, session.bare_config(model))
    return {"rows": rows}


def measure_instances(session: Session) -> Dict:
    times = {}
    for model in ("model-v2", TWO_INSTANCE_MODEL):
        session.unload([model])
        times[model] = session.trigger([model], 4)["models"][0]["seconds_to_ready"]
    return {"one_instance_s": times["model-v2"], "two_instances_s": times[TWO_INSTANCE_MODEL]}


def measure_throughput(session: Session, args) -> Dict:
    """Batch-1 requests from 8 clients to model-v2: what the dynamic batcher
    forms and what the native backend sustains."""
    model = "model-v2"
    session.trigger([model], 4)
    # A first round meets the batch sizes the batcher forms but the plan did
    # not warm (3, 5, 6, 7); the measured round runs warm.
    session.throughput(model, clients=8, requests_per_client=max(5, args.throughput_requests // 10), group=4)
    result = session.throughput(model, clients=8, requests_per_client=args.throughput_requests, group=4)
    print(f"throughput {model}: {result['requests_per_s']:.0f} requests/s", flush=True)
    return {"model": model, **result}


def measure_retrigger(session: Session, args, model: str) -> Dict:
    """The request that warmed ``model`` again: no write, no reload."""
    loads_before = session.loads_logged(model)
    walls = []
    for _ in range(20):
        report = session.trigger([model], args.group_size_max, args.batch_sizes)
        assert not report["models"][0]["config_changed"], report
        walls.append(report["client_seconds"] * 1000)
    loads_after = session.loads_logged(model)
    walls.sort()
    return {
        "requests": len(walls),
        "median_ms": walls[len(walls) // 2],
        "max_ms": walls[-1],
        "reloads": "none (Triton logged no load)" if loads_after == loads_before else f"{loads_after - loads_before}",
    }


def measure_specializations(session: Session, args) -> Dict:
    """How many warmed shapes stay fast: SPECIALIZATION_MODEL warmed with
    group sizes 1..N x batch sizes 1, 2, 4, 8 (count 3), then every shape
    requested once more than steady, in plan order. Done twice: samples in
    plan order, and reversed, so a shape warmed early in one run is warmed
    late in the other."""
    model = SPECIALIZATION_MODEL
    bare = session.bare_config(model)
    group_max = args.specialization_groups
    batches = SPECIALIZATION_BATCHES if not args.smoke else [1, 2]
    planned = plan_with_count(bare, group_max, batches, 3)
    shapes = [
        Shape(int(sample.inputs["mask"].dims[0]), sample.batch_size) for sample in planned.model_warmup
    ]
    steady = 3 if args.smoke else 5
    results = {"model": model, "shapes": len(shapes), "steady_requests": steady, "orders": {}}
    for order in ("plan order", "reversed"):
        config = model_config_pb2.ModelConfig()
        config.CopyFrom(planned)
        if order == "reversed":
            samples = list(config.model_warmup)[::-1]
            del config.model_warmup[:]
            config.model_warmup.extend(samples)
        session.unload([model])
        seconds = session.load_with_config(model, config)
        rows = session.measure_shapes(model, shapes, steady)
        position = {shape: index for index, shape in enumerate(
            shapes if order == "plan order" else shapes[::-1], start=1)}
        results["orders"][order] = {
            "seconds_to_ready": seconds,
            "rows": [
                {
                    "group": row["group"],
                    "batch": row["batch"],
                    "warmed_at": position[Shape(row["group"], row["batch"])],
                    "first_compute_ms": row["first_compute_ms"],
                    "steady_compute_p50_ms": row["steady_compute_p50_ms"],
                    "compute_ratio": row["compute_ratio"],
                    "first_ms": row["first_ms"],
                    "steady_p50_ms": row["steady_p50_ms"],
                }
                for row in rows
            ],
        }
        worst = max(rows, key=lambda row: row["compute_ratio"] or 0)
        print(f"specialization ({order}): {len(shapes)} shapes, READY in {seconds:.2f} s, worst compute "
              f"first/p50 {worst['compute_ratio']:.2f}x at g{worst['group']}xb{worst['batch']}", flush=True)
    session.write_config(model, bare)
    return results


def run(args) -> Dict:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="warmup-bench-"))
    repository = working_repository(workdir)
    server = EmbeddedTriton(repository, workdir, http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port())
    results = {
        **run_record("bench.warmup_benchmark", server.pytorch_backend),
        "settings": {key: (str(value) if isinstance(value, pathlib.Path) else value) for key, value in vars(args).items()},
        "extras": {},
    }
    with server:
        print(f"server ready at {server.http_url}; working copy in {workdir}; "
              f"backend {server.pytorch_backend.library}", flush=True)
        session = Session(server.http_url, repository, server.log_path)
        try:
            results["latency"] = measure_latency(session, args)
            results["cost"] = cost_of_warmup(session, results["latency"])
            if "retrigger" not in args.skip:
                results["extras"]["retrigger"] = measure_retrigger(session, args, args.models[-1])
            results["scaling"] = measure_scaling(session, args) if "scaling" not in args.skip else {"points": []}
            if "preflight" not in args.skip:
                results["preflight"] = measure_preflight(session, args)
            if "parallel" not in args.skip:
                results["extras"]["parallel"] = measure_parallel(session, args)
            if "instances" not in args.skip:
                results["extras"]["instances"] = measure_instances(session)
            if "throughput" not in args.skip:
                results["extras"]["throughput"] = measure_throughput(session, args)
            if "specialization" not in args.skip:
                results["specialization"] = measure_specializations(session, args)
        finally:
            session.close()
    shutil.rmtree(workdir, ignore_errors=True)

    results["targets"] = targets(results)
    return results


def targets(results: Dict) -> Dict:
    """The issue's targets, from the project condition: the worst compute
    first/steady ratio on the millisecond model, the worst excess in
    microseconds on the small ones, and the helper's share of READY."""
    project = {model: data[PROJECT]["summary"] for model, data in results["latency"].items()}
    verdict = {
        "helper_share_met": results["cost"]["worst_helper_share"] <= HELPER_SHARE_TARGET,
        "worst_excess_us": {model: summary["worst_excess_us"] for model, summary in project.items()},
    }
    if TEXT_ENCODER in project:
        summary = project[TEXT_ENCODER]
        verdict.update(
            ratio_model=TEXT_ENCODER,
            ratio_compute=summary["worst_compute_ratio"],
            ratio_where=f"{TEXT_ENCODER} {summary['worst_compute_shape']}",
            ratio_met=summary["worst_compute_ratio"] <= RATIO_TARGET,
        )
    return verdict


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
