#!/usr/bin/env python3
"""How often tritonserver dies when a model_warmup sample fails during a load.

The embedded server (the wheel's tritonserver 2.51.0 with Triton's native
libtorch backend) loads a model whose only warmup sample the model rejects in
``forward`` (model-v1's Linear(64) handed 65 features; the config declares the
feature dimension variable, so Triton itself accepts the sample). Triton
should fail the load and keep serving; this counts how often it instead dies
with a signal. Each load goes straight to the load API (no warmup_helper in
between): this is Triton's own behaviour. After a crash the server is started
again.

Two conditions, --trials loads each: an idle machine, and every core kept
busy by spinning shell loops (a loaded production node).

Writes warmup_crash_rate.md and .json to --output-dir (default bench/results).
"""

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from bench.measure import PROJECT_ROOT, backend_line, run_record, copy_repository
from bench.report import write_results

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from triton_warmup.embedded import EmbeddedTriton, TritonStartError, free_port

MODEL = "rejects-its-warmup"
# model-v1's Linear layer takes 64 features; the sample sends one more.
REJECTED_FEATURES = 65
CRASH_MARK = "Signal (11) received"
# A failed load settles in well under a second; a crash follows the
# "failed to run warmup sample" line within milliseconds.
SETTLE_S = 1.0


def failing_config() -> Dict:
    """model-v1's config under MODEL's name, its feature dimension variable,
    with one warmup sample the model rejects."""
    return {
        "name": MODEL,
        "platform": "pytorch_libtorch",
        "max_batch_size": 8,
        "input": [
            {"name": "x", "data_type": "TYPE_FP32", "dims": [-1, -1]},
            {"name": "mask", "data_type": "TYPE_INT64", "dims": [-1]},
        ],
        "output": [{"name": "output", "data_type": "TYPE_FP32", "dims": [16]}],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        "parameters": {"INTRA_OP_THREAD_COUNT": {"string_value": "1"}},
        "model_warmup": [
            {
                "name": "rejected_feature_dim",
                "batch_size": 1,
                "count": 1,
                "inputs": {
                    "x": {"data_type": "TYPE_FP32", "dims": [1, REJECTED_FEATURES], "zero_data": True},
                    "mask": {"data_type": "TYPE_INT64", "dims": [1], "zero_data": True},
                },
            }
        ],
    }


def repository_with_model(workdir: pathlib.Path) -> pathlib.Path:
    repository = copy_repository(workdir / "model_repository")
    target = repository / MODEL / "1"
    target.mkdir(parents=True)
    shutil.copy(repository / "model-v1" / "1" / "model.pt", target / "model.pt")
    # The config the load sends; on disk only so that the folder is a model.
    (repository / MODEL / "config.pbtxt").write_text(f'name: "{MODEL}"\nplatform: "pytorch_libtorch"\n')
    return repository


@contextlib.contextmanager
def busy_cores(enabled: bool):
    """One spinning shell loop per core plus one, while the block runs."""
    loops = []
    if enabled:
        loops = [
            subprocess.Popen(["sh", "-c", "while :; do :; done"], start_new_session=True)
            for _ in range((os.cpu_count() or 2) + 1)
        ]
    try:
        yield len(loops)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def one_load(server: EmbeddedTriton, config: str) -> Dict:
    """Load MODEL once; whether Triton answered with an error and whether it died."""
    started = time.perf_counter()
    answer = "none"
    try:
        with httpclient.InferenceServerClient(server.http_url, network_timeout=60) as client:
            client.load_model(MODEL, config=config)
        answer = "loaded"
    except InferenceServerException as error:
        answer = "error" if "failed to run warmup sample" in str(error) else f"other: {error}"[:200]
    except Exception as error:  # noqa: BLE001 - a dropped connection is what a crash looks like
        answer = f"connection: {type(error).__name__}"
    seconds = time.perf_counter() - started
    code = server.wait(SETTLE_S)
    crashed = code is not None
    return {"answer": answer, "seconds": seconds, "crashed": crashed, "exit_code": code}


def measure_condition(repository: pathlib.Path, workdir: pathlib.Path, trials: int, busy: bool) -> Dict:
    config = json.dumps(failing_config())
    outcomes: List[Dict] = []
    signals = 0

    def start() -> EmbeddedTriton:
        server = EmbeddedTriton(repository, workdir, http_port=free_port(), grpc_port=free_port(),
                                metrics_port=free_port())
        server.start()
        return server.wait_ready()

    server = start()
    try:
        with busy_cores(busy) as loops:
            for trial in range(trials):
                outcome = one_load(server, config)
                if outcome["crashed"]:
                    log = server.log_text()
                    outcome["signal_11"] = CRASH_MARK in log
                    signals += outcome["signal_11"]
                    server.stop()
                    # A fresh log per server, so the next crash is its own.
                    server.log_path.rename(workdir / f"crash-{'busy' if busy else 'idle'}-{trial}.log")
                    server = start()
                outcomes.append(outcome)
                print(f"{'busy' if busy else 'idle'} {trial + 1}/{trials}: {outcome['answer']}"
                      f"{', CRASHED' if outcome['crashed'] else ''}", flush=True)
    finally:
        server.stop()
    crashes = sum(outcome["crashed"] for outcome in outcomes)
    return {
        "busy_loops": loops,
        "trials": trials,
        "crashes": crashes,
        "crashes_with_signal_11": signals,
        "error_answers": sum(outcome["answer"] == "error" for outcome in outcomes),
        "outcomes": outcomes,
    }


def server_version(repository: pathlib.Path, workdir: pathlib.Path) -> str:
    with EmbeddedTriton(repository, workdir, http_port=free_port(), grpc_port=free_port(),
                        metrics_port=free_port()) as server:
        with httpclient.InferenceServerClient(server.http_url) as client:
            return client.get_server_metadata()["version"]


def markdown(results: Dict) -> str:
    rows = [
        f"| {name} | {data['busy_loops']} | {data['trials']} | {data['crashes']} "
        f"({data['crashes'] / data['trials'] * 100:.0f}%) | {data['crashes_with_signal_11']} | {data['error_answers']} |"
        for name, data in results["conditions"].items()
    ]
    return "\n".join(
        [
            "# tritonserver crashes when a warmup sample fails\n",
            f"`{results['command']}` on {results['machine']}, {results['date']}.\n",
            f"tritonserver {results['tritonserver']} (nvidia-pytriton wheel). " + backend_line(results["backend"]),
            "Each trial loads a model whose one warmup sample the model rejects in forward, through the "
            "load API; a crash restarts the server.\n",
            "| condition | spinning loops | failing loads | server died | of them with Signal (11) | loads answered with the error |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30, help="Failing loads per condition. Default is 30.")
    parser.add_argument("--conditions", nargs="+", default=["idle", "busy"], choices=("idle", "busy"),
                        help="Which conditions to run. Default: idle busy.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="crash-rate-"))
    repository = repository_with_model(workdir)
    results = {
        **run_record("bench.warmup_crash_rate"),
        "conditions": {},
    }
    try:
        results["tritonserver"] = server_version(repository, workdir / "probe")
        for condition in args.conditions:
            results["conditions"][condition] = measure_condition(
                repository, workdir / condition, args.trials, busy=condition == "busy"
            )
    except TritonStartError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    write_results(args.output_dir, "warmup_crash_rate", results, markdown(results))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
