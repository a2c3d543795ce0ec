"""The requests mode: warm models that are already loaded by sending them
inference requests over the same plan.

A server in ``poll`` or ``none`` model-control mode refuses the Model Loading
API, and some teams do not want a reload at all. There the helper sends each
planned sample as an inference request (a BLS request from inside Triton) to
the READY model: ``count`` runs per sample and instance, one after another, a
batched sample as one request whose batch dimension is the sample's batch
size, so the backend runs its forward at that exact shape.

The limitation, stated in every report: the model is READY and takes traffic
while this runs, so requests that arrive before the warmup ends can still be
cold. The load mode has no such window.

Pure Python and numpy: the caller passes the functions that reach Triton.
"""

import pathlib
import time
from typing import Callable, Dict, List, Optional

import numpy as np
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

from triton_warmup.helper.config_rewrite import WARMUP_DATA_FOLDER
from triton_warmup.helper.model_kind import Infer, correlation_ids, requests_for
from triton_warmup.report import ModelEntry, Status, one_line

LIMITATION = (
    "requests mode: each model was READY and served traffic while it was warmed, so "
    "requests that arrived before its warmup ended may have been cold; the load mode "
    "(a server in explicit model-control mode) warms before READY"
)

def numpy_dtype(data_type: int):
    """The numpy dtype of a config ``DataType`` (``TYPE_STRING`` is bytes)."""
    name = model_config_pb2.DataType.Name(data_type)[len("TYPE_") :]
    return triton_to_np_dtype("BYTES" if name == "STRING" else name)


def _file_data(path: pathlib.Path, data_type: int, dims: List[int]) -> np.ndarray:
    """One request's worth of ``path``, read the way Triton reads an
    ``input_data_file``: its first bytes, in row-major order."""
    elements = int(np.prod(dims, dtype=np.int64))
    raw = path.read_bytes()
    if data_type == model_config_pb2.DataType.TYPE_STRING:
        strings = deserialize_bytes_tensor(raw)
        return np.resize(strings, elements).reshape(dims)
    dtype = np.dtype(numpy_dtype(data_type))
    needed = elements * dtype.itemsize
    if len(raw) < needed:
        raise ValueError(f"{path} holds {len(raw)} bytes; one request needs {needed}")
    return np.frombuffer(raw[:needed], dtype=dtype).reshape(dims)


def sample_arrays(
    config: model_config_pb2.ModelConfig,
    sample: model_config_pb2.ModelWarmup,
    model_dir: pathlib.Path,
    rng: np.random.Generator,
) -> Dict[str, np.ndarray]:
    """The input arrays of one request that carries ``sample`` whole, with
    the data Triton's warmup gives it.

    A model that batches gets the batch dimension in front, sized to the
    sample's batch size; one that does not gets the sample's dims as they are.
    As in core's warmup, every request of a batch carries the same data, and
    ``random_data`` is random bytes, one buffer whose start every such input
    takes: a float input can hold any bit pattern (NaN included), an integer
    one any value. A string input with ``random_data`` gets empty strings, as
    Triton gives it zeros. Inputs the config does not declare (a sequence
    model's control inputs, which its batcher adds to real requests) are
    left out.
    """
    batched = config.max_batch_size > 0
    declared = {model_input.name for model_input in config.input}
    batch = [max(sample.batch_size, 1)] if batched else []
    random_bytes = None
    arrays = {}
    for name, data in sample.inputs.items():
        if name not in declared:
            continue
        dims = list(data.dims)
        dtype = np.dtype(numpy_dtype(data.data_type))
        elements = int(np.prod(dims, dtype=np.int64))
        if data.HasField("input_data_file"):
            one = _file_data(model_dir / WARMUP_DATA_FOLDER / data.input_data_file, data.data_type, dims)
        elif dtype == np.object_:
            one = np.full(dims, b"", dtype=np.object_)
        elif data.random_data:
            needed = elements * dtype.itemsize
            if random_bytes is None or len(random_bytes) < needed:
                grown = rng.integers(0, 256, needed, dtype=np.uint8)
                if random_bytes is not None:
                    grown[: len(random_bytes)] = random_bytes
                random_bytes = grown
            raw = random_bytes[:needed].tobytes()
            one = (np.frombuffer(raw, np.uint8) != 0 if dtype == np.bool_ else np.frombuffer(raw, dtype)).reshape(dims)
        else:
            one = np.zeros(dims, dtype=dtype)
        arrays[name] = np.broadcast_to(one, batch + dims).copy() if batched else one.copy()
    return arrays


def run_requests_job(
    job,
    infer: Infer,
    is_ready: Callable[[str], bool],
    rng: Optional[np.random.Generator] = None,
) -> ModelEntry:
    """Warm one READY model with inference requests; return its report entry.

    Args:
        job: a ``job_planning.ModelWarmupJob``; its merged config holds the
            samples to send (hand-written samples included); or an
            ``EnsembleJob``, whose planned samples go to the ensemble itself,
            so each composing model runs what the ensemble sends it.
        infer: sends one ``InferRequest``; raises when Triton answers with an error.
        is_ready: whether a model is READY.

    Each sample goes its ``count`` x instances times, one request after the
    other: requests sent together could be merged by the dynamic batcher into
    a larger batch, and the backend would never run the sample's own shape.
    A sequence model gets each item as a sequence of one request, a
    decoupled one is read to its final response (``model_kind.requests_for``).
    Triton's scheduler picks the instance of each request; it does not
    promise that every instance sees every shape.
    """
    rng = rng or np.random.default_rng()
    ensemble = getattr(job, "flow", None) is not None
    config = job.flow.config if ensemble else job.rewrite.config
    samples = job.flow.samples if ensemble else list(config.model_warmup)
    entry = ModelEntry(
        name=job.name,
        mode="requests",
        kind=job.kind.label,
        warmup_samples=len(samples),
        count=getattr(job, "count", 1),
        instances=getattr(job, "instances", 1),
        group_sizes=list(job.group_sizes),
        batch_sizes=list(job.batch_sizes),
        versions=list(job.versions),
        members=job.members if ensemble else [],
        requests_sent=0,
        served_before_warm=True,
    )
    started = time.monotonic()
    try:
        ready = is_ready(job.name)
    except Exception as error:  # noqa: BLE001 - reported, not raised
        entry.error = f"cannot ask whether it is READY: {error}"
        return entry
    if not ready:
        entry.error = (
            "not READY: the requests mode warms models that are already loaded; load it first, "
            "or use the load mode on a server in explicit model-control mode"
        )
        return entry
    ids = correlation_ids(rng)
    try:
        for sample in samples:
            arrays = sample_arrays(config, sample, job.model_dir, rng)
            # A sample's own count, as Triton runs it: hand-written samples keep theirs.
            for _ in range(max(sample.count, 1) * max(entry.instances, 1)):
                for request in requests_for(job.kind, job.name, "", config, arrays, ids):
                    infer(request)
                    entry.requests_sent += 1
    except Exception as error:  # noqa: BLE001 - reported, not raised
        entry.error = f"a warmup request failed: {one_line(str(error))}"
        entry.detail = str(error)
        return entry
    entry.seconds_warming = round(time.monotonic() - started, 3)
    entry.status = Status.READY
    return entry


def run_requests_plan(plan, infer: Infer, is_ready: Callable[[str], bool]) -> List[ModelEntry]:
    """``run_requests_job`` for every model of a ``job_planning.RequestPlan``
    that has samples of its own, and every ensemble; entries in the plan's
    report order. A composing model with no plan of its own is warmed by its
    ensemble's requests and has no entry of its own."""
    started = time.monotonic()
    done = {entry.name: entry for entry in plan.failed}
    for job in [job for job in plan.jobs if job.samples] + list(plan.ensembles):
        entry = done[job.name] = run_requests_job(job, infer, is_ready)
        entry.finished_s = round(time.monotonic() - started, 6)
    return [done[name] for name in plan.order if name in done]
