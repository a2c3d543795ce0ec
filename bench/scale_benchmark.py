"""Time to READY of a whole repository, on a first start and on a restart,
against Triton's own loads of the same configs.

A repository of N copies of the example models (seven in eight model-v1..v3,
one in eight text-encoder), every one planned with group sizes 1..8 x batch
sizes 1, 2, 4, 8 (32 samples). Per trial, each on a fresh tritonserver
(only the helper loaded at start):

* **first start**: one `triton-warmup` request for every model, on a fresh
  copy of the repository (configs not yet rewritten, no preflight record);
* **restart**: the same request again on that repository, now rewritten,
  with the preflight record the first start left (what a restart or a new
  replica pays);
* **Triton, 1 at a time** and **Triton, 4 at once**: the rewritten configs
  loaded through the Model Loading API by a plain client, no helper
  involved: the floor any warmup through Triton's `model_warmup` pays.

Times are from the request (or the first load) to every model READY, by the
client, medians of the trials. Targets (issue: time to READY at scale): the
first start within 1.2x of the best of Triton's own loads, a restart within 1.05x.
"""

import argparse
import concurrent.futures
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional

import tritonclient.http as httpclient
from google.protobuf import text_format

from bench.measure import EXAMPLE_MODELS, PROJECT_ROOT, REQUEST_TIMEOUT_S, TEXT_ENCODER, Session, copy_repository
from bench.measure import results_header, run_record
from bench.report import table, write_results
from triton_warmup import HELPER_MODEL
from triton_warmup.embedded import EmbeddedTriton, free_port
from triton_warmup.helper.config_rewrite import read_config

GROUP_MAX = 8
BATCH_SIZES = [1, 2, 4, 8]
CONDITIONS = ("first start", "restart", "Triton, 1 at a time", "Triton, 4 at once")


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


def serve(repository: pathlib.Path, workdir: pathlib.Path) -> EmbeddedTriton:
    return EmbeddedTriton(repository, workdir, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())


def helper_run(repository: pathlib.Path, workdir: pathlib.Path, names: List[str]) -> Dict:
    with serve(repository, workdir) as server:
        session = Session(server.http_url, repository, server.log_path)
        try:
            report = session.trigger(names, GROUP_MAX, BATCH_SIZES)
        finally:
            session.close()
    entries = report["models"]
    return {
        "seconds": report["client_seconds"],
        "scratch_copies": sum(1 for entry in entries if (entry["preflight"] or {}).get("how") == "scratch copy"),
        "recorded": sum(1 for entry in entries if (entry["preflight"] or {}).get("how") == "the preflight record"),
        "preflight_s": sum((entry["preflight"] or {}).get("seconds") or 0 for entry in entries),
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


def one_trial(workdir: pathlib.Path, size: int) -> Dict[str, Dict]:
    repository = workdir / "model_repository"
    names = scaled_repository(repository, size)
    runs = {
        "first start": helper_run(repository, workdir / "first", names),
        "restart": helper_run(repository, workdir / "restart", names),
        "Triton, 1 at a time": triton_run(repository, workdir / "triton-1", names, 1),
        "Triton, 4 at once": triton_run(repository, workdir / "triton-4", names, 4),
    }
    shutil.rmtree(workdir, ignore_errors=True)
    return runs


def markdown(results: Dict) -> str:
    parts = results_header("Time to READY at scale: first start and restart against Triton's own loads", results)
    parts.append(
        f"\nCopies of the example models (7 in 8 model-v1..v3, 1 in 8 text-encoder), each planned with group "
        f"sizes 1..{GROUP_MAX} x batch sizes {BATCH_SIZES} (32 samples); a fresh tritonserver per run; client "
        f"time from the request (or first load) to every model READY; medians of {results['settings']['trials']} "
        "trials.\n"
    )
    rows = []
    for size, trials in results["sizes"].items():
        medians = {condition: statistics.median(trial[condition]["seconds"] for trial in trials) for condition in CONDITIONS}
        best = min(medians["Triton, 1 at a time"], medians["Triton, 4 at once"])
        for condition in CONDITIONS:
            extra = ""
            if condition in ("first start", "restart"):
                extra = (f"{statistics.median(trial[condition]['scratch_copies'] for trial in trials):.0f} scratch copies, "
                         f"{statistics.median(trial[condition]['recorded'] for trial in trials):.0f} by the record")
            rows.append((size, condition, f"{medians[condition]:.2f}", f"{medians[condition] / best:.2f}x", extra))
    parts.append(table(("models", "run", "seconds", "vs Triton's best", "preflight"), rows))
    parts.append("\nTargets: first start within 1.2x of Triton's best, restart within 1.05x.\n")
    return "\n".join(parts) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 96], help="Models per repository. Default: 48 96.")
    parser.add_argument("--trials", type=int, default=3, help="Trials per size. Default is 3.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    results = {**run_record("bench.scale_benchmark"), "settings": {"trials": args.trials}, "sizes": {}}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="scale-benchmark-"))
    try:
        for size in args.sizes:
            trials = results["sizes"].setdefault(str(size), [])
            for trial in range(args.trials):
                runs = one_trial(workdir / f"{size}-{trial}", size)
                trials.append(runs)
                print(f"{size} models, trial {trial + 1}: "
                      + ", ".join(f"{condition} {runs[condition]['seconds']:.2f} s" for condition in CONDITIONS),
                      flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write_results(args.output_dir, "scale_benchmark", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
