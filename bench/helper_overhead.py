"""Where the helper's own milliseconds go on a restart, and how long its own
load takes against a trivial Python model.

**The split.** Per repository size (48 and 96 models, the scale benchmark's
repositories: copies of the example models, 32 samples each), a first
start through the helper rewrites the configs and leaves the preflight
records; then, on a fresh server, the helper's own code for the same request
(``plan_jobs`` and ``run_jobs`` with the HTTP model control, the preflight
with the server's identity, a re-warm) runs in this process under cProfile,
one model at a time so that the profile is the work and not the threads'
waits (``run_job``, as ``run_jobs`` calls it for each model). The
cumulative time of each part of a job, per model: planning,
the model's lock, the replan under it, the preflight record, the thread-count
check, the write and commit, the readiness probe, the report, and Triton's
load (its HTTP call, which is Triton's own time). It also counts fsyncs and
files written: a restart where nothing changed must write none. cProfile
slows Python down (about 2x here), so the absolute figures are upper
bounds; the split is what they are for.

**The helper's load.** Fresh servers that load only ``warmup_helper`` or
only a trivial Python model, alternating: from Triton's "loading" line to
"successfully loaded", and its two parts (the model's stub, which imports
``model.py`` to look for ``auto_complete_config``, and the instance's,
which imports it again and runs ``initialize``). Verbose log timestamps.

**A PyTorch 2 restart.** compiled-encoder warmed once through the helper
(group sizes 1..8 x batch sizes 1, 2, 4: a first start, which fills
Inductor's cache and the preflight record); then pairs on that repository
and cache, each on a fresh server, the order alternating: the restart as
the docs recommend (``warm_on_start`` naming the same plan: the helper
warms it once the server is up) against Triton alone (``--load-model=compiled-encoder``, the
rewritten config, no helper). Each from the server process's start to the
model READY (``/v2/models/.../ready`` polled every 20 ms). Three ways
(``PYTORCH2_WAYS``): Triton's default flags on both, auto-complete off on
both, and the launchers' default (auto-complete off where no model needs
it) against Triton alone with its default flags.
"""

import argparse
import cProfile
import datetime
import os
import pathlib
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional

from bench.measure import PROJECT_ROOT, Session, results_header, run_record
from bench.report import table, write_results
from bench.scale_benchmark import BATCH_SIZES, GROUP_MAX, scaled_repository
from triton_warmup import HELPER_MODEL
from triton_warmup.client.warm import shape_arrays
from triton_warmup.embedded import AUTO_COMPLETE_AUTO, EmbeddedTriton, free_port
from triton_warmup.helper.job_planning import PlanSettings, plan_jobs
from triton_warmup.helper.load_jobs import build_report, not_ready_models, run_job
from triton_warmup.helper.model_loading import HttpModelControl, server_argv
from triton_warmup.helper.preflight import Preflight
from triton_warmup.helper.preflight_record import identity_from_argv
from triton_warmup.helper.request import parse_request
from triton_warmup.helper.rewarm import Rewarm
from triton_warmup.threads import Machine

SIZES = (48, 96)
LOAD_TRIALS = 5
PYTORCH2_PAIRS = 3
PYTORCH2_MODEL = "compiled-encoder"
# The pytorch2 benchmark's plan.
PYTORCH2_GROUP_MAX = 8
PYTORCH2_BATCH_SIZES = [1, 2, 4]
PYTORCH2_FEATURE_DIM = 64
# Each part of a job: (label, the functions whose cumulative time it is).
# Nested parts are not subtracted: replan runs inside the lock, the
# preflight's record read inside the preflight.
PARTS = (
    ("planning, before the first load", ("job_planning.py", "plan_jobs")),
    ("the model's lock (taken and released)", ("repository_guard.py", "model_lock")),
    ("replan under the lock", ("job_planning.py", "<lambda>")),
    ("preflight (the record's fingerprint and check)", ("preflight.py", "check")),
    ("  of it: fingerprint", ("preflight_record.py", "fingerprint")),
    ("  of it: record read", ("preflight_record.py", "known_good")),
    ("  of it: record write (skipped when it holds everything)", ("preflight_record.py", "write_record")),
    ("thread-count check", ("threads.py", "mismatch")),
    ("write (or not) and commit", ("load_jobs.py", "_write_or_fall_back")),
    ("  commit (parsed-config cache)", ("config_rewrite.py", "commit")),
    ("readiness: one repository listing (HTTP) for all", ("load_jobs.py", "not_ready_models")),
    ("readiness probes (HTTP), where the listing could not tell", ("model_loading.py", "is_ready")),
    ("the report", ("load_jobs.py", "build_report")),
    ("Triton's load (HTTP, Triton's own time)", ("model_loading.py", "load")),
)
TRIVIAL_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        pass

    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[]) for _ in requests]
'''


def serve(repository: pathlib.Path, workdir: pathlib.Path, **options) -> EmbeddedTriton:
    return EmbeddedTriton(repository, workdir, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          **options)


def _cumulative(stats: pstats.Stats, file_suffix: str, function: str) -> float:
    total = 0.0
    for (filename, _, name), (_, _, _, cumulative, _) in stats.stats.items():
        if filename.endswith(file_suffix) and name == function:
            total += cumulative
    return total


def _server_environment(pid: int) -> Dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as environ:
        items = environ.read().decode("utf-8", "replace").split("\0")
    return dict(item.split("=", 1) for item in items if "=" in item)


def split_of_a_restart(workdir: pathlib.Path, size: int) -> Dict:
    repository = workdir / "model_repository"
    names = scaled_repository(repository, size)
    arrays = shape_arrays(names, 1, GROUP_MAX, batch_sizes=BATCH_SIZES)
    with serve(repository, workdir / "first") as server:
        session = Session(server.http_url, repository, server.log_path)
        try:
            session.trigger(names, GROUP_MAX, BATCH_SIZES)
        finally:
            session.close()
    files_before = {path: path.stat().st_mtime_ns for path in repository.rglob("*") if path.is_file()}
    fsyncs = []
    real_fsync = os.fsync
    with serve(repository, workdir / "restart") as server:
        # What the helper's stub knows: the server's command line and environment.
        argv = server_argv(server.pid)
        settings = PlanSettings(machine=Machine.here(_server_environment(server.pid)))
        preflight = Preflight(infer=None, server_identity=identity_from_argv(argv), server_started_at=time.time() - 60)
        control = HttpModelControl(server.http_url)
        request = parse_request(arrays, HELPER_MODEL)
        profile = cProfile.Profile()
        os.fsync = lambda fd: fsyncs.append(fd) or real_fsync(fd)
        started = time.perf_counter()
        try:
            profile.enable()
            plan = plan_jobs(repository, request, settings)
            # run_jobs' own loop, one model at a time on this thread (cProfile
            # sees only the thread that turned it on).
            rewarm = Rewarm(infer=None)
            not_ready = not_ready_models(control, [job.name for job in plan.jobs])
            entries = [run_job(job, control, 600, preflight, rewarm, not_ready_hint=job.name in not_ready)
                       for job in plan.jobs]
            build_report(entries)
            profile.disable()
        finally:
            os.fsync = real_fsync
        seconds = time.perf_counter() - started
    files_after = {path: path.stat().st_mtime_ns for path in repository.rglob("*") if path.is_file()}
    stats = pstats.Stats(profile)
    parts = {label: _cumulative(stats, *where) * 1000 / size for label, where in PARTS}
    load_ms = parts["Triton's load (HTTP, Triton's own time)"]
    return {
        "size": size,
        "ready": sum(entry.ready for entry in entries),
        "seconds": seconds,
        "ms_per_model": parts,
        "helper_ms_per_model": seconds * 1000 / size - load_ms,
        "report_helper_ms_per_model": 1000 * sum(entry.timings.helper_s for entry in entries) / size,
        "fsyncs": len(fsyncs),
        "files_written": sorted(str(path.relative_to(repository)) for path, mtime in files_after.items()
                                if files_before.get(path) != mtime),
    }


def _log_time(line: str) -> float:
    return datetime.datetime.strptime(line[1:5] + " " + line[6:21], "%m%d %H:%M:%S.%f").timestamp()


def helper_load_times(workdir: pathlib.Path, trials: int, flags: List[str]) -> Dict[str, List[Dict]]:
    repository = workdir / ("model_repository-flags" if flags else "model_repository")
    shutil.copytree(PROJECT_ROOT / "model_repository" / HELPER_MODEL, repository / HELPER_MODEL,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (repository / "trivial" / "1").mkdir(parents=True)
    (repository / "trivial" / "1" / "model.py").write_text(TRIVIAL_MODEL)
    (repository / "trivial" / "config.pbtxt").write_text(
        'name: "trivial"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [{ name: "IN", data_type: TYPE_FP32, dims: [1] }]\n'
        'output [{ name: "OUT", data_type: TYPE_FP32, dims: [1] }]\n'
        'instance_group [{ count: 1, kind: KIND_CPU }]\n'
    )
    times: Dict[str, List[Dict]] = {"trivial": [], HELPER_MODEL: []}
    for trial in range(trials):
        order = ("trivial", HELPER_MODEL) if trial % 2 == 0 else (HELPER_MODEL, "trivial")
        for model in order:
            server = serve(repository, workdir / f"{model}-{trial}{'-flags' if flags else ''}", log_verbose=1,
                           load_models=[model], extra_args=flags)
            with server:
                lines = server.log_text().splitlines()
            loading = _log_time(next(line for line in lines if f'"loading: {model}:' in line))
            instance = _log_time(next(line for line in lines
                                      if "TRITONBACKEND_ModelInstanceInitialize:" in line and model in line))
            loaded = _log_time(next(line for line in lines if f"successfully loaded '{model}'" in line))
            times[model].append({"model_stub_s": instance - loading, "instance_s": loaded - instance,
                                 "total_s": loaded - loading})
    return times


def _until_ready(server: EmbeddedTriton, model: str, started: float, timeout_s: float = 600) -> float:
    """Seconds from ``started`` until ``model`` answers READY."""
    import tritonclient.http as httpclient  # noqa: PLC0415

    with httpclient.InferenceServerClient(server.http_url) as client:
        while time.perf_counter() - started < timeout_s:
            try:
                if client.is_model_ready(model):
                    return time.perf_counter() - started
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.02)
    raise TimeoutError(f"{model} not READY within {timeout_s} s")


# Triton's Python backend starts a stub process per Python model to ask its
# auto_complete_config, before the instance's stub: about 1.25 s here, for
# a trivial model as for the helper. Triton's flag skips it.
NO_AUTO_COMPLETE = "--disable-auto-complete-config"


def pytorch2_restart_pairs(workdir: pathlib.Path, pairs: int) -> Dict:
    from bench.measure import copy_repository  # noqa: PLC0415
    from triton_warmup.client.warm import request_warmup  # noqa: PLC0415

    repository = copy_repository(workdir / "model_repository")
    for name in [path.name for path in repository.iterdir()]:
        if name not in (PYTORCH2_MODEL, HELPER_MODEL):
            shutil.rmtree(repository / name)
    cache = workdir / "inductor-cache"
    environment = {"TORCHINDUCTOR_CACHE_DIR": str(cache)}
    arrays = shape_arrays([PYTORCH2_MODEL], 1, PYTORCH2_GROUP_MAX, [PYTORCH2_FEATURE_DIM], PYTORCH2_BATCH_SIZES)
    with serve(repository, workdir / "first", extra_env=environment) as server:
        session = Session(server.http_url, repository, server.log_path)
        try:
            request_warmup(session.client, "http", arrays, timeout_s=900)
        finally:
            session.close()
    # The restart as the docs recommend it: the helper warms its plan at start.
    from triton_warmup.client.install_helper import set_warm_on_start  # noqa: PLC0415

    plan_file = workdir / "start.yaml"
    plan_file.write_text(
        f"models:\n  {PYTORCH2_MODEL}: {{group_size_max: {PYTORCH2_GROUP_MAX}, feature_dim: {PYTORCH2_FEATURE_DIM}, "
        f"batch_sizes: {PYTORCH2_BATCH_SIZES}}}\n"
    )
    set_warm_on_start(repository / HELPER_MODEL, str(plan_file))
    return {label: _pairs(workdir / f"pairs-{index}", repository, environment, pairs, helper_options, alone_flags)
            for index, (label, helper_options, alone_flags) in enumerate(PYTORCH2_WAYS)}


# The PyTorch 2 restart's comparisons: (label, the helper's server options,
# Triton alone's flags). The launchers' way is what triton-warmup-serve and
# deploy/entrypoint.sh do by default: auto-complete off where no model needs
# it, as here; Triton alone keeps its own default there, as a user without
# this project would run it.
PYTORCH2_WAYS = (
    ("default flags", {}, []),
    (f"`{NO_AUTO_COMPLETE}` on both", {"extra_args": [NO_AUTO_COMPLETE]}, [NO_AUTO_COMPLETE]),
    ("the launchers' choice against Triton's default", {"auto_complete": AUTO_COMPLETE_AUTO}, []),
)


def _pairs(workdir: pathlib.Path, repository: pathlib.Path, environment: Dict[str, str], pairs: int,
           helper_options: Dict, alone_flags: List[str]) -> Dict:
    runs: Dict[str, List[float]] = {"through the helper": [], "Triton alone": []}
    flags_seen = {}
    for pair in range(pairs):
        order = ("through the helper", "Triton alone") if pair % 2 == 0 else ("Triton alone", "through the helper")
        for way in order:
            alone = way == "Triton alone"
            folder = workdir / f"{'alone' if alone else 'helper'}-{pair}"
            options = {"extra_args": alone_flags} if alone else helper_options
            server = serve(repository, folder, extra_env=environment,
                           load_models=[PYTORCH2_MODEL] if alone else [HELPER_MODEL], **options)
            server.start()
            # start() assembles the backend folder first; the process starts as it returns.
            started = time.perf_counter()
            flags_seen[way] = NO_AUTO_COMPLETE in server.argv
            try:
                runs[way].append(_until_ready(server, PYTORCH2_MODEL, started))
            finally:
                server.stop()
    ratios = [helper / alone for helper, alone in zip(runs["through the helper"], runs["Triton alone"])]
    return {"runs": runs, "ratios": ratios, "median_ratio": statistics.median(ratios),
            "auto_complete_off": flags_seen}


def _median(runs: List[Dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def markdown(results: Dict) -> str:
    parts = results_header("The helper's own time on a restart, and its own load", results)
    parts.append(
        f"\nA restart of the scale benchmark's repositories (copies of the example models, group sizes 1..{GROUP_MAX} "
        f"x batch sizes {BATCH_SIZES}), after a first start through the helper: the helper's code for the same "
        "request in this process under cProfile, one model at a time, against a fresh server. Cumulative "
        "milliseconds per model; nested rows are parts of the row above them. cProfile roughly doubles Python's "
        "time, so these are upper bounds.\n"
    )
    header = ["part"] + [f"{run['size']} models, ms per model" for run in results["split"]]
    rows = []
    for label, _ in PARTS:
        rows.append([label] + [f"{run['ms_per_model'][label]:.2f}" for run in results["split"]])
    rows.append(["**the helper's own, all of it** (wall time less Triton's loads)"]
                + [f"**{run['helper_ms_per_model']:.2f}**" for run in results["split"]])
    rows.append(["the report's `helper_s` (lock, replan, record, write, probe; profiled)"]
                + [f"{run['report_helper_ms_per_model']:.2f}" for run in results["split"]])
    rows.append(["fsyncs / files written"]
                + [f"{run['fsyncs']} / {len(run['files_written'])}" for run in results["split"]])
    parts.append(table(header, rows))
    parts.append(
        "\n## The helper's own load against a trivial Python model\n\nFresh servers, each loading one of them, "
        "alternating; seconds from Triton's `loading` line to `successfully loaded`, medians. With Triton's default "
        f"flags, and with `{NO_AUTO_COMPLETE}`, which skips the stub each Python model gets to ask its "
        "`auto_complete_config`. Target: within 0.2 s of the trivial model.\n"
    )
    rows = []
    for flags, load in results["helper_load"].items():
        for model in ("trivial", HELPER_MODEL):
            rows.append((flags, model, f"{_median(load[model], 'model_stub_s'):.3f}",
                         f"{_median(load[model], 'instance_s'):.3f}", f"{_median(load[model], 'total_s'):.3f}",
                         ", ".join(f"{run['total_s']:.3f}" for run in load[model])))
        gap = _median(load[HELPER_MODEL], "total_s") - _median(load["trivial"], "total_s")
        rows.append((flags, "**the helper's gap**", "", "", f"**{gap:+.3f}**", ""))
    parts.append(table(("flags", "model", "model's stub s", "instance's stub and initialize s", "total s", "runs"),
                       rows))
    pytorch2 = results.get("pytorch2")
    if pytorch2:
        parts.append(
            f"\n## A PyTorch 2 restart through the helper against Triton alone\n\n{PYTORCH2_MODEL}, warmed once "
            f"(group sizes 1..{PYTORCH2_GROUP_MAX} x batch sizes {PYTORCH2_BATCH_SIZES}); then pairs on that "
            "repository and Inductor cache, fresh servers, the order alternating; seconds from the server's start "
            "to the model READY; through the helper with `warm_on_start` naming the same plan. With Triton's "
            f"default flags, with `{NO_AUTO_COMPLETE}` on both, and the way `triton-warmup-serve` and "
            "`deploy/entrypoint.sh` start the server by default (auto-complete off because no model of this "
            "repository needs it; triton_warmup/auto_complete.py) against Triton alone with its default flags. "
            "Target: 1.15x.\n"
        )
        rows = []
        for flags, figures in pytorch2.items():
            off = figures.get("auto_complete_off", {})
            flags_used = (f"helper {'off' if off.get('through the helper') else 'on'}, "
                          f"alone {'off' if off.get('Triton alone') else 'on'}") if off else ""
            for pair, (helper, alone, ratio) in enumerate(zip(figures["runs"]["through the helper"],
                                                             figures["runs"]["Triton alone"], figures["ratios"])):
                rows.append((flags, flags_used if pair == 0 else "", pair + 1, f"{helper:.2f}", f"{alone:.2f}",
                             f"{ratio:.3f}x"))
            rows.append((flags, "", "**median**", "", "", f"**{figures['median_ratio']:.3f}x**"))
        parts.append(table(("way", "auto-complete", "pair", "through the helper s", "Triton alone s", "ratio"), rows))
    return "\n".join(parts) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES),
                        help=f"Models per repository. Default is {' '.join(map(str, SIZES))}.")
    parser.add_argument("--load-trials", type=int, default=LOAD_TRIALS,
                        help=f"Loads of each of the helper and the trivial model. Default is {LOAD_TRIALS}.")
    parser.add_argument("--pytorch2-pairs", type=int, default=PYTORCH2_PAIRS,
                        help=f"PyTorch 2 restart pairs; 0 leaves them out. Default is {PYTORCH2_PAIRS}.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    results = {**run_record("bench.helper_overhead"), "split": []}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="helper-overhead-"))
    try:
        for size in args.sizes:
            run = split_of_a_restart(workdir / f"split-{size}", size)
            results["split"].append(run)
            print(f"{size} models: the helper's own {run['helper_ms_per_model']:.2f} ms per model (profiled), "
                  f"{run['fsyncs']} fsyncs, {len(run['files_written'])} files written", flush=True)
        results["helper_load"] = {
            flags or "default flags": helper_load_times(workdir / "load", args.load_trials, [flags] if flags else [])
            for flags in ("", NO_AUTO_COMPLETE)
        }
        if args.pytorch2_pairs:
            results["pytorch2"] = pytorch2_restart_pairs(workdir / "pytorch2", args.pytorch2_pairs)
            print("PyTorch 2 restart: " + ", ".join(f"{flags} {figures['median_ratio']:.3f}x Triton alone"
                                                   for flags, figures in results["pytorch2"].items()), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write_results(args.output_dir, "helper_overhead", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
