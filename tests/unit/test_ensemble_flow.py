"""Ensembles: their composing models are warmed with the shapes the
ensemble sends them (learned by running its samples through the steps),
each model once, and the ensemble is loaded after them."""

import shutil

import numpy as np
import pytest
from tritonclient.utils import serialize_byte_tensor

from repository_fixtures import PROJECT_REPOSITORY, RecordingControl, snapshot
from triton_warmup.helper.job_planning import plan_jobs
from triton_warmup.helper.load_jobs import run_jobs
from triton_warmup.helper.request import parse_plan_document
from triton_warmup.helper.requests_mode import run_requests_plan
from triton_warmup.report import Status

HELPER = "warmup_helper"


class EnsembleInfer:
    """Stands in for the composing models: the tokenizer gives one token per
    word of each text, padded to the longest; the encoder an embedding."""

    def __init__(self, fail_model=None):
        self.calls = []
        self.fail_model = fail_model

    def __call__(self, request):
        self.calls.append((request.model, {name: array.shape for name, array in request.inputs.items()}))
        if request.model == self.fail_model:
            raise RuntimeError(f"{request.model}: Error when running inference\nTraceback ...\nValueError: bad text")
        if request.model == "tokenizer":
            texts = request.inputs["TEXT"].reshape(-1)
            length = max(max(len(text.split()) for text in texts), 1)
            ids = np.ones((len(texts), length), np.int64)
            return [{"input_ids": ids, "attention_mask": ids}]
        first = next(iter(request.inputs.values()))
        return [{"embedding": np.zeros((first.shape[0], 64), np.float32)}]


@pytest.fixture
def ensemble_repository(tmp_path):
    repository = tmp_path / "repo"
    for name in ("tokenizer", "text-encoder", "embed", "model-v1"):
        (repository / name / "1").mkdir(parents=True)
        shutil.copy(PROJECT_REPOSITORY / name / "config.pbtxt", repository / name)
    return repository


def texts_file(repository, name, *texts):
    folder = repository / "embed" / "warmup"
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(serialize_byte_tensor(np.array(texts, dtype=np.object_)).item())


def plan(repository, document):
    return plan_jobs(repository, parse_plan_document(document, HELPER), helper_name=HELPER)


def written_shapes(repository, model):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((repository / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return [(sample.batch_size, sorted((n, list(d.dims)) for n, d in sample.inputs.items())) for sample in config.model_warmup]


def test_an_ensemble_warms_its_members_with_the_shapes_it_sends_them_then_loads(ensemble_repository):
    texts_file(ensemble_repository, "short.bin", b"two words")
    texts_file(ensemble_repository, "long.bin", b"a text of exactly seven words here")
    document = {"models": {"embed": {"samples": [
        {"batch_size": 1, "inputs": {"TEXT": [1]}, "data": {"TEXT": {"file": "short.bin"}}},
        {"batch_size": 4, "inputs": {"TEXT": [1]}, "data": {"TEXT": {"file": "long.bin"}}},
    ]}}}
    before = snapshot(ensemble_repository)
    request_plan = plan(ensemble_repository, document)
    # Planning wrote nothing, and the members come before their ensemble.
    assert snapshot(ensemble_repository) == before
    assert request_plan.order == ["tokenizer", "text-encoder", "embed"]
    control, infer = RecordingControl(), EnsembleInfer()
    entries = run_jobs(request_plan, control, infer=infer)
    assert [(entry.name, entry.status) for entry in entries] == [
        ("tokenizer", Status.READY), ("text-encoder", Status.READY), ("embed", Status.READY)
    ]
    # The tokenizer takes the ensemble's input as it is; text-encoder the
    # lengths the tokenizer gave: 2 tokens at batch 1, 7 at batch 4.
    assert written_shapes(ensemble_repository, "tokenizer") == [(1, [("TEXT", [1])]), (4, [("TEXT", [1])])]
    assert written_shapes(ensemble_repository, "text-encoder") == [
        (1, [("attention_mask", [2]), ("input_ids", [2])]),
        (4, [("attention_mask", [7]), ("input_ids", [7])]),
    ]
    # Triton never sees model_warmup in the ensemble's config; it loads last.
    assert (ensemble_repository / "embed" / "config.pbtxt").read_bytes() == before["embed/config.pbtxt"]
    loads = [call[1] for call in control.calls]
    assert loads.index("embed") > max(loads.index("tokenizer"), loads.index("text-encoder"))
    # The tokenizer ran every sample before text-encoder was planned; then
    # the samples went on through the warm text-encoder, the whole way.
    assert [model for model, _ in infer.calls] == ["tokenizer", "tokenizer", "text-encoder", "text-encoder"]
    embed, encoder = entries[2], entries[1]
    assert embed.kind == "ensemble" and embed.members == ["tokenizer", "text-encoder"]
    assert encoder.warmed_for == ["embed"] and encoder.derived_samples == 2


def test_a_member_the_request_names_keeps_its_own_plan_and_gets_the_ensembles_shapes(ensemble_repository):
    document = {
        "defaults": {"group_size_max": 3, "batch_sizes": [1]},
        "models": {"embed": {}, "text-encoder": {"group_size_min": 5, "group_size_max": 5}},
    }
    entries = run_jobs(plan(ensemble_repository, document), RecordingControl(), infer=EnsembleInfer())
    assert all(entry.ready for entry in entries)
    # Its own length 5 first, then the 1 token an empty text gives.
    assert [shape[1][0][1] for shape in written_shapes(ensemble_repository, "text-encoder")] == [[5], [1]]


def test_two_ensembles_sharing_a_model_warm_it_once_with_the_shapes_of_both(ensemble_repository):
    other = ensemble_repository / "embed-long"
    (other / "1").mkdir(parents=True)
    (other / "config.pbtxt").write_text(
        (ensemble_repository / "embed" / "config.pbtxt").read_text().replace('name: "embed"', 'name: "embed-long"')
    )
    (other / "warmup").mkdir()
    (other / "warmup" / "long.bin").write_bytes(serialize_byte_tensor(np.array([b"w " * 9], dtype=np.object_)).item())
    document = {"models": {
        "embed": {"group_size_max": 1, "batch_sizes": [2]},
        "embed-long": {"group_size_max": 1, "batch_sizes": [2], "data": {"TEXT": {"file": "long.bin"}}},
    }}
    control = RecordingControl()
    entries = run_jobs(plan(ensemble_repository, document), control, infer=EnsembleInfer())
    assert [entry.name for entry in entries] == ["tokenizer", "text-encoder", "embed", "embed-long"]
    assert all(entry.ready for entry in entries)
    assert [call[1] for call in control.calls].count("text-encoder") == 1
    assert [shape[1][0][1] for shape in written_shapes(ensemble_repository, "text-encoder")] == [[1], [9]]
    assert entries[1].warmed_for == ["embed", "embed-long"]


def test_a_nested_ensemble_is_followed_through_and_loaded_before_its_parent(ensemble_repository):
    outer = ensemble_repository / "outer"
    (outer / "1").mkdir(parents=True)
    (outer / "config.pbtxt").write_text(
        'name: "outer" platform: "ensemble" max_batch_size: 8\n'
        'input [ { name: "T" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
        'output [ { name: "E" data_type: TYPE_FP32 dims: [ 64 ] } ]\n'
        'ensemble_scheduling { step [ { model_name: "embed" model_version: -1 '
        'input_map { key: "TEXT" value: "T" } output_map { key: "EMBEDDING" value: "E" } } ] }\n'
    )
    request_plan = plan(ensemble_repository, {"models": {"outer": {"group_size_max": 1, "batch_sizes": [1]}}})
    assert request_plan.order == ["tokenizer", "text-encoder", "embed", "outer"]
    control = RecordingControl()
    entries = run_jobs(request_plan, control, infer=EnsembleInfer())
    assert all(entry.ready for entry in entries), entries
    loads = [call[1] for call in control.calls]
    assert loads.index("embed") < loads.index("outer")
    assert entries[-1].members == ["tokenizer", "text-encoder", "embed"]
    assert written_shapes(ensemble_repository, "text-encoder") == [(1, [("attention_mask", [1]), ("input_ids", [1])])]


def test_a_failing_step_leaves_the_ensemble_unloaded_and_its_later_members_cold_and_unloaded(ensemble_repository):
    before = snapshot(ensemble_repository)
    control = RecordingControl()
    entries = run_jobs(
        plan(ensemble_repository, {"models": {"embed": {"group_size_max": 1, "batch_sizes": [1]}}}),
        control,
        infer=EnsembleInfer(fail_model="tokenizer"),
    )
    by_name = {entry.name: entry for entry in entries}
    assert by_name["tokenizer"].ready
    assert not by_name["text-encoder"].ready and "no samples of its own" in by_name["text-encoder"].error
    assert not by_name["embed"].ready
    assert "sample 1 failed at step 'tokenizer'" in by_name["embed"].error
    assert "ValueError: bad text" in by_name["embed"].error and "\n" not in by_name["embed"].error
    assert "embed" not in [call[1] for call in control.calls]
    # Nothing was written for the models that did not warm.
    after = snapshot(ensemble_repository)
    assert after["text-encoder/config.pbtxt"] == before["text-encoder/config.pbtxt"]


def test_all_models_warms_what_it_can_and_reports_an_ensemble_with_a_missing_member(ensemble_repository):
    shutil.rmtree(ensemble_repository / "text-encoder")
    before = snapshot(ensemble_repository)
    request_plan = plan(ensemble_repository, {"defaults": {"group_size_max": 2, "batch_sizes": [1]}, "all_models": True})
    entries = run_jobs(request_plan, RecordingControl(), infer=EnsembleInfer())
    by_name = {entry.name: entry for entry in entries}
    assert by_name["model-v1"].ready and by_name["tokenizer"].ready
    assert not by_name["embed"].ready
    assert "step 2 runs model 'text-encoder'" in by_name["embed"].error and "no model 'text-encoder'" in by_name["embed"].error
    assert snapshot(ensemble_repository)["embed/config.pbtxt"] == before["embed/config.pbtxt"]


def test_requests_mode_sends_an_ensembles_samples_to_the_ensemble(ensemble_repository):
    request_plan = plan(ensemble_repository, {"models": {"embed": {"group_size_max": 1, "batch_sizes": [1, 2]}}})
    infer = EnsembleInfer()
    entries = run_requests_plan(request_plan, infer, is_ready=lambda name: True)
    # Its members have no plan of their own: the ensemble's requests warm them.
    assert [entry.name for entry in entries] == ["embed"]
    assert entries[0].ready and entries[0].requests_sent == 2 * 3
    assert {model for model, _ in infer.calls} == {"embed"}
