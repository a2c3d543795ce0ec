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

READY = "READY"
FAILED = "FAILED"

LIMITATION = (
    "requests mode: each model was READY and served traffic while it was warmed, so "
    "requests that arrived before its warmup ended may have been cold; the load mode "
    "(a server in explicit model-control mode) warms before READY"
)

_FLOAT_TYPES = frozenset(
    {
        model_config_pb2.DataType.TYPE_FP16,
        model_config_pb2.DataType.TYPE_FP32,
        model_config_pb2.DataType.TYPE_FP64,
    }
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
    """The input arrays of one request that carries ``sample`` whole.

    A model that batches gets the batch dimension in front, sized to the
    sample's batch size; one that does not gets the sample's dims as they are.
    """
    batched = config.max_batch_size > 0
    arrays = {}
    for name, data in sample.inputs.items():
        dims = list(data.dims)
        shape = ([max(sample.batch_size, 1)] if batched else []) + dims
        dtype = numpy_dtype(data.data_type)
        if data.HasField("input_data_file"):
            one = _file_data(model_dir / "warmup" / data.input_data_file, data.data_type, dims)
            array = np.broadcast_to(one, shape).copy() if batched else one
        elif data.random_data and data.data_type in _FLOAT_TYPES:
            array = rng.random(shape).astype(dtype)
        elif data.random_data and data.data_type != model_config_pb2.DataType.TYPE_STRING:
            # Small non-negative values: an integer input often holds indices.
            array = rng.integers(0, 2, shape).astype(dtype)
        elif dtype == np.object_:
            array = np.full(shape, b"", dtype=np.object_)
        else:
            array = np.zeros(shape, dtype=dtype)
        arrays[name] = array
    return arrays


def run_requests_job(
    job,
    infer: Callable[[str, Dict[str, np.ndarray], List[str]], None],
    is_ready: Callable[[str], bool],
    rng: Optional[np.random.Generator] = None,
) -> Dict:
    """Warm one READY model with inference requests; return its report entry.

    Args:
        job: a ``warmup_job.ModelWarmupJob``; its merged config holds the
            samples to send (hand-written samples included).
        infer: ``infer(model, arrays, output_names)`` sends one request and
            raises when Triton answers with an error.
        is_ready: whether a model is READY.

    Each sample goes its ``count`` x instances times, one request after the
    other: requests sent together could be merged by the dynamic batcher into
    a larger batch, and the backend would never run the sample's own shape.
    Triton's scheduler picks the instance of each request; it does not
    promise that every instance sees every shape.
    """
    rng = rng or np.random.default_rng()
    config = job.rewrite.config
    entry = {
        "name": job.name,
        "status": FAILED,
        "mode": "requests",
        "warmup_samples": len(config.model_warmup),
        "count": job.count,
        "instances": job.instances,
        "group_sizes": list(job.group_sizes),
        "batch_sizes": list(job.batch_sizes),
        "config_changed": False,
        "config_written": False,
        "fallback": None,
        "seconds_to_ready": None,
        "seconds_warming": None,
        "requests_sent": 0,
        "served_before_warm": True,
        "lock": None,
        "error": None,
    }
    started = time.monotonic()
    try:
        ready = is_ready(job.name)
    except Exception as error:  # noqa: BLE001 - reported, not raised
        entry["error"] = f"cannot ask whether it is READY: {error}"
        return entry
    if not ready:
        entry["error"] = (
            "not READY: the requests mode warms models that are already loaded; load it first, "
            "or use the load mode on a server in explicit model-control mode"
        )
        return entry
    outputs = [output.name for output in config.output]
    try:
        for sample in config.model_warmup:
            arrays = sample_arrays(config, sample, job.model_dir, rng)
            # A sample's own count, as Triton runs it: hand-written samples keep theirs.
            for _ in range(max(sample.count, 1) * max(job.instances, 1)):
                infer(job.name, arrays, outputs)
                entry["requests_sent"] += 1
    except Exception as error:  # noqa: BLE001 - reported, not raised
        entry["error"] = f"a warmup request failed: {error}"
        return entry
    entry["seconds_warming"] = round(time.monotonic() - started, 3)
    entry["status"] = READY
    return entry
