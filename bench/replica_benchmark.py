#!/usr/bin/env python3
"""How long a replica takes to become ready, measured with deploy/entrypoint.sh
(what the container runs) on the embedded Triton.

The entrypoint execs tritonserver with only warmup_helper loaded, and the
helper warms its start plan by itself (warm_on_start; the plan is mounted
over the image's start plan, as the Deployment mounts the ConfigMap's): no
client sends anything. A pod is ready when the helper logs "warmed at start:
N of N model(s) READY", which is when every planned model is READY, what the
Deployment's readiness probe waits for; the probe is then run once to check.

1. Plan size: for each --group-sizes G, a plan of the three example models
   (group sizes 1..G, the helper's default batch sizes, count 3) is warmed at
   start by a fresh run of the entrypoint, --repeats times. From the run's
   start: the server is up (warmup_helper READY), each model is READY, the
   pod is ready. A least-squares line fits the time to pod ready against the
   plan's samples.
2. Replicas at once: 1..--replicas entrypoints started together on this one
   machine, as a scale-up whose pods share a node's CPUs.
3. Fan-out: one `triton-warmup` call with a -u per running replica re-warms
   them all with a changed plan (every config changes, every model reloads).
4. The Deployment's readiness probe command, timed on a ready pod.

Writes replica_benchmark.md and .json to --output-dir (default bench/results).
"""

import argparse
import contextlib
import json
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import yaml

from bench.measure import PROJECT_ROOT, EXAMPLE_MODELS, backend_line, run_record, copy_repository
from bench.report import linear_fit, table, write_results

from triton_warmup.embedded import container as local_container
from triton_warmup.embedded.container import LocalContainer

# Start plus up to 3 x 256 samples, on a 2-CPU machine shared by three replicas.
READY_TIMEOUT_S = 600
PROBE_RUNS = 5
_LOADING = re.compile(r"warmup_helper: loading '(?P<model>[^']+)' with (?P<samples>\d+) warmup samples")
_READY = re.compile(r"warmup_helper: '(?P<model>[^']+)' READY after (?P<seconds>[\d.]+) s")
POD_READY_LINE = "warmup_helper: warmed at start:"
_WARMED_AT_START = re.compile(
    r"warmed at start: (?P<ready>\d+) of (?P<models>\d+) model\(s\) READY in (?P<seconds>[\d.]+) s")
SERVER_UP_LINE = "successfully loaded 'warmup_helper'"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[1, 4, 16, 64],
                        help="Largest group size of each plan size measured. Default: 1 4 16 64.")
    parser.add_argument("--repeats", type=int, default=2, help="Fresh replicas per plan size. Default is 2.")
    parser.add_argument("--replicas", type=int, default=3,
                        help="Most replicas started at once (and warmed by one fan-out call). Default is 3.")
    parser.add_argument("--smoke", action="store_true", help="A short run for the test suite.")
    parser.add_argument("--note", default="",
                        help="What else ran on the machine meanwhile, or anything else a reader of the results "
                        "should know; written under their header. Default is none.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    if args.smoke:
        args.group_sizes, args.repeats, args.replicas = [1, 2], 1, 2
    return args


def plan_file(folder: pathlib.Path, group_max: int) -> pathlib.Path:
    path = folder / f"plan-g{group_max}.yaml"
    document = {"mode": "load", "defaults": {"group_size_max": group_max, "count": 3},
                "models": {model: {} for model in EXAMPLE_MODELS}}
    path.write_text(yaml.safe_dump(document))
    return path


def configmap_plan(folder: pathlib.Path, count: Optional[int] = None) -> pathlib.Path:
    """The plan the Kubernetes manifests deploy; with ``count``, that plan
    with another count (every config changes, so every model reloads)."""
    _, text = local_container.configmap_plan()
    document = yaml.safe_load(text)
    if count is not None:
        document["defaults"]["count"] = count
    path = folder / f"configmap-plan{'' if count is None else f'-c{count}'}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


class Replicas:
    """Entrypoint runs, each on its own copy of the repository; all stopped at the end."""

    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir
        self.template = copy_repository(workdir / "template")
        self.stack = contextlib.ExitStack()
        self.count = 0

    def start(self, plan: pathlib.Path) -> LocalContainer:
        self.count += 1
        folder = self.workdir / f"replica-{self.count}"
        shutil.copytree(self.template, folder / "model_repository")
        return self.stack.enter_context(LocalContainer(folder / "model_repository", folder, plan))

    def stop_all(self) -> None:
        self.stack.close()


def wait_until_warm(container: LocalContainer) -> None:
    """Wait for the helper's start summary; a model it did not warm ends the benchmark."""
    container.wait_for_line(POD_READY_LINE, READY_TIMEOUT_S)
    line = next(line for _, line in container.lines if POD_READY_LINE in line)
    summary = _WARMED_AT_START.search(line)
    if summary is None or summary["ready"] != summary["models"]:
        raise RuntimeError(f"the start warmup did not warm every model: {line}")


def check_readiness_probe(container: LocalContainer) -> None:
    """The Deployment's readiness probe passes on a pod the start summary
    calls warm (run after the timing, so its Python start costs the
    replicas still warming nothing)."""
    command = local_container.probe_command("readinessProbe", container.repository, container.http_port)
    probe = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        raise RuntimeError(f"the readiness probe failed on a warm pod: {probe.stdout}{probe.stderr}")


def timeline(container: LocalContainer) -> Dict:
    """What the run's output says happened, in seconds from its start."""
    samples, load_s, start_warmup_s = {}, {}, None
    for _, line in container.lines:
        if match := _LOADING.search(line):
            samples[match["model"]] = int(match["samples"])
        if match := _READY.search(line):
            load_s[match["model"]] = float(match["seconds"])
        if match := _WARMED_AT_START.search(line):
            start_warmup_s = float(match["seconds"])
    return {
        "server_up_s": container.seconds_until(SERVER_UP_LINE),
        "pod_ready_s": container.seconds_until(POD_READY_LINE),
        # The helper's own figure: from its thread's start to the last model READY.
        "start_warmup_s": start_warmup_s,
        "samples": sum(samples.values()),
        "samples_per_model": samples,
        "load_s": load_s,
    }


def measure_plan_sizes(replicas: Replicas, args) -> Dict:
    rows = []
    for group_max in args.group_sizes:
        plan = plan_file(replicas.workdir, group_max)
        for repeat in range(args.repeats):
            container = replicas.start(plan)
            wait_until_warm(container)
            check_readiness_probe(container)
            row = {"group_size_max": group_max, "repeat": repeat, **timeline(container)}
            rows.append(row)
            print(f"plan g1..{group_max}: {row['samples']} samples, pod ready after {row['pod_ready_s']:.2f} s "
                  f"(server up {row['server_up_s']:.2f} s)", flush=True)
            container.stop()
    fit = linear_fit([row["samples"] for row in rows], [row["pod_ready_s"] for row in rows])
    return {"runs": rows, "fit": fit}


def measure_probe(container: LocalContainer) -> Dict:
    command = local_container.probe_command("readinessProbe", container.repository, container.http_port)
    walls = []
    for _ in range(PROBE_RUNS):
        started = time.monotonic()
        finished = subprocess.run(command, capture_output=True, text=True, timeout=60)
        walls.append(time.monotonic() - started)
        if finished.returncode != 0:
            raise RuntimeError(f"the readiness probe failed on a ready pod: {finished.stderr}")
    return {"runs": len(walls), "median_s": statistics.median(walls), "max_s": max(walls),
            "period_s": local_container.deployment_container()["readinessProbe"]["periodSeconds"]}


def fan_out(containers: List[LocalContainer], plan: pathlib.Path) -> Dict:
    urls = [word for container in containers for word in ("-u", container.http_url)]
    started = time.monotonic()
    finished = subprocess.run([str(pathlib.Path(sys.executable).parent / "triton-warmup"), *urls, "--plan", str(plan),
                               "--json"], capture_output=True, text=True, timeout=READY_TIMEOUT_S)
    wall = time.monotonic() - started
    if finished.returncode != 0:
        raise RuntimeError(f"fan-out failed ({finished.returncode}): {finished.stderr[-3000:]}")
    answer = json.loads(finished.stdout)
    # One -u prints the helper's report itself; several print one entry each.
    servers = answer["servers"] if "servers" in answer else [{"seconds": wall, "report": answer}]
    return {"servers": len(containers), "wall_s": wall,
            "per_server_s": [server["seconds"] for server in servers],
            "reloaded": sum(1 for server in servers for model in server["report"]["models"]
                            if model["config_changed"])}


def measure_together(replicas: Replicas, args) -> Dict:
    """1..N replicas started at once, then fan-out re-warms of the running ones."""
    plan = configmap_plan(replicas.workdir)
    together = []
    for count in range(1, args.replicas + 1):
        containers = [replicas.start(plan) for _ in range(count)]
        for container in containers:
            wait_until_warm(container)
        for container in containers:
            check_readiness_probe(container)
        ready = [timeline(container)["pod_ready_s"] for container in containers]
        together.append({"replicas": count, "pod_ready_s": ready, "samples": timeline(containers[0])["samples"]})
        print(f"{count} replica(s) at once: pod ready after {', '.join(f'{s:.2f}' for s in ready)} s", flush=True)
        if count < args.replicas:
            for container in containers:
                container.stop()
    # The last group still runs: re-warm it with changed plans by fan-out,
    # every replica, then the first alone.
    probe = measure_probe(containers[0])
    fan_outs = []
    for count_runs, subset in ((2, containers), (1, containers[:1])):
        changed = configmap_plan(replicas.workdir, count_runs)
        fan_outs.append(fan_out(subset, changed))
        print(f"fan-out to {len(subset)} replica(s): {fan_outs[-1]['wall_s']:.2f} s", flush=True)
    return {"plan": plan.name, "together": together, "fan_out": fan_outs, "probe": probe}


def markdown(results: Dict) -> str:
    parts = [f"# Replica benchmark\n\n`{results['command']}` on {results['machine']}, {results['date']}. "
             "Every time is from the start of `deploy/entrypoint.sh` (what the container runs), on the embedded "
             "Triton, with plans of the three example models as the helper's start plan (`warm_on_start`): the "
             "server warms them by itself, no client sends anything. A pod is ready at the helper's `warmed at "
             "start: N of N model(s) READY` line, every planned model READY (the readiness probe is run then "
             "and passes).\n", backend_line(results["backend"])]
    if results["settings"].get("note"):
        parts.append(f"Note: {results['settings']['note']}\n")
    sizes = results["plan_sizes"]
    parts.append("## Time to a ready pod vs plan size (one replica at a time)\n")
    rows = []
    for group_max in sorted({run["group_size_max"] for run in sizes["runs"]}):
        runs = [run for run in sizes["runs"] if run["group_size_max"] == group_max]
        loads = [seconds for run in runs for seconds in run["load_s"].values()]
        rows.append((f"1..{group_max}", runs[0]["samples"], len(runs),
                     f"{statistics.median(run['server_up_s'] for run in runs):.2f}",
                     f"{min(loads):.2f}-{max(loads):.2f}",
                     f"{statistics.median(run['start_warmup_s'] for run in runs):.2f}",
                     f"**{statistics.median(run['pod_ready_s'] for run in runs):.2f}**"))
    parts.append(table(("group sizes", "samples (3 models)", "runs", "server up s", "per-model load s",
                        "start warmup s (helper)", "pod ready s (median)"), rows))
    fit = sizes["fit"]
    parts.append(f"\nLeast squares over {len(sizes['runs'])} runs: pod ready = {fit['intercept_s']:.2f} s + "
                 f"{fit['per_sample_s'] * 1000:.2f} ms x samples (R^2 {fit['r_squared']:.3f}). The intercept is "
                 "the server start plus one load per model, each after its preflight; up to 4 models "
                 "load at once (`max_parallel_loads`). The helper's start warmup begins once the server's "
                 "start-up is over (it polls `/v2/health/live` every 0.1 s).\n")
    together = results["together"]
    parts.append("## Replicas started at once on this machine (the ConfigMap's plan)\n")
    parts.append(table(("replicas", "samples each", "pod ready s, each", "slowest s"),
                       [(row["replicas"], row["samples"], ", ".join(f"{s:.2f}" for s in row["pod_ready_s"]),
                         f"{max(row['pod_ready_s']):.2f}") for row in together["together"]]))
    parts.append("\nThey share this machine's CPUs, as pods on one node do; on separate nodes each would take "
                 "the one-replica time.\n")
    parts.append("## Re-warming running replicas with one `triton-warmup` call (fan-out)\n")
    parts.append("The ConfigMap's plan with count 2, to every running replica, then with count 1 to the first "
                 "alone: every config changes, so every model reloads.\n")
    parts.append(table(("servers", "models reloaded", "call s", "per server s"),
                       [(row["servers"], row["reloaded"], f"{row['wall_s']:.2f}",
                         ", ".join(f"{s:.2f}" for s in row["per_server_s"])) for row in together["fan_out"]]))
    probe = together["probe"]
    parts.append(f"\n## The readiness probe\n\nThe Deployment's readiness probe command on a ready pod: median "
                 f"{probe['median_s']:.2f} s, at most {probe['max_s']:.2f} s over {probe['runs']} runs (a Python "
                 f"start and one repository-index call), every {probe['period_s']} s.\n")
    parts.append(f"\nBenchmark wall time: {results['benchmark_seconds']:.0f} s.\n")
    return "\n".join(parts)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="replica-bench-"))
    results = {
        **run_record("bench.replica_benchmark"),
        "settings": {key: (str(value) if isinstance(value, pathlib.Path) else value) for key, value in vars(args).items()},
    }
    replicas = Replicas(workdir)
    try:
        results["plan_sizes"] = measure_plan_sizes(replicas, args)
        results["together"] = measure_together(replicas, args)
    finally:
        replicas.stop_all()
    shutil.rmtree(workdir, ignore_errors=True)
    results["benchmark_seconds"] = time.monotonic() - started
    write_results(args.output_dir, "replica_benchmark", results, markdown(results))
    print(f"results in {args.output_dir} ({results['benchmark_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
