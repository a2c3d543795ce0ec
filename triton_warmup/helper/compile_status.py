"""What torch.compile did while a PyTorch 2 model loaded: compiled, or
reused Inductor's cache.

PyTorch 2 models (``backend: "pytorch"``, ``runtime: "model.py"``) run in
the PyTorch backend's Python runtime, behind this project's shim
(``triton_warmup/pytorch2/runtime.py``). The shim counts, in each instance's
process, what torch's own counters say (graphs compiled, Inductor's FX graph
cache hits and misses, functions whose traced code came from Dynamo's
cache) and keeps the counts in a status file per process under
``$TORCHINDUCTOR_CACHE_DIR/triton_warmup_loads/<model>/<version>/``. The
helper runs in the same server, so it sees the same variable; after a load
it sums the files that instances of that load wrote.

Pure Python: the files are read, nothing of Triton or torch is imported.
"""

import contextlib
import json
import os
import pathlib
from typing import Iterable, Optional, Tuple

from tritonclient.grpc import model_config_pb2

from triton_warmup.pytorch2 import CACHE_VARIABLE, STATUS_FOLDER
from triton_warmup.report import COMPILE_COMPILED, COMPILE_REUSED, COMPILE_UNKNOWN, CompileRecord

PYTORCH_BACKEND = "pytorch"
# A status file written this long before the load began still counts: its
# clock and ours are the same machine's, but the file's "started" is taken
# in another process.
_CLOCK_SLACK_S = 1.0
# Older status files are of loads long gone (or of another replica's).
_STALE_AFTER_S = 24 * 3600.0


def is_pytorch2(config: model_config_pb2.ModelConfig) -> bool:
    """Whether Triton serves ``config`` with the PyTorch backend's Python
    runtime (a ``torch.compile`` model), not its C++ libtorch one."""
    return config.backend == PYTORCH_BACKEND and config.runtime.endswith(".py")


def _statuses(folder: pathlib.Path, since: float) -> Iterable[dict]:
    """The status files in ``folder`` of processes started after ``since``;
    files a day older than that are removed on the way (the shim leaves its
    file when its instance goes, so that the scratch copy's can be read)."""
    for path in sorted(folder.glob("*.json")):
        try:
            status = json.loads(path.read_text())
            started = float(status.get("started", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # being replaced, or not ours: the shim renames whole files in
        if started < since - _STALE_AFTER_S:
            with contextlib.suppress(OSError):
                path.unlink()
        elif started >= since - _CLOCK_SLACK_S:
            yield status


def _sum(cache_dir: str, model: str, versions: Iterable[str], since: float) -> Tuple[int, int, int, int, int]:
    """(instances, graphs, cache hits, cache misses, functions traced from
    Dynamo's cache) of ``model``'s instances since ``since``."""
    instances = graphs = hits = misses = traced_from_cache = 0
    for version in versions:
        for status in _statuses(pathlib.Path(cache_dir) / STATUS_FOLDER / model / str(version), since):
            counts = status.get("counts", {})
            instances += 1
            graphs += int(counts.get("stats.unique_graphs", 0))
            hits += int(counts.get("inductor.fxgraph_cache_hit", 0))
            misses += int(counts.get("inductor.fxgraph_cache_miss", 0))
            traced_from_cache += int(counts.get("dynamo_cache.dynamo_cache_hit", 0))
    return instances, graphs, hits, misses, traced_from_cache


def read_compile_record(
    cache_dir: Optional[str],
    model: str,
    versions: Iterable[str],
    since: float,
    scratch: Optional[str] = None,
) -> CompileRecord:
    """What the instances of ``model`` (and of its preflight's scratch copy
    ``scratch``) that started after ``since`` (epoch seconds) reported,
    summed over ``versions``."""
    if not cache_dir:
        return CompileRecord(
            verdict=COMPILE_UNKNOWN,
            why=f"{CACHE_VARIABLE} is not set in tritonserver's environment, so Inductor's cache is torch's "
            "default folder under /tmp, which a new container or replica does not have, and the runtime "
            "keeps no counts the helper can read",
        )
    versions = list(versions)
    record = CompileRecord(cache_dir=cache_dir)
    (record.instances, record.graphs, record.cache_hits, record.cache_misses,
     record.traced_from_cache) = _sum(cache_dir, model, versions, since)
    if scratch:
        _, record.preflight_graphs, record.preflight_cache_hits, record.preflight_cache_misses, _ = _sum(
            cache_dir, scratch, versions, since
        )
    if record.instances == 0:
        record.verdict = COMPILE_UNKNOWN
        record.why = (
            f"no instance reported under {os.path.join(cache_dir, STATUS_FOLDER, model)}: the backend's "
            "runtime is not this project's shim (triton-warmup-install-runtime)"
        )
    elif record.cache_misses or record.preflight_cache_misses:
        record.verdict = COMPILE_COMPILED
    else:
        record.verdict = COMPILE_REUSED
    return record


def executes_that_compiled(cache_dir: Optional[str], model: str, version: str) -> dict:
    """Per instance process of ``model``'s ``version`` (its status file), how
    many of its ``execute`` calls traced or compiled, warmup ones included;
    empty where the shim keeps no counts. The live watch takes each
    instance's first count as its baseline and publishes what comes after."""
    if not cache_dir:
        return {}
    counts = {}
    folder = pathlib.Path(cache_dir) / STATUS_FOLDER / model / str(version)
    for path in sorted(folder.glob("*.json")):
        try:
            counts[path.name] = int(json.loads(path.read_text()).get("executes_that_compiled", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # being replaced: the shim renames whole files in
    return counts
