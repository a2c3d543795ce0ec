"""Trace files in the format tritonserver 2.51 writes with
``--trace-config level=TIMESTAMPS --trace-config level=TENSORS``, for the pure
tests of the traffic commands. The integration tests read real ones."""

import json
import pathlib
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from tritonclient.utils import np_to_triton_dtype


def triton_data(array: np.ndarray) -> bytes:
    """A tensor's values as tritonserver's trace writer prints them (server
    ``src/tracer.cc``): numbers joined by commas, BOOL as 0/1, INT8/UINT8 as
    one raw character each, BYTES as ``\\"<bytes>\\"``, unescaped."""
    flat = array.reshape(-1)
    if array.dtype == np.object_:
        return b",".join(b'\\"' + (value if isinstance(value, bytes) else str(value).encode()) + b'\\"' for value in flat)
    if array.dtype in (np.int8, np.uint8):
        return b",".join(bytes([int(value) & 0xFF]) for value in flat)
    if array.dtype == np.bool_:
        return b",".join(b"1" if value else b"0" for value in flat)
    if array.dtype in (np.float16,):
        return b""
    return ",".join(str(value) for value in flat.tolist()).encode()


def tensor_record(trace_id: int, name: str, array: np.ndarray, activity: str = "TENSOR_QUEUE_INPUT") -> Dict:
    return {
        "id": trace_id,
        "activity": activity,
        "tensor": {
            "name": name,
            "data": triton_data(array),
            "shape": ",".join(str(dim) for dim in array.shape),
            "dtype": "BYTES" if array.dtype == np.object_ else np_to_triton_dtype(array.dtype),
        },
    }


def triton_text(record: Dict) -> bytes:
    """One record as tritonserver writes it: the keys in its order, tensor
    data and request ids raw, everything else as JSON."""
    if "tensor" in record:
        tensor = record["tensor"]
        return (
            b'{"id":%d,"activity":"%s","tensor":{"name":"%s","data":"' % (
                record["id"], record["activity"].encode(), tensor["name"].encode())
            + tensor["data"]
            + b'","shape":"%s","dtype":"%s"}}' % (tensor["shape"].encode(), tensor["dtype"].encode())
        )
    if "request_id" in record:
        text = b'{"id":%d,"model_name":"%s","model_version":%d,"request_id":"' % (
            record["id"], record["model_name"].encode(), record["model_version"])
        text += record["request_id"] if isinstance(record["request_id"], bytes) else record["request_id"].encode()
        text += b'"' + (b',"parent_id":%d' % record["parent_id"] if "parent_id" in record else b"") + b"}"
        return text
    return json.dumps(record, separators=(",", ":")).encode()


def triton_trace(records: Iterable[Dict]) -> bytes:
    return b"[" + b",".join(triton_text(record) for record in records) + b"]"


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
    path.write_bytes(triton_trace(records))
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
