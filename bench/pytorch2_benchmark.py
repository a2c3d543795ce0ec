#!/usr/bin/env python3
"""A PyTorch 2 model's first requests and time to READY: cold, warmed, restarted.

``compiled-encoder`` is model-v1's network as a Python class that Triton's
PyTorch 2 runtime compiles with ``torch.compile`` (behind this project's
shim). Per trial, each condition on a new tritonserver process:

* cold: Triton loads the model through the Model Loading API with no
  warmup, on an empty Inductor cache, as a server without this project does;
* warmed: the helper warms it with a range plan (group sizes x batch sizes)
  on an empty cache: a first start, preflight included;
* restart: a new server on the warmed repository and the cache the warmed
  server filled: what a restart or a replica on a shared volume pays.

Then every planned shape gets its first request, as a client sends it (one
request of the sample's batch size), and --steady more. From Triton's
statistics, the model's ``compute_infer`` for each request: first against
the steady median. The first shape's first request is also the first after
READY; it is also taken against that shape after --idle-s idle, since any
request after a pause is slower (measured; most likely the stub's and
torch's threads waking). From the runtime's log (the shim), the requests
that made torch.compile work after READY. From the helper's report,
Inductor's FX graph cache hits and misses during the load. Medians over
--trials.

Writes pytorch2_benchmark.md and .json to --output-dir (default
bench/results); with --model compiled-attention, a larger model kept in
bench/models/, pytorch2_benchmark_compiled-attention.md and .json; with
--model compiled-tokens (issue 38's kind: INT64 token ids and an INT64 [1],
two outputs, max_batch_size 4), pytorch2_benchmark_compiled-tokens.md and
.json. Every plan with a group size of 1 and batch sizes over 1 has the
case of issue 38: one request of B rows at group size 1, which Triton's
warmup never sends as such. The shim's log also gives the full garbage
collections that ran inside an execute after READY, a cost no compile
counter shows.
"""

import argparse
import importlib.util
import json
import pathlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import tritonclient.http as httpclient

from bench.measure import (
    PROJECT_ROOT,
    REQUEST_TIMEOUT_S,
    copy_repository,
    counters,
    results_header,
    run_record,
    settled_counters,
)
from bench.report import table, write_results
from triton_warmup import example_models
from triton_warmup.client.warm import request_warmup, shape_arrays
from triton_warmup.embedded import AUTO_COMPLETE_AUTO, AUTO_COMPLETE_KEEP, EmbeddedTriton, free_port

# The models it can measure: the example repository's, and a larger one kept
# with the benchmark (bench/models/), whose weights are written per run.
DESCRIPTIONS = {
    example_models.COMPILED_ENCODER: "model-v1's network",
    "compiled-attention": "four attention blocks over the group's items, bench/models/",
    "compiled-tokens": "INT64 token ids through an embedding, a conv1d, SiLU and LayerNorm, two outputs, "
                       "max_batch_size 4, bench/models/",
}
# Models with no input of rank >= 2 take no feature dimension in the plan.
NO_FEATURE_DIM = {"compiled-tokens"}
BENCH_MODELS = pathlib.Path(__file__).resolve().parent / "models"
WEIGHTS_SEED = 0
FEATURE_DIM = 64
CONDITIONS = ("cold", "warmed", "restart")
# The targets: every planned shape within 1.5x of steady at its first
# request after the warmup; a restart READY in at most 20% of a cold start.
RATIO_TARGET = 1.5
# The first planned shape's first request is also the first after READY: the
# model sat idle from its last warmup sample through the rest of the load and
# the helper's answer, and every request after a pause is slower (measured
# in docs/pytorch2.md; most likely the stub's and torch's threads waking).
# So that shape is also measured, already warm,
# after this much idle time, to tell that cost from a cold shape's.
IDLE_S = 1.0
IDLE_REQUESTS = 5
# And what sets a pause apart from a change of shape: the same shape, warm,
# after a short pause, and right after a request at the largest planned
# shape (each after a few back-to-back requests at the first shape).
SHORT_PAUSE_S = 0.05
RESTART_SHARE_TARGET = 0.20


def full_collections_after_ready(server: EmbeddedTriton, model: str) -> List[str]:
    """The shim's lines for full garbage collections that ran inside an
    execute after the model's last load."""
    log = server.log_text()
    loaded = log.rfind(f"successfully loaded '{model}'")
    return [line for line in log[loaded:].splitlines() if f"full garbage collection in execute of '{model}'" in line]


def compiles_after_ready(server: EmbeddedTriton, model: str) -> List[str]:
    """The request shapes of each execute that made torch.compile work after
    the model's last load (the shim's log lines)."""
    compile_line = re.compile(r"torch\.compile in execute of '" + re.escape(model) + r"'.*?request shapes (\[.*)\"$")
    log = server.log_text()
    loaded = log.rfind(f"successfully loaded '{model}'")
    return [match.group(1) for line in log[loaded:].splitlines() if (match := compile_line.search(line))]


def results_name(model: str, auto_complete: str = AUTO_COMPLETE_AUTO) -> str:
    """pytorch2_benchmark for the example model, with the model's name for
    another; servers on Triton's default flags add ``_triton-default-flags``."""
    name = "pytorch2_benchmark" if model == example_models.COMPILED_ENCODER else f"pytorch2_benchmark_{model}"
    return name if auto_complete == AUTO_COMPLETE_AUTO else f"{name}_triton-default-flags"


def add_bench_model(repository: pathlib.Path, model: str) -> None:
    """Copy a model of bench/models/ into ``repository`` and write its seeded weights."""
    folder = repository / model
    shutil.copytree(BENCH_MODELS / model, folder, ignore=shutil.ignore_patterns("__pycache__", "model.pt"))
    spec = importlib.util.spec_from_file_location(model.replace("-", "_"), folder / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The class Triton's runtime serves: the first nn.Module subclass by name.
    classes = [getattr(module, name) for name in dir(module)]
    network_class = next(c for c in classes if isinstance(c, type) and issubclass(c, torch.nn.Module))
    torch.manual_seed(WEIGHTS_SEED)
    torch.save(network_class().state_dict(), str(folder / "1" / "model.pt"))


def request_inputs(config: Dict, batch: int, group: int) -> List[httpclient.InferInput]:
    """One request of ``batch`` rows for the model's declared inputs: every
    variable dim is the group size; floats random, integers ones."""
    inputs = []
    for declared in config["input"]:
        shape = [batch] + [group if int(dim) == -1 else int(dim) for dim in declared["dims"]]
        datatype = declared["data_type"].replace("TYPE_", "")
        if datatype == "FP32":
            data = np.random.default_rng().random(shape, dtype=np.float32)
        else:
            data = np.ones(shape, np.dtype(datatype.lower()))
        tensor = httpclient.InferInput(declared["name"], shape, datatype)
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return inputs


# Each model's config as Triton serves it, read once.
_CONFIGS: Dict[str, Dict] = {}


def one_request(client, model: str, batch: int, group: int) -> float:
    """One request of ``batch`` rows; the model's compute_infer in ms."""
    if model not in _CONFIGS:
        _CONFIGS[model] = client.get_model_config(model)
    before = {model: counters(client, model)}
    client.infer(model, request_inputs(_CONFIGS[model], batch, group))
    after = settled_counters(client, before)
    return (after[model]["compute_ns"] - before[model]["compute_ns"]) / 1e6


def bring_up(client, condition: str, args) -> Dict:
    started = time.perf_counter()
    if condition == "cold":
        client.load_model(args.model)
        return {"seconds_to_ready": time.perf_counter() - started}
    feature_dims = None if args.model in NO_FEATURE_DIM else [FEATURE_DIM]
    arrays = shape_arrays([args.model], args.group_min, args.group_max, feature_dims, args.batch_sizes)
    _, report = request_warmup(client, "http", arrays, timeout_s=REQUEST_TIMEOUT_S)
    if report.failed:
        raise RuntimeError(f"warmup failed: {report.to_dict()}")
    entry = report.entry(args.model)
    return {
        "seconds_to_ready": time.perf_counter() - started,
        "samples": entry.warmup_samples,
        "preflight": entry.preflight.how if entry.preflight else None,
        "preflight_s": entry.timings.preflight_s,
        "load_s": entry.timings.load_s,
        "compile": entry.compile.to_dict() if entry.compile else None,
    }


def trial(condition: str, number: int, repository: pathlib.Path, cache: pathlib.Path, workdir: pathlib.Path,
          args) -> Dict:
    server = EmbeddedTriton(repository, workdir / f"{condition}-{number}", http_port=free_port(),
                            grpc_port=free_port(), metrics_port=free_port(),
                            extra_env={"TORCHINDUCTOR_CACHE_DIR": str(cache)}, auto_complete=args.auto_complete)
    rows = []
    with server:
        with httpclient.InferenceServerClient(server.http_url, network_timeout=REQUEST_TIMEOUT_S) as client:
            brought_up = bring_up(client, condition, args)
            for group in range(args.group_min, args.group_max + 1):
                for batch in args.batch_sizes:
                    first = one_request(client, args.model, batch, group)
                    steady = statistics.median(one_request(client, args.model, batch, group)
                                               for _ in range(args.steady))
                    rows.append({"batch": batch, "group": group, "first_ms": first, "steady_ms": steady,
                                 "ratio": first / steady})
            idle = statistics.median(after_idle(client, args.model, rows[0]["batch"], rows[0]["group"], args.idle_s)
                                     for _ in range(args.idle_requests))
            first_shape, largest = (rows[0]["batch"], rows[0]["group"]), (rows[-1]["batch"], rows[-1]["group"])
            short_pause = statistics.median(
                after(client, args.model, first_shape, lambda: time.sleep(SHORT_PAUSE_S))
                for _ in range(args.idle_requests))
            other_shape = statistics.median(
                after(client, args.model, first_shape, lambda: one_request(client, args.model, *largest))
                for _ in range(args.idle_requests))
        compiled = compiles_after_ready(server, args.model)
        collections = full_collections_after_ready(server, args.model)
    result = {**brought_up, "rows": rows, "compiled_after_ready": compiled, "idle_ms": idle,
              "short_pause_ms": short_pause, "after_other_shape_ms": other_shape,
              "first_against_idle": rows[0]["first_ms"] / idle, "full_collections_after_ready": collections}
    print(f"{condition} {number}: READY in {brought_up['seconds_to_ready']:.1f} s; {slow_shapes(result)} of "
          f"{len(rows)} shapes over {RATIO_TARGET}x ({slow_shapes(result, idle_matched=True)} against the idle "
          f"baseline); worst {max(row['ratio'] for row in rows):.1f}x; "
          f"{len(compiled)} requests compiled after READY; {len(collections)} with a full garbage collection",
          flush=True)
    return result


def after(client, model: str, shape, between) -> float:
    """``shape`` (batch, group), warm, after three back-to-back requests at
    it and then ``between()``."""
    for _ in range(3):
        one_request(client, model, *shape)
    between()
    return one_request(client, model, *shape)


def after_idle(client, model: str, batch: int, group: int, idle_s: float) -> float:
    time.sleep(idle_s)
    return one_request(client, model, batch, group)


def slow_shapes(trial_: Dict, idle_matched: bool = False) -> int:
    """Shapes whose first request took over RATIO_TARGET x steady; with
    ``idle_matched``, the first shape's (the first request after READY) is
    taken against the same shape, warm, after the same kind of pause."""
    ratios = [row["ratio"] for row in trial_["rows"]]
    if idle_matched:
        ratios[0] = trial_["first_against_idle"]
    return sum(ratio > RATIO_TARGET for ratio in ratios)


def summarize(trials: List[Dict]) -> Dict:
    shapes = []
    for index, row in enumerate(trials[0]["rows"]):
        runs = [trial_["rows"][index] for trial_ in trials]
        shapes.append({"batch": row["batch"], "group": row["group"],
                       **{key: statistics.median(run[key] for run in runs) for key in ("first_ms", "steady_ms", "ratio")}})
    return {
        "seconds_to_ready": statistics.median(trial_["seconds_to_ready"] for trial_ in trials),
        "slow_shapes": statistics.median(slow_shapes(t) for t in trials),
        "slow_shapes_idle_matched": statistics.median(slow_shapes(t, idle_matched=True) for t in trials),
        "idle_ms": statistics.median(t["idle_ms"] for t in trials),
        # Results written before these were measured have none.
        **{key: statistics.median(t[key] for t in trials) for key in ("short_pause_ms", "after_other_shape_ms")
           if all(key in t for t in trials)},
        "first_against_idle": statistics.median(t["first_against_idle"] for t in trials),
        "worst_ratio": statistics.median(max(row["ratio"] for row in t["rows"]) for t in trials),
        "compiled_after_ready": statistics.median(len(t["compiled_after_ready"]) for t in trials),
        # Results written before the shim logged them have no such lines.
        "full_collections_after_ready": statistics.median(len(t.get("full_collections_after_ready", []))
                                                          for t in trials),
        "shapes": shapes,
    }


def _collections_cell(summary: Dict) -> str:
    # Results measured before the shim logged full collections have none.
    if "full_collections_after_ready" not in summary["trials"][0]:
        return "-"
    return f"{summary['full_collections_after_ready']:g}"


def _compile_cell(trial_: Dict) -> str:
    record = trial_.get("compile")
    if not record:
        return "-"
    return (f"{record['verdict']}: {record['cache_misses']} misses, {record['cache_hits']} hits, "
            f"{record.get('traced_from_cache', 0)} from Dynamo's cache")


def _flags_sentence(results: Dict) -> str:
    # Results written before --auto-complete existed ran Triton's default.
    if results.get("auto_complete", AUTO_COMPLETE_KEEP) == AUTO_COMPLETE_KEEP:
        return ("Servers on Triton's default flags (auto-complete on: 1 s of sleep in each Python or PyTorch 2 "
                "model's load, the scratch copy's included).")
    return ("Servers started as the project's launchers start them (`--disable-auto-complete-config`, which "
            "this repository allows).")


def markdown(results: Dict) -> str:
    conditions = results["conditions"]
    # Results written before --model existed measured the example model.
    model = results.get("model", example_models.COMPILED_ENCODER)
    parts = results_header("A PyTorch 2 model: first requests and time to READY", results) + [
        f"`{model}` ({DESCRIPTIONS[model]}, `torch.compile` through Triton's PyTorch 2 "
        "runtime), one CPU instance. "
        f"Plan: group sizes {results['group_min']}..{results['group_max']} x batch sizes "
        f"{', '.join(map(str, results['batch_sizes']))}. Each trial a new tritonserver; {results['trials']} trials, "
        f"medians. {_flags_sentence(results)} Server-side `compute_infer` of each planned shape's first request (one request of the batch "
        f"size) against the median of {results['steady']} more. 'compiled after READY': requests whose execute "
        "made torch.compile trace or compile (the runtime shim's log). Cache: Inductor's FX graph cache during "
        "the load, and the functions whose traced code came from Dynamo's own cache (nothing traced for them), "
        f"from torch's counters. Targets: warmed within {RATIO_TARGET}x of steady; a restart READY in "
        f"at most {RESTART_SHARE_TARGET:.0%} of a first start.\n",
        f"The first planned shape's first request is also the first after READY, after the model sat idle. "
        f"'idle baseline': that shape, already warm, each request after {results['idle_s']:g} s idle (median of "
        f"{results['idle_requests']}); the idle-matched count takes the first request after READY against it, "
        "every other shape against its back-to-back steady.\n",
    ]
    rows = []
    for condition in conditions:
        summary = conditions[condition]
        rows.append((
            condition,
            f"{summary['seconds_to_ready']:.1f}",
            f"{summary['slow_shapes']:g} of {len(summary['shapes'])}",
            f"{summary['slow_shapes_idle_matched']:g}",
            f"{summary['shapes'][0]['first_ms']:.2f} ms / {summary['idle_ms']:.2f} ms = "
            f"{summary['first_against_idle']:.2f}x",
            f"{summary['worst_ratio']:.1f}x",
            f"{summary['compiled_after_ready']:g}",
            _collections_cell(summary),
            "; ".join(_compile_cell(trial_) for trial_ in summary["trials"]),
        ))
    parts.append(table(("condition", "s to READY", f"shapes over {RATIO_TARGET}x", "idle-matched",
                        "first after READY / idle baseline", "worst shape",
                        "requests compiled after READY", "requests with a full garbage collection after READY",
                        "cache during the load, per trial"), rows))
    pauses = [condition for condition in conditions if "short_pause_ms" in conditions[condition]]
    if pauses:
        parts.append(
            f"\nThe first planned shape, warm, batch {conditions[pauses[0]]['shapes'][0]['batch']} group "
            f"{conditions[pauses[0]]['shapes'][0]['group']}, per condition (medians of trials; each after three "
            "back-to-back requests at it): " + "; ".join(
                f"{condition}: first request after READY {conditions[condition]['shapes'][0]['first_ms']:.2f} ms, "
                f"back to back {conditions[condition]['shapes'][0]['steady_ms']:.2f} ms, right after a request at "
                f"the largest planned shape {conditions[condition]['after_other_shape_ms']:.2f} ms, after a "
                f"{SHORT_PAUSE_S * 1000:g} ms pause {conditions[condition]['short_pause_ms']:.2f} ms, after "
                f"{results['idle_s']:g} s idle {conditions[condition]['idle_ms']:.2f} ms"
                for condition in pauses) + ".\n")
    parts.append("\nPlanned shapes whose first request, per shape the median of the trials, took over "
                 f"{RATIO_TARGET}x steady: " + "; ".join(
                     f"{condition} {sum(shape['ratio'] > RATIO_TARGET for shape in conditions[condition]['shapes'])}"
                     for condition in conditions) + ".\n")
    if "restart" in conditions:
        share = conditions["restart"]["seconds_to_ready"] / conditions["warmed"]["seconds_to_ready"]
        parts.append(f"\nA restart reached READY in {share:.0%} of a first start's time "
                     f"({conditions['restart']['seconds_to_ready']:.1f} s against "
                     f"{conditions['warmed']['seconds_to_ready']:.1f} s; target at most {RESTART_SHARE_TARGET:.0%}).\n")
    parts.append("Where a warmed server's time went, per trial (s): " + "; ".join(
        f"{condition} {trial_['seconds_to_ready']:.1f} = preflight {trial_['preflight_s']:.1f} "
        f"({trial_['preflight'] or 'none'}) + load {trial_['load_s']:.1f}"
        for condition in ("warmed", "restart") if condition in conditions
        for trial_ in conditions[condition]["trials"]) + ".\n")
    parts.append("\n## Per shape (medians of trials)\n")
    shape_rows = []
    for condition in conditions:
        for shape in conditions[condition]["shapes"]:
            shape_rows.append((condition, shape["batch"], shape["group"], f"{shape['first_ms']:.2f}",
                               f"{shape['steady_ms']:.2f}", f"{shape['ratio']:.2f}x"))
    parts.append(table(("condition", "batch", "group", "first ms", "steady ms", "ratio"), shape_rows))
    return "\n".join(parts) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(DESCRIPTIONS), default=example_models.COMPILED_ENCODER,
                        help=f"The model to measure. Default is {example_models.COMPILED_ENCODER}.")
    parser.add_argument("--group-min", type=int, default=1, help="Smallest group size. Default is 1.")
    parser.add_argument("--group-max", type=int, default=8, help="Largest group size. Default is 8.")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4],
                        help="Batch sizes. Default is 1 2 4.")
    parser.add_argument("--trials", type=int, default=3, help="Trials per condition. Default is 3.")
    parser.add_argument("--steady", type=int, default=5, help="Requests after the first, per shape. Default is 5.")
    parser.add_argument("--idle-s", type=float, default=IDLE_S,
                        help=f"Pause before each request of the idle baseline. Default is {IDLE_S:g}.")
    parser.add_argument("--idle-requests", type=int, default=IDLE_REQUESTS,
                        help=f"Requests of the idle baseline. Default is {IDLE_REQUESTS}.")
    parser.add_argument("--auto-complete", choices=(AUTO_COMPLETE_AUTO, AUTO_COMPLETE_KEEP), default=AUTO_COMPLETE_AUTO,
                        help="The servers' auto-complete choice: 'auto' (default) as the project's launchers start "
                             "Triton, '--disable-auto-complete-config' where the repository allows it; 'keep' "
                             "Triton's default, which sleeps 1 s in every Python or PyTorch 2 model's load.")
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS),
                        help="Conditions to run (the restart needs warmed). Default is all.")
    parser.add_argument("--smoke", action="store_true", help="One trial, group sizes up to 2, batch sizes 1 2.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    parser.add_argument("--markdown-only", action="store_true",
                        help="Write the Markdown again from the JSON in --output-dir, measuring nothing.")
    args = parser.parse_args(argv)
    if args.markdown_only:
        results = json.loads((args.output_dir / f"{results_name(args.model, args.auto_complete)}.json").read_text())
        (args.output_dir / f"{results_name(args.model, args.auto_complete)}.md").write_text(markdown(results))
        return 0
    if args.smoke:
        args.group_max, args.batch_sizes, args.trials, args.steady, args.idle_requests = 2, [1, 2], 1, 3, 2
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="pytorch2-bench-"))
    template = copy_repository(workdir / "template")
    if (BENCH_MODELS / args.model).is_dir():
        add_bench_model(template, args.model)
    results = {
        **run_record("bench.pytorch2_benchmark"),
        "model": args.model,
        "trials": args.trials,
        "steady": args.steady,
        "idle_s": args.idle_s,
        "idle_requests": args.idle_requests,
        "group_min": args.group_min,
        "group_max": args.group_max,
        "batch_sizes": args.batch_sizes,
        "auto_complete": args.auto_complete,
        "conditions": {condition: {"trials": []} for condition in CONDITIONS if condition in args.conditions},
    }
    if "restart" in args.conditions and "warmed" not in args.conditions:
        parser.error("the restart condition restarts on the warmed condition's repository: add warmed")
    for number in range(args.trials):
        # cold and warmed each start from an empty cache; the restart reuses
        # the warmed server's repository (its preflight record) and cache.
        for condition in results["conditions"]:
            repository = workdir / f"repo-{'warmed' if condition == 'restart' else condition}-{number}"
            if condition != "restart":
                shutil.copytree(template, repository)
            cache = workdir / f"cache-{'warmed' if condition == 'restart' else condition}-{number}"
            results["conditions"][condition]["trials"].append(trial(condition, number, repository, cache, workdir, args))
    for condition in results["conditions"]:
        results["conditions"][condition].update(summarize(results["conditions"][condition]["trials"]))
    write_results(args.output_dir, results_name(args.model, args.auto_complete), results, markdown(results))
    print(f"servers' logs and repositories: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
