"""Model kinds read from configs, the control inputs of sequence samples,
and the requests each kind takes."""

import shutil

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from repository_fixtures import PROJECT_REPOSITORY, RecordingControl, snapshot, warmup_request
from triton_warmup.helper.job_planning import plan_jobs
from triton_warmup.helper.load_jobs import run_job
from triton_warmup.helper.model_kind import Kind, kind_of, requests_for
from triton_warmup.helper.request import parse_plan_document
from triton_warmup.report import Status


def config_of(name):
    return text_format.Parse((PROJECT_REPOSITORY / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def parsed(text):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_the_example_repository_holds_every_kind():
    assert kind_of(config_of("model-v1")).kind == Kind.PLAIN
    assert kind_of(config_of("tokenizer")).kind == Kind.PLAIN
    embed = kind_of(config_of("embed"))
    assert embed.kind == Kind.ENSEMBLE and [step.model for step in embed.steps] == ["tokenizer", "text-encoder"]
    session = kind_of(config_of("session-encoder"))
    assert session.kind == Kind.SEQUENCE and not session.decoupled
    assert [(control.name, control.kind, control.value) for control in session.controls] == [
        ("START__1", "START", np.int32(1).tobytes()),
        ("READY__2", "READY", np.int32(1).tobytes()),
    ]


@pytest.mark.parametrize(
    "control, data_type, value",
    [
        ("kind: CONTROL_SEQUENCE_START fp32_false_true: [0, 1]", "TYPE_FP32", np.float32(1).tobytes()),
        ("kind: CONTROL_SEQUENCE_END bool_false_true: [false, true]", "TYPE_BOOL", b"\x01"),
        ("kind: CONTROL_SEQUENCE_READY int32_false_true: [1, 0]", "TYPE_INT32", np.int32(0).tobytes()),
        ("kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64", "TYPE_UINT64", np.uint64(1).tobytes()),
        ("kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING", "TYPE_STRING", b"\x0d\0\0\0warmup_helper"),
    ],
)
def test_each_control_kind_gets_the_value_of_a_one_request_sequence(control, data_type, value):
    config = parsed(f'sequence_batching {{ control_input [ {{ name: "C" control [ {{ {control} }} ] }} ] }}')
    (found,) = kind_of(config).controls
    assert model_config_pb2.DataType.Name(found.data_type) == data_type and found.value == value


def test_decoupled_and_implicit_state_are_told_apart():
    decoupled = kind_of(parsed("model_transaction_policy { decoupled: true }"))
    assert decoupled.kind == Kind.DECOUPLED and decoupled.decoupled and decoupled.cannot_warm() is None
    stateful = kind_of(parsed('sequence_batching { state [ { input_name: "S_IN" output_name: "S_OUT" } ] }'))
    assert "S_IN" in stateful.cannot_warm() and "implicit state" in stateful.cannot_warm()


def test_a_sequence_sample_of_batch_n_goes_as_n_one_request_sequences_without_controls():
    config = config_of("session-encoder")
    arrays = {"INPUT__0": np.zeros((3, 5, 16), np.float32), "START__1": np.ones((3, 1), np.int32)}
    requests = requests_for(kind_of(config), "session-encoder", "", config, arrays, iter(range(100, 200)))
    assert [request.correlation_id for request in requests] == [100, 101, 102]
    assert all(request.start and request.end for request in requests)
    assert [list(request.inputs) for request in requests] == [["INPUT__0"]] * 3
    assert {request.inputs["INPUT__0"].shape for request in requests} == {(1, 5, 16)}


def sequence_repository(tmp_path):
    repository = tmp_path / "repo"
    (repository / "session-encoder").mkdir(parents=True)
    shutil.copy(PROJECT_REPOSITORY / "session-encoder" / "config.pbtxt", repository / "session-encoder")
    return repository


def test_sequence_samples_carry_the_controls_as_data_files_written_with_the_config(tmp_path):
    repository = sequence_repository(tmp_path)
    (job,) = plan_jobs(repository, warmup_request(models=("session-encoder",), group_max=2, batch_sizes=(1, 4)))
    samples = job.rewrite.config.model_warmup
    assert len(samples) == 4
    for sample in samples:
        assert list(sample.inputs["START__1"].dims) == [1] and list(sample.inputs["READY__2"].dims) == [1]
        assert sample.inputs["START__1"].input_data_file == sample.inputs["READY__2"].input_data_file
    control_file = repository / "session-encoder" / "warmup" / samples[0].inputs["START__1"].input_data_file
    assert not control_file.exists()
    assert run_job(job, RecordingControl()).status == Status.READY
    assert control_file.read_bytes() == np.int32(1).tobytes()
    # The same plan again changes nothing.
    (again,) = plan_jobs(repository, warmup_request(models=("session-encoder",), group_max=2, batch_sizes=(1, 4)))
    assert not again.rewrite.changed


def test_a_failed_load_takes_the_control_files_away_with_the_config(tmp_path):
    repository = sequence_repository(tmp_path)
    before = snapshot(repository)
    (job,) = plan_jobs(repository, warmup_request(models=("session-encoder",), group_max=1, batch_sizes=(1,)))

    def refuse(name):
        raise RuntimeError("failed to load")

    entry = run_job(job, RecordingControl(fail_load=refuse))
    assert entry.status == Status.FAILED and entry.config_restored
    after = {path: data for path, data in snapshot(repository).items() if not path.endswith(".lock")}
    assert after == before and not (repository / "session-encoder" / "warmup").exists()


def test_implicit_state_fails_alone_with_its_reason_and_nothing_written(tmp_path):
    repository = sequence_repository(tmp_path)
    config = repository / "session-encoder" / "config.pbtxt"
    config.write_text(
        config.read_text().replace(
            "sequence_batching {",
            'sequence_batching {\n  state [ { input_name: "MEMORY_IN" output_name: "MEMORY_OUT" '
            "data_type: TYPE_FP32 dims: [ 32 ] } ]",
        )
    )
    (repository / "model-v1").mkdir()
    shutil.copy(PROJECT_REPOSITORY / "model-v1" / "config.pbtxt", repository / "model-v1")
    before = snapshot(repository)
    plan = plan_jobs(repository, parse_plan_document({"defaults": {"group_size_max": 2}, "all_models": True}, "h"))
    assert [job.name for job in plan.jobs] == ["model-v1"]
    (failed,) = plan.failed
    assert failed.name == "session-encoder" and failed.kind == "sequence"
    assert "MEMORY_IN" in failed.error and "implicit state" in failed.error
    assert snapshot(repository) == before
