"""Time to READY of a whole repository, on a first start and on a restart,
against Triton's own loads of the same configs.

Repositories: N copies of the example models (seven in eight model-v1..v3,
one in eight text-encoder), every one planned with group sizes 1..8 x batch
sizes 1, 2, 4, 8 (32 samples); and one large model (a TorchScript stack of
Linear(1024, 1024) layers, 256 MiB by default) planned with group sizes 1..8
at batch size 1. Per trial, each on a fresh tritonserver (only the helper
loaded at start):

* **first start**: one `triton-warmup` request for every model, on a fresh
  copy of the repository (configs not yet rewritten, no preflight record);
* **restart**: the same request again on that repository, now rewritten,
  with the preflight record the first start left (what a restart or a new
  replica pays);
* **Triton, 1 at a time** and **Triton, 4 at once**: the rewritten configs
  loaded through the Model Loading API by a plain client, no helper
  involved: the floor any warmup through Triton's `model_warmup` pays.

Within a trial the first start runs first (the others load what it wrote);
the other three take turns in order from trial to trial. Times are from the
request (or the first load) to every model READY, by the client, medians of
the trials, and per trial as ratios to that trial's best Triton run. For the
helper's runs the report splits each model's time into the preflight,
Triton's load with its warmup and the helper's own time (summed over the
models), and gives the planning before the first load; the helper's stub
process gives its peak memory (VmHWM).

The restart target is 5%, and fresh servers differ by more than that: the
same Triton loads took 10.8-14.6 s over ten fresh servers here. So in each
repository's last trial, after the four runs, --restart-pairs more pairs of
a restart and Triton's 4-at-once loads run on that rewritten repository,
each on a fresh server, the pair's order alternating; the median of the
pairs' ratios says what the restart costs over Triton's own loads.

Once per repository of example models, `triton-warmup --all` itself runs
on a fresh server on the rewritten repository, its output not a terminal:
how many lines its progress printed and its own peak memory.

Targets (issue: time to READY at scale): the first start within 1.2x of the
best of Triton's own loads, a restart within 1.05x.
"""

import argparse
import concurrent.futures
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import tritonclient.http as httpclient
from google.protobuf import text_format

from bench.measure import EXAMPLE_MODELS, PROJECT_ROOT, REQUEST_TIMEOUT_S, TEXT_ENCODER, Session, copy_repository
from bench.measure import helper_stub, memory_kib, results_header, run_record
from bench.preflight_cost import LAYER_MIB, MODEL as LARGE_MODEL, write_model
from bench.report import table, write_results
from triton_warmup import HELPER_MODEL
from triton_warmup.embedded import EmbeddedTriton, free_port
from triton_warmup.helper.config_rewrite import read_config

GROUP_MAX = 8
BATCH_SIZES = [1, 2, 4, 8]
# The large model takes one row per request (max_batch_size 1).
LARGE_BATCH_SIZES = [1]
CONDITIONS = ("first start", "restart", "Triton, 1 at a time", "Triton, 4 at once")
HELPER_RUNS = ("first start", "restart")
PAIRED = ("restart", "Triton, 4 at once")

# The client's own peak memory (VmHWM), read in its process as it ends;
# not ru_maxrss, which a process keeps from the one that forked it.
_CLIENT_WITH_PEAK = (
    "import sys\n"
    "from triton_warmup.client.warm import main\n"
    "code = main(sys.argv[1:])\n"
    "peak = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')][0]\n"
    "print('peak_kib', peak, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def scaled_repository(destination: pathlib.Path, size: int) -> List[str]:
    """``size`` copies of the example models beside the helper; their names."""
    examples = copy_repository(destination.parent / f"{destination.name}.examples")
    destination.mkdir(parents=True)
    shutil.copytree(examples / HELPER_MODEL, destination / HELPER_MODEL)
    names = []
    for index in range(size):
        base = TEXT_ENCODER if index % 8 == 7 else EXAMPLE_MODELS[index % 3]
        name = f"{base}-{index:03d}"
        shutil.copytree(examples / base, destination / name)
        _, config = read_config(destination / name)
        config.name = name
        (destination / name / "config.pbtxt").write_text(text_format.MessageToString(config))
        names.append(name)
    shutil.rmtree(examples)
    return names


def large_model_repository(destination: pathlib.Path, mib: int) -> List[str]:
    """The helper and one stack of ``mib`` MiB of weights."""
    repository = copy_repository(destination)
    for name in list(EXAMPLE_MODELS) + [TEXT_ENCODER]:
        shutil.rmtree(repository / name, ignore_errors=True)
    write_model(repository, max(1, round(mib / LAYER_MIB)))
    return [LARGE_MODEL]


def serve(repository: pathlib.Path, workdir: pathlib.Path) -> EmbeddedTriton:
    return EmbeddedTriton(repository, workdir, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())


def helper_run(repository: pathlib.Path, workdir: pathlib.Path, names: List[str], batch_sizes: List[int]) -> Dict:
    with serve(repository, workdir) as server:
        stub = helper_stub(server.pid)
        stub_before = memory_kib(stub)
        session = Session(server.http_url, repository, server.log_path)
        try:
            report = session.trigger(names, GROUP_MAX, batch_sizes)
        finally:
            session.close()
        stub_after = memory_kib(stub)
    entries = report["models"]

    def total(part: str) -> float:
        return sum(entry["timings"][part] for entry in entries)

    return {
        "seconds": report["client_seconds"],
        "plan_s": report["plan_s"],
        "preflight_s": total("preflight_s"),
        "load_s": total("load_s"),
        "helper_s": total("helper_s"),
        "scratch_copies": sum(1 for entry in entries if (entry["preflight"] or {}).get("how") == "scratch copy"),
        "recorded": sum(1 for entry in entries if (entry["preflight"] or {}).get("how") == "the preflight record"),
        "stub_peak_mib": stub_after["VmHWM"] / 1024,
        "stub_growth_mib": (stub_after["VmHWM"] - stub_before["VmRSS"]) / 1024,
    }


def triton_run(repository: pathlib.Path, workdir: pathlib.Path, names: List[str], at_once: int) -> Dict:
    with serve(repository, workdir) as server:
        def load(name: str) -> None:
            with httpclient.InferenceServerClient(
                server.http_url, connection_timeout=REQUEST_TIMEOUT_S, network_timeout=REQUEST_TIMEOUT_S
            ) as client:
                client.load_model(name)

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(at_once) as pool:
            list(pool.map(load, names))
        return {"seconds": time.perf_counter() - started}


def cli_run(repository: pathlib.Path, workdir: pathlib.Path, models: int) -> Dict:
    """``triton-warmup --all`` on the rewritten repository, output to a pipe."""
    with serve(repository, workdir) as server:
        started = time.perf_counter()
        finished = subprocess.run(
            [sys.executable, "-c", _CLIENT_WITH_PEAK, "-u", server.http_url.removeprefix("http://"), "--all",
             "--group-size-max", str(GROUP_MAX), "--batch-sizes", *map(str, BATCH_SIZES)],
            capture_output=True, text=True, timeout=REQUEST_TIMEOUT_S, cwd=PROJECT_ROOT,
        )
        seconds = time.perf_counter() - started
    if finished.returncode != 0:
        raise RuntimeError(f"triton-warmup --all exited {finished.returncode}: {finished.stderr[-2000:]}")
    lines = finished.stdout.splitlines()
    progress = [line for line in lines if line.startswith("[")]
    peak_kib = int(finished.stderr.split("peak_kib")[-1].split()[0])
    return {
        "models": models,
        "seconds": seconds,
        "progress_lines": len(progress),
        "last_progress_line": progress[-1] if progress else "",
        "client_peak_mib": peak_kib / 1024,
    }


def run_order(trial: int) -> List[str]:
    """The first start comes first: it rewrites the configs the other runs
    load. The other three take turns by trial, so that no condition always
    runs at the same point of a trial (after the same one)."""
    later = list(CONDITIONS[1:])
    shift = trial % len(later)
    return [CONDITIONS[0]] + later[shift:] + later[:shift]


def restart_pairs(run_condition: Dict, pairs: int) -> List[Dict[str, float]]:
    """``pairs`` pairs of a restart and Triton's 4-at-once loads, each on a
    fresh server, alternating which of the two goes first."""
    measured = []
    for pair in range(pairs):
        order = PAIRED if pair % 2 == 0 else PAIRED[::-1]
        seconds = {condition: run_condition[condition]()["seconds"] for condition in order}
        measured.append({"restart": seconds["restart"], "triton": seconds["Triton, 4 at once"]})
    return measured


def one_trial(workdir: pathlib.Path, repository_kind: str, with_cli: bool, trial: int = 0,
              pairs: int = 0) -> Dict[str, Dict]:
    repository = workdir / "model_repository"
    if repository_kind.endswith("MiB"):
        names = large_model_repository(repository, int(repository_kind.split()[0]))
        batch_sizes = LARGE_BATCH_SIZES
    else:
        names = scaled_repository(repository, int(repository_kind))
        batch_sizes = BATCH_SIZES
    run_condition = {
        "first start": lambda: helper_run(repository, workdir / "first", names, batch_sizes),
        "restart": lambda: helper_run(repository, workdir / "restart", names, batch_sizes),
        "Triton, 1 at a time": lambda: triton_run(repository, workdir / "triton-1", names, 1),
        "Triton, 4 at once": lambda: triton_run(repository, workdir / "triton-4", names, 4),
    }
    runs = {condition: run_condition[condition]() for condition in run_order(trial)}
    if pairs:
        runs["restart pairs"] = restart_pairs(run_condition, pairs)
    if with_cli:
        runs["triton-warmup --all"] = cli_run(repository, workdir / "cli", len(names))
    shutil.rmtree(workdir, ignore_errors=True)
    return runs


def _median(trials: List[Dict], condition: str, key: str) -> float:
    return statistics.median(trial[condition][key] for trial in trials)


def markdown(results: Dict) -> str:
    parts = results_header("Time to READY at scale: first start and restart against Triton's own loads", results)
    parts.append(
        f"\nRepositories: N copies of the example models (7 in 8 model-v1..v3, 1 in 8 text-encoder), each "
        f"planned with group sizes 1..{GROUP_MAX} x batch sizes {BATCH_SIZES} (32 samples); and one large "
        f"TorchScript model, planned with group sizes 1..{GROUP_MAX} at batch size 1. A fresh tritonserver per "
        "run; client time from the request (or first load) to every model READY; medians of "
        f"{results['settings']['trials']} trials. Within a trial the first start runs first (it rewrites the "
        "configs); the other three take turns in order from trial to trial.\n"
    )
    rows = []
    for kind, trials in results["repositories"].items():
        medians = {condition: _median(trials, condition, "seconds") for condition in CONDITIONS}
        best = min(medians["Triton, 1 at a time"], medians["Triton, 4 at once"])
        for condition in CONDITIONS:
            extra = ""
            if condition in HELPER_RUNS:
                extra = (f"{_median(trials, condition, 'scratch_copies'):.0f} scratch copies, "
                         f"{_median(trials, condition, 'recorded'):.0f} by the record")
            rows.append((kind, condition, f"{medians[condition]:.2f}", f"{medians[condition] / best:.2f}x", extra))
    parts.append(table(("repository", "run", "seconds", "vs Triton's best", "preflight"), rows))
    parts.append("\nTargets: first start within 1.2x of Triton's best, restart within 1.05x.\n")
    parts.append("\nPer trial, against the best of Triton's two runs of the same trial:\n")

    def ratios(trials: List[Dict], condition: str) -> str:
        return ", ".join(
            f"{trial[condition]['seconds'] / min(trial[c]['seconds'] for c in CONDITIONS[2:]):.2f}x" for trial in trials
        )

    for kind, trials in results["repositories"].items():
        parts.append(f"- {kind}: first start {ratios(trials, 'first start')}; restart {ratios(trials, 'restart')}")

    paired = {kind: trial["restart pairs"] for kind, trials in results["repositories"].items()
              for trial in trials if trial.get("restart pairs")}
    if paired:
        parts.append(
            "\n## Restart against Triton's 4-at-once loads, in pairs\n\nIn each repository's last trial, on its "
            "rewritten repository: pairs of a restart and Triton's 4-at-once loads, each on a fresh server, the "
            "pair's order alternating. A pair's ratio is the restart's seconds over Triton's.\n"
        )
        rows = []
        for kind, pairs in paired.items():
            ratios = [pair["restart"] / pair["triton"] for pair in pairs]
            restarts, tritons = [pair["restart"] for pair in pairs], [pair["triton"] for pair in pairs]
            rows.append((
                kind, len(pairs), f"{statistics.median(ratios):.2f}x", f"{min(ratios):.2f}-{max(ratios):.2f}x",
                f"{statistics.median(restarts):.2f} ({min(restarts):.2f}-{max(restarts):.2f})",
                f"{statistics.median(tritons):.2f} ({min(tritons):.2f}-{max(tritons):.2f})",
            ))
        parts.append(table(("repository", "pairs", "median ratio", "ratios", "restart s, median (range)",
                            "Triton, 4 at once s, median (range)"), rows))

    parts.append(
        "\n## Where the helper's time went\n\nFrom the helper's report, medians of the trials: the planning "
        "before the first load, and each model's time split into the preflight, Triton's load with its "
        "warmup and the helper's own time, summed over the models (up to 4 models load at once, so the sums "
        "exceed the wall time). Peak memory: the helper's stub process (VmHWM), and how much of it the "
        "request added.\n"
    )
    rows = []
    for kind, trials in results["repositories"].items():
        for condition in HELPER_RUNS:
            rows.append((
                kind, condition,
                *(f"{_median(trials, condition, key):.2f}" for key in ("plan_s", "preflight_s", "load_s", "helper_s")),
                f"{_median(trials, condition, 'stub_peak_mib'):.0f} (+{_median(trials, condition, 'stub_growth_mib'):.0f})",
            ))
    parts.append(table(
        ("repository", "run", "planning s", "preflight s (sum)", "Triton's load s (sum)", "helper's own s (sum)",
         "helper stub peak MiB"), rows))

    cli = [trial["triton-warmup --all"] for trials in results["repositories"].values() for trial in trials
           if "triton-warmup --all" in trial]
    if cli:
        parts.append(
            "\n## `triton-warmup --all`\n\nThe command itself on the rewritten repository, a fresh server, its "
            "output to a pipe (as in CI logs): its progress lines, its own peak memory (VmHWM) and its time "
            "from start to exit, Python's start included.\n"
        )
        parts.append(table(
            ("models", "seconds", "progress lines", "last progress line", "client peak MiB"),
            [(run["models"], f"{run['seconds']:.2f}", run["progress_lines"], f"`{run['last_progress_line']}`",
              f"{run['client_peak_mib']:.0f}") for run in cli],
        ))
    return "\n".join(parts) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 96], help="Models per repository. Default: 48 96.")
    parser.add_argument("--large-model-mib", type=int, default=256,
                        help="MiB of weights of the large model's repository; 0 leaves it out. Default is 256.")
    parser.add_argument("--trials", type=int, default=3, help="Trials per repository. Default is 3.")
    parser.add_argument("--restart-pairs", type=int, default=6,
                        help="Pairs of a restart and Triton's 4-at-once loads in each repository's last trial. "
                        "Default is 6.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    kinds = [str(size) for size in args.sizes] + ([f"{args.large_model_mib} MiB"] if args.large_model_mib else [])
    results = {**run_record("bench.scale_benchmark"),
               "settings": {"trials": args.trials, "restart_pairs": args.restart_pairs}, "repositories": {}}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="scale-benchmark-"))
    try:
        for kind in kinds:
            trials = results["repositories"].setdefault(kind, [])
            for trial in range(args.trials):
                last = trial == args.trials - 1
                runs = one_trial(workdir / f"{kind.replace(' ', '')}-{trial}", kind, last and not kind.endswith("MiB"),
                                 trial, args.restart_pairs if last else 0)
                trials.append(runs)
                print(f"{kind}, trial {trial + 1}: "
                      + ", ".join(f"{condition} {runs[condition]['seconds']:.2f} s" for condition in CONDITIONS),
                      flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write_results(args.output_dir, "scale_benchmark", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
