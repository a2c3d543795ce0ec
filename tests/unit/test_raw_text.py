"""Traces with the text Triton writes raw: BYTES data (a helper's JSON
report, user text with quotes, brackets and newlines), INT8/UINT8 raw
characters and request ids, read as tritonserver 2.51 writes them."""

import io
import json

import ijson
import numpy as np
import pytest

from triton_warmup.traffic.plan import recorded_bytes, traced_strings
from triton_warmup.traffic.raw_text import RawTextError, RawTextReader, raw_bytes
from triton_warmup.traffic.shapes import profile_traffic, repository_configs
from triton_warmup.traffic.trace import ReadSummary, TraceError, TracedTensor, read_requests
from repository_fixtures import PROJECT_REPOSITORY
from trace_files import request_records, tensor_record, triton_trace, v1_request

# Strings that break JSON when written unescaped, and one that holds the very
# text that ends a data value.
NASTY_STRINGS = [
    b'he said "hi" \\o/',
    b"line one\nline two\ttab [brackets] {braces}",
    b'","shape":"1","dtype":"INT64"}}',
    "caf\u00e9 \u2603".encode(),
    b"",
    b"\x00\x01 control",
]
REPORT = json.dumps({"models": [{"name": "model-v1", "status": "READY", "error": 'a "quoted" reason'}]}).encode()


def parsed(text: bytes, chunk_bytes: int = 1 << 20):
    return list(ijson.items(RawTextReader(io.BytesIO(text), chunk_bytes=chunk_bytes), "item"))


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1 << 20])
def test_raw_values_come_out_as_the_bytes_triton_wrote(chunk_bytes):
    strings = np.array(NASTY_STRINGS, dtype=np.object_).reshape(2, 3)
    small = np.array([[0, 34, 44], [92, 255, 10]], np.uint8)
    signed = np.array([-1, 34, 44, 0], np.int8)
    records = [
        {"id": 1, "model_name": "tokenizer", "model_version": 1, "request_id": b'req "7" ]},{"id":9,'},
        tensor_record(1, "text", strings),
        tensor_record(1, "small", small),
        tensor_record(1, "signed", signed),
        tensor_record(1, "REPORT", np.array([REPORT], dtype=np.object_), "TENSOR_BACKEND_OUTPUT"),
        tensor_record(1, "x", np.array([[0.5, -2.0]], np.float32)),
    ]
    values = parsed(triton_trace(records), chunk_bytes)
    assert raw_bytes(values[0]["request_id"]) == b'req "7" ]},{"id":9,'
    by_name = {record["tensor"]["name"]: record["tensor"] for record in values[1:]}
    assert by_name["text"]["shape"] == "2,3" and by_name["text"]["dtype"] == "BYTES"
    text = by_name["text"]
    assert raw_bytes(text["data"]) == b",".join(b'\\"' + value + b'\\"' for value in NASTY_STRINGS)
    assert raw_bytes(by_name["small"]["data"]) == b"\x00,\x22,\x2c,\x5c,\xff,\x0a"
    assert raw_bytes(by_name["REPORT"]["data"]) == b'\\"' + REPORT + b'\\"'
    assert by_name["x"]["data"] == "0.5,-2.0"


def test_strings_and_small_integers_are_recovered_as_data_files():
    strings = np.array([NASTY_STRINGS[:2], NASTY_STRINGS[3:5]], dtype=np.object_)
    records = [{"id": 1, "model_name": "m", "model_version": 1}, tensor_record(1, "text", strings),
               tensor_record(1, "small", np.array([[7, 34], [44, 92]], np.uint8))]
    path = io.BytesIO(triton_trace(records))
    tensors = {
        record["tensor"]["name"]: record["tensor"]
        for record in ijson.items(RawTextReader(path), "item")
        if "tensor" in record
    }
    text = TracedTensor("text", "BYTES", (2, 2), tensors["text"]["data"])
    assert traced_strings(text, 4) == NASTY_STRINGS[:2] + NASTY_STRINGS[3:5]
    # The first item of the batch, in Triton's length-prefixed format.
    first = NASTY_STRINGS[0], NASTY_STRINGS[1]
    assert recorded_bytes(text, batching=True) == b"".join(len(s).to_bytes(4, "little") + s for s in first)
    small = TracedTensor("small", "UINT8", (2, 2), tensors["small"]["data"])
    assert recorded_bytes(small, batching=True) == bytes([7, 34])


def test_a_string_holding_the_separator_keeps_its_shape_but_not_its_values(tmp_path):
    # '\",\"' inside one of two strings: where they split cannot be told.
    record = tensor_record(1, "text", np.array([[b'a\\",\\"b', b"c"]], dtype=np.object_))
    traced = list(ijson.items(RawTextReader(io.BytesIO(triton_trace([record]))), "item"))[0]["tensor"]
    with pytest.raises(ValueError, match="separator"):
        recorded_bytes(TracedTensor("text", "BYTES", (1, 2), traced["data"]), batching=True)
    assert traced["shape"] == "1,2"


def test_a_trace_of_a_server_that_ran_the_helper_is_read_and_the_helper_left_out(tmp_path):
    helper = request_records(
        1, "warmup_helper", {"MODELS": np.array([b"model-v1"], dtype=np.object_)}
    )
    helper.insert(-1, tensor_record(1, "REPORT", np.array([REPORT], dtype=np.object_), "TENSOR_BACKEND_OUTPUT"))
    records = helper + request_records(2, *v1_request(1, 3)) + request_records(3, *v1_request(2, 5))
    path = tmp_path / "trace.json"
    path.write_bytes(triton_trace(records))
    repository = tmp_path / "repo"
    (repository / "model-v1").mkdir(parents=True)
    (repository / "model-v1" / "config.pbtxt").write_bytes((PROJECT_REPOSITORY / "model-v1" / "config.pbtxt").read_bytes())
    profile = profile_traffic([path], repository_configs(repository))
    assert profile.requests == 2
    assert "warmup_helper" not in profile.other_models
    assert profile.helper_requests == 1


def test_a_value_without_its_end_is_a_broken_file_not_a_memory_hog(tmp_path):
    path = tmp_path / "endless.json"
    path.write_bytes(b'[{"id":1,"activity":"TENSOR_QUEUE_INPUT","tensor":{"name":"x","data":"' + b"1," * 5000)
    summary = ReadSummary()
    # Cut inside the value: what came before counts, the file is cut short.
    assert list(read_requests([path], summary=summary)) == []
    assert str(path) in summary.truncated
    with pytest.raises(RawTextError, match="runs on for more than 100 bytes"):
        RawTextReader(io.BytesIO(path.read_bytes() + b"x"), max_value_bytes=100, chunk_bytes=64).read()


def test_a_really_broken_file_names_what_was_found(tmp_path):
    path = tmp_path / "broken.json"
    path.write_bytes(b'[{"id":1,"timestamps":[{"name":"HTTP_RECV_START","ns":1}]},{"id":2 "oops"}]')
    with pytest.raises(TraceError, match=r"not Triton's trace format near byte \d+: .*") as caught:
        list(read_requests([path]))
    assert "INT8" not in str(caught.value)
