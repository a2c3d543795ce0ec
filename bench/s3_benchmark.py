"""Time to READY from a repository in S3 against the same repository in a folder.

Per trial and per source, a fresh tritonserver (and, for S3, a fresh moto S3
server holding the repository) serves the helper and the four example
models; one request warms them all (group sizes 1..8 x batch sizes 1, 2, 4,
8: 32 samples each). Reported, median of the trials: the server's start
until the helper is READY (Triton downloads the helper from the bucket), the
helper's planning (for S3 it lists the bucket and copies configs and warmup
data), the preflight, each model's time to READY, and the request's total.
The bucket is on this machine, so the figures hold the cost of the S3
protocol and of the copies, not of a network.
"""

import argparse
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional

from bench.measure import EXAMPLE_MODELS, PROJECT_ROOT, TEXT_ENCODER, Session, copy_repository, run_record
from bench.report import table, write_results
from bench.measure import results_header
from bench.object_stores import s3_server
from triton_warmup.embedded import EmbeddedTriton, free_port

MODELS = EXAMPLE_MODELS + [TEXT_ENCODER]
GROUP_MAX = 8
BATCH_SIZES = [1, 2, 4, 8]
SOURCES = ("folder", "s3")


def one_run(workdir: pathlib.Path, source: str, models: List[str]) -> Dict:
    repository = copy_repository(workdir / "model_repository")
    with s3_server(workdir / "moto.log") if source == "s3" else _nothing() as s3:
        served = repository
        environment = {}
        if s3 is not None:
            s3.upload(repository)
            served, environment = s3.url(), s3.environment
        server = EmbeddedTriton(served, workdir, http_port=free_port(), grpc_port=free_port(),
                                metrics_port=free_port(), extra_env=environment)
        started = time.perf_counter()
        with server:
            helper_ready_s = time.perf_counter() - started
            session = Session(server.http_url, repository, server.log_path)
            try:
                report = session.trigger(models, GROUP_MAX, BATCH_SIZES)
            finally:
                session.close()
    entries = report["models"]
    return {
        "source": source,
        "helper_ready_s": helper_ready_s,
        "plan_s": report["plan_s"],
        "seconds_total": report["seconds_total"],
        "client_seconds": report["client_seconds"],
        "preflight_s": sum((entry["preflight"] or {}).get("seconds") or 0 for entry in entries),
        "seconds_to_ready": {entry["name"]: entry["seconds_to_ready"] for entry in entries},
        "config_written": {entry["name"]: entry["config_written"] for entry in entries},
        "samples": {entry["name"]: entry["warmup_samples"] for entry in entries},
    }


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def median_of(runs: List[Dict], source: str, key: str, model: Optional[str] = None) -> float:
    values = [run[key][model] if model else run[key] for run in runs if run["source"] == source]
    return statistics.median(values)


def markdown(results: Dict) -> str:
    runs = results["runs"]
    trials = results["settings"]["trials"]
    parts = results_header("Time to READY from S3 against a folder", results)
    parts.append(
        f"\nThe helper and {', '.join(results['settings']['models'])}, group sizes 1..{GROUP_MAX} x batch sizes "
        f"{BATCH_SIZES}, one warmup request; a fresh tritonserver (and for S3 a fresh moto S3 server on this "
        f"machine) per trial; medians of {trials} trials, in seconds.\n"
    )
    rows = []
    for label, key in (("server start to helper READY", "helper_ready_s"), ("helper's planning", "plan_s"),
                       ("preflight, all models", "preflight_s"), ("request total (server side)", "seconds_total"),
                       ("request total (client)", "client_seconds")):
        folder, s3 = median_of(runs, "folder", key), median_of(runs, "s3", key)
        rows.append((label, f"{folder:.2f}", f"{s3:.2f}", f"{s3 / folder:.2f}x" if folder else "-"))
    for model in results["settings"]["models"]:
        folder = median_of(runs, "folder", "seconds_to_ready", model)
        s3 = median_of(runs, "s3", "seconds_to_ready", model)
        rows.append((f"{model} to READY", f"{folder:.2f}", f"{s3:.2f}", f"{s3 / folder:.2f}x"))
    parts.append(table(("", "folder", "S3", "S3 / folder"), rows))
    written = {run["source"]: sorted(name for name, done in run["config_written"].items() if done) for run in runs}
    parts.append(
        f"\nConfigs written: folder {written.get('folder')}, S3 {written.get('s3')} (the bucket is never written; "
        "the planned config travels in the load request).\n"
    )
    return "\n".join(parts) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3, help="Fresh servers per source. Default is 3.")
    parser.add_argument("--models", nargs="+", default=MODELS, help=f"Models to warm. Default: {' '.join(MODELS)}.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    results = {**run_record("bench.s3_benchmark"), "settings": {"trials": args.trials, "models": args.models},
               "runs": []}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="s3-benchmark-"))
    try:
        for trial in range(args.trials):
            for source in SOURCES:
                run = one_run(workdir / f"{trial}-{source}", source, args.models)
                results["runs"].append(run)
                print(f"trial {trial + 1}, {source}: helper READY after {run['helper_ready_s']:.2f} s, "
                      f"request {run['seconds_total']:.2f} s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write_results(args.output_dir, "s3_benchmark", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
