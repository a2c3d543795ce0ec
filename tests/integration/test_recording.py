"""Recording traffic on a real deployment: a server started with
``triton-warmup-serve`` and tritonserver's own spelling of the trace flags
(``--trace-config level=TENSORS``), warmed through the helper at start (so
its JSON report lands in the trace unescaped), then fed text full of quotes,
brackets and newlines, INT8 codes that are quotes and commas, request ids
with quotes, and requests through an ensemble. The trace is Triton's, as it
wrote it; the plan, the recorded data and the coverage must come out right.
"""

import json
import shutil
import subprocess
import sys
import textwrap
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from triton_warmup.client import coverage as coverage_command
from triton_warmup.client import from_trace, warm
from triton_warmup.embedded import serve
from triton_warmup.traffic.plan import traced_strings
from triton_warmup.traffic.trace import read_requests
from triton_warmup.embedded import free_port
from live_server import COMMANDS, served_config
from target_models import write_int8_model

# Two servers start (one records, one warms from the plan); the Python models
# load in a second or two each. Minutes leave room for a busy machine.
MODULE_TIMEOUT_S = 300

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

# Texts a user types: quotes, backslashes, brackets, newlines, the text that
# ends a data value in Triton's trace, non-ASCII.
TEXTS = [
    'she said "hello" and left',
    "a path C:\\temp\\new and [brackets] {braces}",
    'tricky ","shape":"1","dtype":"BYTES"}} end',
    "line one\nline two\ttab",
    "caf\u00e9 na\u00efve \u2603 snow",
]
# INT8 codes that are a quote, a comma, a backslash, NUL and -1 as characters.
CODES = [[34, 44, 92], [0, -1, 7], [34, 34, 34], [1, 2, 3]]

# Sends the traffic once the warmup is done; writes what it sent.
TRAFFIC = textwrap.dedent('''
    import json, sys
    import numpy as np
    import tritonclient.http as httpclient
    url, sent_path = sys.argv[1], sys.argv[2]
    texts, codes = json.loads(sys.argv[3]), json.loads(sys.argv[4])
    sent = {"tokenizer": [], "int8-codes": [], "embed": []}
    with httpclient.InferenceServerClient(url) as client:
        for index, text in enumerate(texts):
            batch = 1 + index % 2
            array = np.array([[text.encode()]] * batch, dtype=np.object_)
            for model in ("tokenizer", "embed"):
                tensor = httpclient.InferInput("TEXT", list(array.shape), "BYTES")
                tensor.set_data_from_numpy(array)
                client.infer(model, [tensor], request_id=f'req "{index}" {model}')
                sent[model].append([batch, text])
        for row in codes:
            array = np.array([row], dtype=np.int8)
            tensor = httpclient.InferInput("codes", list(array.shape), "INT8")
            tensor.set_data_from_numpy(array)
            client.infer("int8-codes", [tensor])
            sent["int8-codes"].append(row)
    json.dump(sent, open(sent_path, "w"))
''')


@pytest.fixture(scope="module")
def recording(template_repository, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("recording")
    repository = workdir / "model_repository"
    shutil.copytree(template_repository, repository)
    write_int8_model(repository, "int8-codes")
    trace, sent = workdir / "trace.json", workdir / "sent.json"
    script = workdir / "traffic.py"
    script.write_text(TRAFFIC)
    http = free_port()
    command = [
        str(COMMANDS / "triton-warmup-serve"), "--model-repository", str(repository), "--workdir", str(workdir / "server"),
        "--http-port", str(http), "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
        # tritonserver's own spelling: the flag, then its value.
        "--trace-config", f"triton,file={trace}", "--trace-config", "level=TIMESTAMPS",
        "--trace-config", "level=TENSORS", "--trace-config", "rate=1", "--trace-config", "count=-1",
        "--", "sh", "-c",
        f"{COMMANDS / 'triton-warmup'} -u localhost:{http} --models tokenizer int8-codes embed --group-size-max 2 "
        f"&& {sys.executable} {script} localhost:{http} {sent} '{json.dumps(TEXTS)}' '{json.dumps(CODES)}'",
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=MODULE_TIMEOUT_S - 60)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return repository, trace, json.loads(sent.read_text())


@pytest.fixture(scope="module")
def traffic_plan(recording, run_cli, tmp_path_factory):
    repository, trace, _ = recording
    plan = tmp_path_factory.mktemp("plan") / "traffic.yaml"
    result = run_cli(from_trace.main, str(trace), "-r", str(repository), "-o", str(plan), "--data", "recorded", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return plan, json.loads(result.stdout)


def test_the_trace_holds_what_breaks_triton_json(recording):
    _, trace, _ = recording
    text = trace.read_bytes()
    # Triton wrote the helper's report and the users' quotes unescaped.
    assert b'"data":"\\"{"models":' in text
    assert b'she said "hello"' in text and b'req "0" tokenizer' in text
    with pytest.raises(ValueError):
        json.loads(text)


def test_every_request_is_read_and_the_helpers_are_not_counted(recording, traffic_plan):
    _, _, sent = recording
    _, summary = traffic_plan
    requests = {model["model"]: model["requests"] for model in summary["models"]}
    # Triton records what embed sent its members as their own requests too.
    assert requests == {
        "tokenizer": 2 * len(TEXTS),
        "text-encoder": len(TEXTS),
        "int8-codes": len(CODES),
    }
    assert "warmup_helper" not in json.dumps(summary["notes"])
    assert any("embed is an ensemble" in note for note in summary["notes"])


def test_recorded_strings_and_codes_come_back_byte_for_byte(recording, traffic_plan):
    repository, trace, sent = recording
    plan_path, summary = traffic_plan
    # The reader gives back every string as the client sent it.
    texts = [
        traced_strings(request.inputs["TEXT"], request.inputs["TEXT"].shape[0])
        for request in read_requests([trace])
        if request.model == "tokenizer"
    ]
    # Sent to the tokenizer directly, and by the ensemble on the way to text-encoder.
    expected = [[text.encode()] * batch for batch, text in sent["tokenizer"] + sent["embed"]]
    assert sorted(texts) == sorted(expected)
    plan = yaml.safe_load(plan_path.read_text())
    assert "embed" not in plan["models"]
    # The plan keeps the helper's policy for strings, and says why.
    assert all("data" not in sample for sample in plan["models"]["tokenizer"]["samples"])
    (tokenizer,) = [model for model in summary["models"] if model["model"] == "tokenizer"]
    assert "what users sent" in tokenizer["data_notes"]["TEXT"]
    # The first request's INT8 codes, exactly.
    (codes_sample,) = plan["models"]["int8-codes"]["samples"]
    data = (repository / "int8-codes" / "warmup" / codes_sample["data"]["codes"]["file"]).read_bytes()
    assert np.frombuffer(data, np.int8).tolist() == CODES[0]
    assert codes_sample["requests"] == len(CODES)


def test_the_plan_warms_and_covers_everything_through_the_ensemble(recording, traffic_plan, run_cli, start_server):
    repository, trace, _ = recording
    plan_path, _ = traffic_plan
    # A fresh server on the recorded repository warms from the plan; Triton
    # reads the recorded INT8 codes as its warmup data.
    server = start_server("from_recording", template=repository)
    result = run_cli(warm.main, "-u", server.http_url, "--plan", str(plan_path))
    assert result.returncode == 0, result.stdout + result.stderr
    codes = served_config(server, "int8-codes")["model_warmup"]
    assert all(sample["inputs"]["codes"]["input_data_file"].startswith("traffic/") for sample in codes)
    assert "failed to run warmup" not in server.log_text()
    covered = run_cli(
        coverage_command.main, str(trace), "-r", str(server.model_repository), "--json", "--min-coverage", "1"
    )
    assert covered.returncode == 0, covered.stdout + covered.stderr
    rows = {row["model"]: row for row in json.loads(covered.stdout)["models"]}
    assert rows["embed"]["ensemble"] and rows["embed"]["requests"] == len(TEXTS) and rows["embed"]["covered"] == len(TEXTS)
    assert all(row["share"] == 1.0 for row in rows.values())


def test_per_model_trace_settings_record_only_the_model_that_matters(start_server, tmp_path):
    """docs/traffic.md: start with tracing off, turn it on for one model."""
    trace = tmp_path / "one-model.json"
    flags = ["--trace-config", f"triton,file={trace}", "--trace-config", "level=OFF"]
    server = start_server("per_model_trace", extra_args=serve.tritonserver_flags(flags))
    with httpclient.InferenceServerClient(server.http_url) as client:
        for model in ("model-v1", "text-encoder"):
            client.load_model(model)
        # The request docs/traffic.md shows, as curl sends it.
        setting = {"trace_level": ["TIMESTAMPS", "TENSORS"], "trace_rate": "1", "trace_count": "-1"}
        posted = urllib.request.Request(
            f"http://{server.http_url}/v2/models/text-encoder/trace/setting", data=json.dumps(setting).encode(),
            method="POST",
        )
        with urllib.request.urlopen(posted, timeout=30) as answer:
            assert answer.status == 200
        for _ in range(3):
            ids = np.ones((1, 5), np.int64)
            tensors = [httpclient.InferInput(name, [1, 5], "INT64") for name in ("input_ids", "attention_mask")]
            for tensor in tensors:
                tensor.set_data_from_numpy(ids)
            client.infer("text-encoder", tensors)
            x = httpclient.InferInput("x", [1, 2, 64], "FP32")
            x.set_data_from_numpy(np.ones((1, 2, 64), np.float32))
            mask = httpclient.InferInput("mask", [1, 2], "INT64")
            mask.set_data_from_numpy(np.ones((1, 2), np.int64))
            client.infer("model-v1", [x, mask])
    server.stop()
    requests = list(read_requests([trace]))
    assert [request.model for request in requests] == ["text-encoder"] * 3
