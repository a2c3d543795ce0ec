"""Every kind of model a real repository holds, on the real server, modelled
on Triton's own warmup tests (server ``qa/L0_warmup``): a float add/sub
model, sequence models with START/READY controls (libtorch int32, and a
Python one with a string data file), string identity with zero and random
data, a decoupled Python model, a failing model; plus ensembles: a plain one,
a nested one, and a composing model shared by two ensembles; and a model
with two versions.

Each case is proven from Triton itself: its log's "is running warmup
sample" lines (and no "failed to run warmup"), the configs it serves, and
its statistics.
"""

import json
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import serialize_byte_tensor

from triton_warmup.client import warm as warm_cli
from triton_warmup.report import WarmupReport
from live_server import (
    model_statistics,
    model_states,
    repository_snapshot,
    served_config,
    warmup_runs,
)
from target_models import (
    write_addsub_model,
    write_decoupled_model,
    write_ensemble,
    write_failing_infer_model,
    write_sequence_string_model,
    write_string_identity_model,
    write_two_version_model,
)

# Two servers start; Python models take a second or two each to load, the
# preflight loads a scratch copy of each first. Minutes for a busy machine.
MODULE_TIMEOUT_S = 420

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

# Texts of 3 and 11 words: the tokenizer gives text-encoder those lengths.
SHORT_TEXT, LONG_TEXT = b"three word text", b"a much longer text that has eleven words in it too"
EXAMPLE_KINDS = ["tokenizer", "text-encoder", "embed", "session-encoder"]


def warm(run_cli, server, *args):
    result = run_cli(warm_cli.main, "-u", server.http_url, "--json", *args)
    report = WarmupReport.from_dict(json.loads(result.stdout)) if result.stdout.strip() else None
    return result, report


def no_warmup_error(server):
    return "failed to run warmup" not in server.log_text()


def sample_runs(server, model):
    """(sample, iteration) of each warmup run Triton logged for ``model``."""
    return [(run["sample"], run["iteration"]) for run in warmup_runs(server, model)]


@pytest.fixture(scope="module")
def examples(start_server, run_cli):
    """The example repository warmed with --all, as make run does."""
    server = start_server("kinds_examples")
    before = repository_snapshot(server.model_repository)
    result, report = warm(run_cli, server, "--all", "--group-size-max", "3")
    return server, before, result, report


def test_all_warms_every_kind_of_the_example_repository(examples):
    server, _, result, report = examples
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(EXAMPLE_KINDS) <= set(report.loaded)
    kinds = {entry.name: entry.kind for entry in report.models}
    assert kinds["embed"] == "ensemble" and kinds["session-encoder"] == "sequence" and kinds["tokenizer"] == "plain"
    states = model_states(server)
    assert all(states[name] == "READY" for name in report.loaded)
    # The ensemble comes after its members, and lists them.
    names = [entry.name for entry in report.models]
    assert names.index("embed") > max(names.index("tokenizer"), names.index("text-encoder"))
    assert report.entry("embed").members == ["tokenizer", "text-encoder"]
    assert no_warmup_error(server)


def test_an_ensemble_config_is_never_given_model_warmup(examples):
    server, before, _, _ = examples
    assert repository_snapshot(server.model_repository)["embed/config.pbtxt"] == before["embed/config.pbtxt"]
    assert not served_config(server, "embed").get("model_warmup")


def test_a_sequence_models_samples_carry_its_controls_and_ran_in_triton(examples):
    server, _, _, report = examples
    config = served_config(server, "session-encoder")
    for sample in config["model_warmup"]:
        assert set(sample["inputs"]) == {"INPUT__0", "START__1", "READY__2"}
        assert sample["inputs"]["START__1"]["input_data_file"].startswith("warmup_helper_controls/")
    runs = sample_runs(server, "session-encoder")
    assert len(runs) == len(config["model_warmup"]) * 3
    # The preflight sent real sequences to a scratch copy: each item its own.
    assert report.entry("session-encoder").preflight.samples_checked == len(config["model_warmup"])
    # After READY a real sequence works, and the controls' file is the true value.
    control_file = server.model_repository / "session-encoder" / "warmup" / config["model_warmup"][0]["inputs"]["START__1"]["input_data_file"]
    assert np.frombuffer(control_file.read_bytes(), np.int32).tolist() == [1]
    with httpclient.InferenceServerClient(server.http_url) as client:
        step = httpclient.InferInput("INPUT__0", [1, 2, 16], "FP32")
        step.set_data_from_numpy(np.ones((1, 2, 16), np.float32))
        answer = client.infer("session-encoder", [step], sequence_id=42, sequence_start=True, sequence_end=True)
    assert answer.as_numpy("OUTPUT__0").shape == (1, 32)


@pytest.fixture(scope="module")
def qa(start_server, run_cli):
    """Triton's QA cases in one repository, and the ensembles."""
    server = start_server("kinds_qa")
    repository = server.model_repository
    write_addsub_model(repository, "addsub")
    write_sequence_string_model(repository, "sequence-string")
    write_string_identity_model(repository, "string-identity")
    write_decoupled_model(repository, "decoupled")
    write_failing_infer_model(repository, "failing-infer")
    write_two_version_model(repository, "model-v2", "two-versions")
    texts = repository / "embed" / "warmup"
    texts.mkdir()
    for name, text in (("short.bin", SHORT_TEXT), ("long.bin", LONG_TEXT)):
        (texts / name).write_bytes(serialize_byte_tensor(np.array([text], dtype=np.object_)).item())
    text_io = ('{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }', '{ name: "EMBEDDING" data_type: TYPE_FP32 dims: [ 64 ] }')
    # A second ensemble over the same encoder, and one that holds an ensemble.
    write_ensemble(
        repository, "embed-again",
        [
            'model_name: "tokenizer" model_version: -1 input_map { key: "TEXT" value: "TEXT" } '
            'output_map { key: "input_ids" value: "ids" } output_map { key: "attention_mask" value: "mask" }',
            'model_name: "text-encoder" model_version: -1 input_map { key: "input_ids" value: "ids" } '
            'input_map { key: "attention_mask" value: "mask" } output_map { key: "embedding" value: "EMBEDDING" }',
        ],
        *text_io,
    )
    write_ensemble(
        repository, "outer",
        ['model_name: "embed" model_version: -1 input_map { key: "TEXT" value: "TEXT" } '
         'output_map { key: "EMBEDDING" value: "EMBEDDING" }'],
        *text_io,
    )
    return server


QA_PLAN = {
    "defaults": {"batch_sizes": [1, 2]},
    "models": {
        "addsub": {"group_size_max": 1, "data": {"INPUT__0": "zero", "INPUT__1": "random"}},
        "session-encoder": {"group_size_max": 2},
        "sequence-string": {"group_size_max": 1, "batch_sizes": [8], "data": {"INPUT": {"file": "raw_string_data"}}},
        "string-identity": {"samples": [
            {"batch_size": 1, "inputs": {"INPUT0": [16]}, "data": {"INPUT0": "zero"}},
            {"batch_size": 1, "inputs": {"INPUT0": [16]}, "data": {"INPUT0": "random"}},
        ]},
        "decoupled": {"group_size_max": 1, "batch_sizes": [1]},
        "two-versions": {"group_size_max": 1, "batch_sizes": [1]},
    },
}


@pytest.fixture(scope="module")
def qa_warmed(qa, run_cli, tmp_path_factory):
    plan = tmp_path_factory.mktemp("plans") / "qa.json"
    plan.write_text(json.dumps(QA_PLAN))
    result, report = warm(run_cli, qa, "--plan", str(plan))
    return result, report


def test_triton_runs_every_qa_kinds_samples_without_a_warmup_error(qa, qa_warmed):
    result, report = qa_warmed
    assert result.returncode == 0, result.stdout + result.stderr
    for name in QA_PLAN["models"]:
        assert report.entry(name).ready, report.entry(name)
        config = served_config(qa, name)
        samples = {sample["name"] for sample in config["model_warmup"]}
        ran = {sample for sample, iteration in sample_runs(qa, name) if iteration == 1}
        assert samples and samples <= ran, (name, samples, ran)
    assert no_warmup_error(qa)
    kinds = {entry.name: entry.kind for entry in report.models}
    assert kinds["decoupled"] == "decoupled" and kinds["sequence-string"] == "sequence"


def test_string_samples_take_zero_random_and_file_data(qa, qa_warmed):
    identity = served_config(qa, "string-identity")["model_warmup"]
    assert [("zero_data" in sample["inputs"]["INPUT0"], "random_data" in sample["inputs"]["INPUT0"]) for sample in identity] == [
        (True, False), (False, True)
    ]
    (sequence,) = served_config(qa, "sequence-string")["model_warmup"]
    assert sequence["inputs"]["INPUT"]["input_data_file"] == "raw_string_data" and sequence["batch_size"] == 8
    assert set(sequence["inputs"]) == {"INPUT", "START", "READY"}


def test_every_served_version_runs_the_samples(qa, qa_warmed):
    _, report = qa_warmed
    entry = report.entry("two-versions")
    assert entry.versions == ["2", "1"]
    (sample,) = served_config(qa, "two-versions")["model_warmup"]
    # Triton warms each version's instance: the sample's first run twice.
    assert sample_runs(qa, "two-versions").count((sample["name"], 1)) == 2
    # The preflight sent it to each version too.
    assert entry.preflight.samples_checked == 1


def test_a_decoupled_model_still_streams_after_its_warmup(qa, qa_warmed):
    import tritonclient.grpc as grpcclient

    responses = []
    with grpcclient.InferenceServerClient(qa.grpc_url) as client:
        client.start_stream(callback=lambda result, error: responses.append(error or result))
        values = grpcclient.InferInput("INPUT", [4], "FP32")
        values.set_data_from_numpy(np.full(4, 5.0, np.float32))
        client.async_stream_infer("decoupled", [values], enable_empty_final_response=True)
        client.stop_stream()
    outputs = [response.as_numpy("OUTPUT").tolist() for response in responses if response.as_numpy("OUTPUT") is not None]
    assert outputs == [[5.0] * 4, [6.0] * 4]


def test_a_failing_model_is_reported_with_nothing_written_and_the_server_up(qa, run_cli):
    before = repository_snapshot(qa.model_repository)
    result, report = warm(run_cli, qa, "--models", "failing-infer", "addsub", "--group-size-max", "1",
                          "--batch-sizes", "1")
    assert result.returncode == 1
    failing = report.entry("failing-infer")
    assert not failing.ready and "An Error Occurred" in failing.error and "\n" not in failing.error
    assert "nothing was written or loaded" in failing.error
    assert report.entry("addsub").ready
    after = repository_snapshot(qa.model_repository)
    assert after["failing-infer/config.pbtxt"] == before["failing-infer/config.pbtxt"]
    assert qa.is_running() and model_states(qa).get("failing-infer") != "READY"


@pytest.fixture(scope="module")
def ensembles_warmed(qa, run_cli, tmp_path_factory):
    plan = tmp_path_factory.mktemp("plans") / "ensembles.json"
    plan.write_text(json.dumps({"models": {
        "embed": {"samples": [
            {"batch_size": 1, "inputs": {"TEXT": [1]}, "data": {"TEXT": {"file": "short.bin"}}},
            {"batch_size": 2, "inputs": {"TEXT": [1]}, "data": {"TEXT": {"file": "long.bin"}}},
        ]},
        "embed-again": {"group_size_max": 1, "batch_sizes": [4]},
        "outer": {"group_size_max": 1, "batch_sizes": [1]},
    }}))
    return warm(run_cli, qa, "--plan", str(plan))


def test_ensembles_warm_their_members_once_with_the_shapes_they_send(qa, ensembles_warmed):
    result, report = ensembles_warmed
    assert result.returncode == 0, result.stdout + result.stderr
    assert [entry.name for entry in report.models] == ["tokenizer", "text-encoder", "embed", "embed-again", "outer"]
    assert all(entry.ready for entry in report.models)
    encoder = report.entry("text-encoder")
    assert encoder.warmed_for == ["embed", "embed-again", "outer"]
    # The lengths the tokenizer gave each ensemble's texts: 3 and 11 words
    # from embed's files, 1 token for the empty texts of the others.
    shapes = {
        (sample["batch_size"], tuple(int(dim) for dim in sample["inputs"]["input_ids"]["dims"]))
        for sample in served_config(qa, "text-encoder")["model_warmup"]
    }
    assert shapes == {(1, (3,)), (2, (11,)), (4, (1,)), (1, (1,))}, shapes
    runs = sample_runs(qa, "text-encoder")
    assert len(runs) == 4 * 3 and no_warmup_error(qa)
    # Triton's log: every composing model ran every sample it serves.
    for member in ("tokenizer", "text-encoder"):
        served = {sample["name"] for sample in served_config(qa, member)["model_warmup"]}
        assert served == {sample for sample, iteration in sample_runs(qa, member) if iteration == 1}, member
    assert report.entry("outer").members == ["tokenizer", "text-encoder", "embed"]


def test_the_first_request_through_an_ensemble_runs_warmed_shapes(qa, ensembles_warmed, measured):
    before = model_statistics(qa, "text-encoder")
    with httpclient.InferenceServerClient(qa.http_url) as client:
        text = httpclient.InferInput("TEXT", [2, 1], "BYTES")
        text.set_data_from_numpy(np.array([[LONG_TEXT], [LONG_TEXT]], dtype=np.object_))
        answer = client.infer("embed", [text])
    assert answer.as_numpy("EMBEDDING").shape == (2, 64)
    # Triton counts a request when it releases it, which can be after the
    # response arrived: wait for the count (bounded by the module's timeout).
    after = model_statistics(qa, "text-encoder")
    while int(after["inference_count"]) == int(before["inference_count"]):
        time.sleep(0.01)
        after = model_statistics(qa, "text-encoder")
    # The ensemble sent text-encoder one request at a shape the warmup ran.
    assert int(after["inference_count"]) - int(before["inference_count"]) == 2
    first_ns = int(after["inference_stats"]["compute_infer"]["ns"]) - int(before["inference_stats"]["compute_infer"]["ns"])
    warm_runs = [batch for batch in after["batch_stats"] if int(batch["batch_size"]) == 2]
    steady_ns = int(warm_runs[0]["compute_infer"]["ns"]) / max(int(warm_runs[0]["compute_infer"]["count"]), 1)
    measured(f"first request through embed after READY: text-encoder compute {first_ns / 1e6:.2f} ms "
             f"(its batch-2 runs so far average {steady_ns / 1e6:.2f} ms)")
