#!/usr/bin/env python3
"""The first request through the example ensemble after READY, cold and warmed.

``embed`` is the example repository's ensemble: the Python ``tokenizer``,
then ``text-encoder`` (TorchScript on Triton's libtorch backend). Texts of
--lengths words at batch sizes --batch-sizes make its shapes: the tokenizer
gives text-encoder one token per word. Per condition and trial, a new
tritonserver process (libtorch keeps compiled kernels per process):

* cold: the ensemble is loaded through the Model Loading API, which loads its
  composing models without warmup, as a server without this project does;
* warmed: the helper warms ``embed`` from a plan whose samples are texts of
  those lengths (data files in ``embed/warmup/``): the tokenizer runs them,
  text-encoder is warmed at the lengths it gave, then the ensemble loads.

Then each shape gets its first request, with a text the warmup never saw
(same length, other words), and --steady more. From Triton's statistics:
the ensemble's own request time (``success``, server-side end to end) and
text-encoder's ``compute_infer`` for that request, first against the steady
median. Medians over --trials.

Writes ensemble_benchmark.md and .json to --output-dir (default bench/results).
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

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import serialize_byte_tensor

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
from triton_warmup.client.warm import request_warmup
from triton_warmup.embedded import EmbeddedTriton, free_port

ENSEMBLE = "embed"
ENCODER = "text-encoder"
TOKENIZER = "tokenizer"
CONDITIONS = ("cold", "warmed")
# The target of the issue that brought ensembles in: within 1.3x of steady.
TARGET_RATIO = 1.3


def text_of(words: int, seed: int) -> bytes:
    """A text of ``words`` words; another ``seed`` gives other words."""
    return " ".join(f"w{seed}x{index}" for index in range(words)).encode()


def write_texts(repository: pathlib.Path, lengths: List[int]) -> Dict[int, str]:
    """One data file per length in the ensemble's warmup/ folder (Triton's
    BYTES layout), for the plan."""
    folder = repository / ENSEMBLE / "warmup"
    folder.mkdir(exist_ok=True)
    files = {}
    for length in lengths:
        name = f"text{length}.bin"
        (folder / name).write_bytes(serialize_byte_tensor(np.array([text_of(length, 0)], dtype=np.object_)).item())
        files[length] = name
    return files


def plan_document(files: Dict[int, str], batch_sizes: List[int]) -> Dict:
    samples = [
        {"batch_size": batch, "inputs": {"TEXT": [1]}, "data": {"TEXT": {"file": files[length]}}}
        for length in files
        for batch in batch_sizes
    ]
    return {"models": {ENSEMBLE: {"samples": samples}}}


def one_request(client, batch: int, length: int, seed: int) -> Dict[str, float]:
    """Send one request through the ensemble; its server-side times in ms."""
    before = {model: counters(client, model) for model in (ENSEMBLE, ENCODER)}
    text = httpclient.InferInput("TEXT", [batch, 1], "BYTES")
    text.set_data_from_numpy(np.array([[text_of(length, seed)]] * batch, dtype=np.object_))
    client.infer(ENSEMBLE, [text])
    after = settled_counters(client, before)
    return {
        "ensemble_ms": (after[ENSEMBLE]["success_ns"] - before[ENSEMBLE]["success_ns"]) / 1e6,
        "encoder_ms": (after[ENCODER]["compute_ns"] - before[ENCODER]["compute_ns"]) / 1e6,
    }


def bring_up(client, condition: str, document: Dict) -> Dict:
    started = time.perf_counter()
    if condition == "cold":
        client.load_model(ENSEMBLE)
        return {"seconds_to_ready": time.perf_counter() - started}
    _, report = request_warmup(
        client, "http", {"PLAN": np.array([json.dumps(document).encode()], dtype=np.object_)}, timeout_s=REQUEST_TIMEOUT_S
    )
    if report.failed:
        raise RuntimeError(f"warmup failed: {report.to_dict()}")
    return {"seconds_to_ready": time.perf_counter() - started, "encoder_samples": report.entry(ENCODER).warmup_samples}


def trial(condition: str, number: int, repository: pathlib.Path, workdir: pathlib.Path, document: Dict, args) -> Dict:
    server = EmbeddedTriton(repository, workdir / f"{condition}-{number}", http_port=free_port(),
                            grpc_port=free_port(), metrics_port=free_port())
    rows = []
    with server:
        with httpclient.InferenceServerClient(server.http_url, network_timeout=REQUEST_TIMEOUT_S) as client:
            brought_up = bring_up(client, condition, document)
            for length in args.lengths:
                for batch in args.batch_sizes:
                    first = one_request(client, batch, length, seed=1)
                    steady = [one_request(client, batch, length, seed=2 + repeat) for repeat in range(args.steady)]
                    rows.append({
                        "batch": batch,
                        "words": length,
                        "first_ensemble_ms": first["ensemble_ms"],
                        "first_encoder_ms": first["encoder_ms"],
                        "steady_ensemble_ms": statistics.median(row["ensemble_ms"] for row in steady),
                        "steady_encoder_ms": statistics.median(row["encoder_ms"] for row in steady),
                    })
    for row in rows:
        row["ensemble_ratio"] = row["first_ensemble_ms"] / row["steady_ensemble_ms"]
        row["encoder_ratio"] = row["first_encoder_ms"] / row["steady_encoder_ms"]
    print(f"{condition} {number}: READY in {brought_up['seconds_to_ready']:.2f} s; worst first/steady through "
          f"{ENSEMBLE} {max(row['ensemble_ratio'] for row in rows):.2f}x", flush=True)
    return {**brought_up, "rows": rows}


def summarize(trials: List[Dict]) -> Dict:
    """Per shape, the medians over trials; and the worst shape."""
    shapes = []
    for index, row in enumerate(trials[0]["rows"]):
        runs = [trial_["rows"][index] for trial_ in trials]
        shapes.append({
            "batch": row["batch"],
            "words": row["words"],
            **{key: statistics.median(run[key] for run in runs)
               for key in ("first_ensemble_ms", "steady_ensemble_ms", "ensemble_ratio", "first_encoder_ms",
                           "steady_encoder_ms", "encoder_ratio")},
        })
    return {
        "seconds_to_ready": statistics.median(trial_["seconds_to_ready"] for trial_ in trials),
        "worst_ensemble_ratio": max(shape["ensemble_ratio"] for shape in shapes),
        "worst_encoder_ratio": max(shape["encoder_ratio"] for shape in shapes),
        "shapes": shapes,
    }


def markdown(results: Dict) -> str:
    parts = results_header("The first request through the example ensemble after READY", results) + [
        f"`{ENSEMBLE}` = `{TOKENIZER}` (Python) then `{ENCODER}` (TorchScript). Each trial a new tritonserver; "
        f"{results['trials']} trials, medians. Server-side: the ensemble's request time (`success`) and "
        f"{ENCODER}'s `compute_infer`, first request against the median of {results['steady']} more. "
        f"Target: warmed within {TARGET_RATIO}x of steady.\n",
    ]
    rows = []
    for condition in CONDITIONS:
        summary = results["conditions"][condition]
        per_trial = ", ".join(
            f"{max(row['ensemble_ratio'] for row in trial_['rows']):.2f}x" for trial_ in summary["trials"]
        )
        rows.append((condition, f"{summary['seconds_to_ready']:.2f}", f"{summary['worst_ensemble_ratio']:.2f}x",
                     per_trial, f"{summary['worst_encoder_ratio']:.2f}x"))
    parts.append(table(("condition", "s to READY", f"worst shape through {ENSEMBLE} (median of trials)",
                        "worst shape of each trial", f"worst shape of {ENCODER}"), rows))
    parts.append("\n## Per shape\n")
    shape_rows = []
    for condition in CONDITIONS:
        for shape in results["conditions"][condition]["shapes"]:
            shape_rows.append((condition, shape["batch"], shape["words"], f"{shape['first_ensemble_ms']:.2f}",
                               f"{shape['steady_ensemble_ms']:.2f}", f"{shape['ensemble_ratio']:.2f}x",
                               f"{shape['first_encoder_ms']:.2f}", f"{shape['encoder_ratio']:.2f}x"))
    parts.append(table(("condition", "batch", "words", f"first {ENSEMBLE} ms", "steady ms", "ratio",
                        f"first {ENCODER} ms", "ratio"), shape_rows))
    return "\n".join(parts) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4, 8, 16, 32],
                        help="Words per text (tokens text-encoder sees). Default is 4 8 16 32.")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4],
                        help="Texts per request. Default is 1 4.")
    parser.add_argument("--trials", type=int, default=3, help="Fresh servers per condition. Default is 3.")
    parser.add_argument("--steady", type=int, default=10, help="Requests after the first, per shape. Default is 10.")
    parser.add_argument("--smoke", action="store_true", help="One trial, two shapes, three steady requests.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    parser.add_argument("--markdown-only", action="store_true",
                        help="Write the Markdown again from the JSON in --output-dir, measuring nothing.")
    args = parser.parse_args(argv)
    if args.markdown_only:
        results = json.loads((args.output_dir / "ensemble_benchmark.json").read_text())
        (args.output_dir / "ensemble_benchmark.md").write_text(markdown(results))
        return 0
    if args.smoke:
        args.lengths, args.batch_sizes, args.trials, args.steady = args.lengths[:2], args.batch_sizes[:1], 1, 3
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="ensemble-bench-"))
    template = copy_repository(workdir / "template")
    document = plan_document(write_texts(template, args.lengths), args.batch_sizes)
    results = {
        **run_record("bench.ensemble_benchmark"),
        "trials": args.trials,
        "steady": args.steady,
        "plan": document,
        "conditions": {},
    }
    for condition in CONDITIONS:
        trials = []
        for number in range(args.trials):
            # Each trial on its own copy: the warmed condition rewrites configs.
            repository = workdir / f"repo-{condition}-{number}"
            shutil.copytree(template, repository)
            trials.append(trial(condition, number, repository, workdir, document, args))
        results["conditions"][condition] = {**summarize(trials), "trials": trials}
    write_results(args.output_dir, "ensemble_benchmark", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
