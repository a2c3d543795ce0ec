#!/usr/bin/env python3
"""How many runs a TorchScript model needs at a new input shape before it is fast.

This is the measurement behind warmup_helper's default ``warmup_count``.
Plain TorchScript, no Triton: each example model is loaded in a fresh Python
process, so that nothing an earlier model ran is warm; every (batch, group)
shape is then run ``--runs`` times in a row and each run's latency printed.
Inside Triton's libtorch backend all models share the server process, so
only the first model loaded pays the process's one-time costs
(bench/results/warmup_benchmark.md).

Usage::

    python -m bench.torchscript_runs_per_shape --model-repository model_repository
"""

import argparse
import multiprocessing
import pathlib
import statistics
import sys
import time
import warnings

import torch

from triton_warmup import example_models as gen_model

warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=DeprecationWarning)


def measure(path: pathlib.Path, feature_dim: int, shapes, runs: int):
    module = torch.jit.load(str(path)).eval()
    table = []
    with torch.inference_mode():
        for batch, group in shapes:
            x = torch.randn(batch, group, feature_dim)
            mask = torch.zeros(batch, group, dtype=torch.int64)
            latencies = []
            for _ in range(runs):
                started = time.perf_counter()
                module(x, mask)
                latencies.append((time.perf_counter() - started) * 1000)
            table.append(((batch, group), latencies))
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=pathlib.Path, default=pathlib.Path("model_repository"),
                        help="Repository holding model-v1..v3 with model.pt. Default is ./model_repository.")
    parser.add_argument("--runs", type=int, default=6, help="Runs per shape. Default is 6.")
    parser.add_argument("--group-size-max", type=int, default=4, help="Largest group size. Default is 4.")
    args = parser.parse_args()
    shapes = [(batch, group) for group in range(1, args.group_size_max + 1) for batch in (1, 2, 4, 8)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; latency in ms per run")
    for name, feature_dim in gen_model.FEATURE_DIMS.items():
        # A fresh interpreter per model: TorchScript's executor state is per process.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            table = pool.apply(measure, (args.model_repository / name / "1" / "model.pt", feature_dim, shapes, args.runs))
        print(f"\n{name} (D={feature_dim})")
        print("batch group  " + "  ".join(f"{'run ' + str(index + 1):>6}" for index in range(args.runs)))
        for (batch, group), latencies in table:
            print(f"{batch:>5} {group:>5}  " + "  ".join(f"{value:6.2f}" for value in latencies))
        for index in range(args.runs):
            column = [latencies[index] for _, latencies in table]
            print(f"run {index + 1}: median {statistics.median(column):6.3f} ms, max {max(column):7.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
