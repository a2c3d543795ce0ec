#!/usr/bin/env python3
"""What the preflight's scratch copy costs as a model grows.

A model that is not loaded has its samples checked on a scratch copy that the
helper loads from the model's own files, sent base64-encoded in one load
request (triton_warmup/helper/preflight.py). This measures, per
model size, on a fresh embedded server each time (Triton's native libtorch
backend):

* the preflight's seconds and, of them, the scratch copy's load;
* the time to READY with the preflight on (scratch folder of links in a
  writable repository folder, or the files in the load request where the
  folder is read-only) and off;
* the peak memory (VmHWM) of tritonserver and of the helper's stub process
  above what they held before the request, with the preflight on and off.

The model is a TorchScript stack of Linear(1024, 1024) layers (4 MiB each),
warmed with group sizes 1..4 at batch size 1 (4 samples).

Writes preflight_cost.md and .json to --output-dir (default bench/results).
"""

import argparse
import pathlib
import shutil
import sys
import tempfile
import textwrap
import time
from typing import Dict, List, Optional

from triton_warmup import HELPER_MODEL as HELPER
from bench.measure import PROJECT_ROOT, Session, copy_repository, helper_stub, memory_kib, results_header, run_record
from bench.report import write_results

import torch
from triton_warmup.embedded import EmbeddedTriton, free_port
from triton_warmup.helper.preflight import DEFAULT_PREFLIGHT_MAX_MODEL_BYTES

MODEL = "wide-stack"
WIDTH = 1024
LAYER_MIB = WIDTH * WIDTH * 4 / 2**20
GROUP_MAX = 4


class Stack(torch.nn.Module):
    def __init__(self, layers: int):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def write_model(repository: pathlib.Path, layers: int) -> int:
    """MODEL with ``layers`` layers; the bytes of its model.pt."""
    model_dir = repository / MODEL
    shutil.rmtree(model_dir, ignore_errors=True)
    (model_dir / "1").mkdir(parents=True)
    torch.manual_seed(0)
    torch.jit.script(Stack(layers).eval()).save(str(model_dir / "1" / "model.pt"))
    (model_dir / "config.pbtxt").write_text(textwrap.dedent(f"""\
        name: "{MODEL}"
        platform: "pytorch_libtorch"
        max_batch_size: 1
        input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1, {WIDTH} ] }} ]
        output [ {{ name: "y" data_type: TYPE_FP32 dims: [ -1, {WIDTH} ] }} ]
        instance_group [ {{ count: 1 kind: KIND_CPU }} ]
        """))
    return (model_dir / "1" / "model.pt").stat().st_size


def one_run(workdir: pathlib.Path, layers: int, preflight: bool, max_model_bytes: int, read_only: bool) -> Dict:
    repository = copy_repository(workdir / "model_repository")
    model_bytes = write_model(repository, layers)
    helper_config = repository / HELPER / "config.pbtxt"
    helper_config.write_text(
        helper_config.read_text()
        + f'\nparameters {{ key: "preflight" value {{ string_value: "{str(preflight).lower()}" }} }}\n'
        + f'parameters {{ key: "preflight_max_model_bytes" value {{ string_value: "{max_model_bytes}" }} }}\n'
    )
    server = EmbeddedTriton(repository, workdir, http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port())
    if read_only:
        # No scratch folder can be made: the files travel in the load request.
        repository.chmod(0o555)
    with server:
        stub = helper_stub(server.pid)
        before = {"server": memory_kib(server.pid), "stub": memory_kib(stub)}
        session = Session(server.http_url, repository, server.log_path)
        try:
            started = time.perf_counter()
            report = session.trigger([MODEL], GROUP_MAX, [1])
            wall = time.perf_counter() - started
        finally:
            session.close()
        after = {"server": memory_kib(server.pid), "stub": memory_kib(stub)}
    repository.chmod(0o755)
    (entry,) = report["models"]
    record = entry["preflight"] or {}
    return {
        "layers": layers,
        "model_bytes": model_bytes,
        "preflight": preflight,
        "repository_folder": "read-only" if read_only else "writable",
        "scratch": record.get("scratch"),
        "seconds_to_ready": entry["seconds_to_ready"],
        "client_seconds": wall,
        "preflight_s": record.get("seconds"),
        "scratch_load_s": record.get("load_s"),
        "load_s": entry["timings"]["load_s"],
        # Peak above what the process held before the request.
        "server_peak_mib": (after["server"]["VmHWM"] - before["server"]["VmRSS"]) / 1024,
        "server_after_mib": (after["server"]["VmRSS"] - before["server"]["VmRSS"]) / 1024,
        "stub_peak_mib": (after["stub"]["VmHWM"] - before["stub"]["VmRSS"]) / 1024,
    }


def markdown(results: Dict) -> str:
    lines = results_header("What the preflight's scratch copy costs as a model grows", results) + [
        f"A stack of Linear({WIDTH}, {WIDTH}) layers, not loaded, warmed with group sizes 1..{GROUP_MAX} "
        "at batch size 1 (4 samples) through warmup_helper; a fresh server for each row. Memory: "
        "peak (VmHWM) above what the process held before the request; 'after' is what tritonserver "
        "still holds with the model READY.\n",
        "| model MiB | preflight | repository folder | s to READY | preflight s | of it scratch load s | tritonserver peak MiB | tritonserver after MiB | helper stub peak MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in results["runs"]:
        lines.append(
            f"| {run['model_bytes'] / 2**20:.0f} | {'on' if run['preflight'] else 'off'} | {run['repository_folder']} | "
            f"{run['seconds_to_ready']:.2f} | "
            + ("-" if run["preflight_s"] is None else f"{run['preflight_s']:.2f}") + " | "
            + ("-" if run["scratch_load_s"] is None else f"{run['scratch_load_s']:.2f}") + " | "
            f"{run['server_peak_mib']:.0f} | {run['server_after_mib']:.0f} | {run['stub_peak_mib']:.0f} |"
        )
    lines.append(
        "\nWith a writable repository folder the scratch copy is a hidden folder of links to the "
        "model's files: nothing is copied. With a read-only one the files travel base64-encoded in "
        "the load request; above `preflight_max_model_bytes` (default "
        f"{DEFAULT_PREFLIGHT_MAX_MODEL_BYTES // 2**20} MiB) the helper refuses that and reports the "
        "model FAILED with nothing written. A model that is already READY is checked with requests "
        "instead, whatever its size.\n"
    )
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[16, 64, 256],
                        help="Model sizes, in MiB of weights. Default: 16 64 256.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    results = {
        **run_record("bench.preflight_cost"),
        "runs": [],
    }
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="preflight-cost-"))
    try:
        for size in args.sizes_mib:
            layers = max(1, round(size / LAYER_MIB))
            for preflight, read_only in ((True, False), (True, True), (False, False)):
                run = one_run(workdir / f"{size}-{preflight}-{read_only}", layers, preflight,
                              max(DEFAULT_PREFLIGHT_MAX_MODEL_BYTES, 2 * size * 2**20), read_only)
                results["runs"].append(run)
                print(f"{run['model_bytes'] / 2**20:.0f} MiB, preflight {'on' if preflight else 'off'}, "
                      f"{run['repository_folder']} repository folder: READY in "
                      f"{run['seconds_to_ready']:.2f} s, tritonserver peak +{run['server_peak_mib']:.0f} MiB, "
                      f"stub peak +{run['stub_peak_mib']:.0f} MiB", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write_results(args.output_dir, "preflight_cost", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
