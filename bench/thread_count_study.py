#!/usr/bin/env python3
"""Plain torch, no Triton: which thread runs a TorchScript model decides
whether its warmed shapes stay warm (docs/warm-stays-warm.md).

model-v1 is loaded with ``torch.set_num_threads(1)`` on the main thread, as
Triton's libtorch backend does while it loads a model with
``INTRA_OP_THREAD_COUNT`` 1. Its 256 shapes (group sizes 1..64 x batch sizes
1, 2, 4, 8) are run in ascending order, 3 times each, then --probes random
ones once more and 5 times after: a probe is slow when its first run is over
1.5x the median of the others and over 30 us above it. Each condition runs
in a fresh Python process, with its environment:

* the main thread, where ``set_num_threads`` applied at once;
* a new thread, as Triton's backend thread runs the warmup and requests;
* a new thread that calls ``torch.get_num_threads()`` first;
* a new thread, the largest shape warmed first;
* a new thread with OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, MALLOC_ARENA_MAX=1
  or MKL_DISABLE_FAST_MM=1;
* a new thread with oneDNN's primitive cache at 64 entries.

Prints a Markdown table; nothing is written.
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import warnings
from typing import List, Optional, Tuple

FEATURE_DIM = 64
SHAPES = [(batch, group) for group in range(1, 65) for batch in (1, 2, 4, 8)]
CONDITIONS = (
    # (name, arguments of the child, environment)
    ("the main thread", ["--main-thread"], {}),
    ("a new thread", [], {}),
    ("a new thread that calls torch.get_num_threads() first", ["--ask-first"], {}),
    ("a new thread, the largest shape warmed first", ["--largest-first"], {}),
    ("a new thread, OMP_NUM_THREADS=1", [], {"OMP_NUM_THREADS": "1"}),
    ("a new thread, MKL_NUM_THREADS=1", [], {"MKL_NUM_THREADS": "1"}),
    ("a new thread, MALLOC_ARENA_MAX=1", [], {"MALLOC_ARENA_MAX": "1"}),
    ("a new thread, MKL_DISABLE_FAST_MM=1", [], {"MKL_DISABLE_FAST_MM": "1"}),
    ("a new thread, ONEDNN_PRIMITIVE_CACHE_CAPACITY=64, counts matched", ["--ask-first"],
     {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}),
)


def probe(model_path: str, probes: int, ask_first: bool, largest_first: bool) -> int:
    """The warmup and the probes, on the calling thread; slow probes."""
    import torch

    warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=DeprecationWarning)
    if ask_first:
        torch.get_num_threads()
    model = torch.jit.load(model_path).eval()

    def run(batch: int, group: int) -> float:
        x = torch.randn(batch, group, FEATURE_DIM)
        mask = torch.ones(batch, group, dtype=torch.int64)
        started = time.perf_counter()
        model(x, mask)
        return (time.perf_counter() - started) * 1e6

    order = ([max(SHAPES, key=lambda shape: shape[0] * shape[1])] + SHAPES[:-1]) if largest_first else SHAPES
    slow = 0
    with torch.inference_mode():
        for batch, group in order:
            for _ in range(3):
                run(batch, group)
        for batch, group in random.Random(0).sample(SHAPES, probes):
            first = run(batch, group)
            steady = statistics.median(run(batch, group) for _ in range(5))
            slow += first > 1.5 * steady and first - steady > 30
    return slow


def child(args) -> int:
    import torch

    torch.set_num_threads(1)
    found: List[int] = []
    work = lambda: found.append(probe(args.model, args.probes, args.ask_first, args.largest_first))  # noqa: E731
    if args.main_thread:
        work()
    else:
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    print(found[0])
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from bench.measure import PROJECT_ROOT

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(PROJECT_ROOT / "model_repository" / "model-v1" / "1" / "model.pt"))
    parser.add_argument("--probes", type=int, default=40, help="Warmed shapes probed. Default is 40.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--main-thread", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ask-first", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--largest-first", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    rows: List[Tuple[str, str]] = []
    for name, arguments, environment in CONDITIONS:
        finished = subprocess.run(
            [sys.executable, "-m", "bench.thread_count_study", "--child", "--model", args.model,
             "--probes", str(args.probes), *arguments],
            env={**os.environ, **environment}, capture_output=True, text=True, check=True,
        )
        rows.append((name, finished.stdout.strip().splitlines()[-1]))
        print(f"{name}: {rows[-1][1]} of {args.probes} slow", file=sys.stderr, flush=True)
    print(f"| where the loop runs | slow of {args.probes} |\n| --- | --- |")
    for name, slow in rows:
        print(f"| {name} | {slow} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
