"""Trace files in the format tritonserver 2.51 writes with
``--trace-config level=TIMESTAMPS --trace-config level=TENSORS``, for the pure
tests of the traffic commands. The integration tests read real ones."""

import json
import pathlib
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from tritonclient.utils import np_to_triton_dtype


def tensor_record(trace_id: int, name: str, array: np.ndarray, activity: str = "TENSOR_QUEUE_INPUT") -> Dict:
    values = array.reshape(-1).tolist()
    if array.dtype == np.bool_:
        values = [int(value) for value in values]
    return {
        "id": trace_id,
        "activity": activity,
        "tensor": {
            "name": name,
            "data": ",".join(str(value) for value in values),
            "shape": ",".join(str(dim) for dim in array.shape),
            "dtype": np_to_triton_dtype(array.dtype),
        },
    }


def request_records(trace_id: int, model: Optional[str], inputs: Dict[str, np.ndarray]) -> List[Dict]:
    """The records of one request, in the order Triton writes them."""
    records = [{"id": trace_id, "timestamps": [{"name": "HTTP_RECV_START", "ns": 1000 + trace_id}]}]
    if model is not None:
        records.append({"id": trace_id, "model_name": model, "model_version": 1})
    records.append({"id": trace_id, "timestamps": [{"name": "QUEUE_START", "ns": 2000 + trace_id}]})
    records.extend(tensor_record(trace_id, name, array) for name, array in inputs.items())
    records.append(tensor_record(trace_id, "output", np.zeros((1, 2), np.float32), "TENSOR_BACKEND_OUTPUT"))
    records.append({"id": trace_id, "timestamps": [{"name": "REQUEST_END", "ns": 3000 + trace_id}]})
    return records


def write_trace(path: pathlib.Path, requests: Iterable[Tuple[Optional[str], Dict[str, np.ndarray]]]) -> pathlib.Path:
    records = []
    for trace_id, (model, inputs) in enumerate(requests, start=1):
        records.extend(request_records(trace_id, model, inputs))
    path.write_text(json.dumps(records, separators=(",", ":")))
    return path


def v1_request(batch: int, group: int, fill: float = 0.5) -> Tuple[str, Dict[str, np.ndarray]]:
    """A request to model-v1 (x FP32 [-1, 64], mask INT64 [-1], max_batch_size 8)."""
    return "model-v1", {
        "x": np.full((batch, group, 64), fill, np.float32),
        "mask": np.arange(batch * group, dtype=np.int64).reshape(batch, group),
    }


def encoder_request(batch: int, length: int, first_id: int = 7) -> Tuple[str, Dict[str, np.ndarray]]:
    """A request to text-encoder (input_ids, attention_mask INT64 [-1])."""
    ids = (np.arange(batch * length, dtype=np.int64).reshape(batch, length) + first_id) % 1000
    return "text-encoder", {"input_ids": ids, "attention_mask": np.ones((batch, length), np.int64)}
