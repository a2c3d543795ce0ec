"""The preflight record: samples that passed are not run again while the
model's files, its config and the server stay the same, and a record that is
outdated, corrupt, foreign or tampered with is never trusted."""

import json
import multiprocessing
import os

import pytest
from google.protobuf import text_format

from triton_warmup.helper.config_rewrite import read_config
from triton_warmup.helper.job_planning import plan_jobs
from triton_warmup.helper.load_jobs import run_job
from triton_warmup.helper.preflight_record import (
    fingerprint,
    identity_from_argv,
    known_good,
    record_path,
    server_identity,
    write_record,
)
from triton_warmup.helper.repository_guard import model_lock
from triton_warmup.report import PREFLIGHT_RECORD, PREFLIGHT_SCRATCH, Status
from repository_fixtures import warmup_request
from test_preflight import Infer, control_for, job_for, preflight

IDENTITY = "server-and-backends-digest"


def warm(repository, identity=IDENTITY, group_max=3):
    (job,) = plan_jobs(repository, warmup_request(group_max=group_max, batch_sizes=(1,)))
    control, infer = control_for(repository), Infer()
    entry = run_job(job, control, preflight=preflight(infer, server_identity=identity))
    assert entry.status == Status.READY, entry.error
    return entry, control, infer


def test_a_restart_on_an_unchanged_repository_runs_no_sample_and_loads_once(repository):
    job_for(repository)
    first, control, infer = warm(repository)
    assert first.preflight.how == PREFLIGHT_SCRATCH and len(infer.calls) == 3
    assert record_path(repository / "model-v1").is_file()
    # A fresh server: the model is not loaded, its config already planned.
    again, control, infer = warm(repository)
    assert again.preflight.how == PREFLIGHT_RECORD
    assert again.preflight.samples_known_good == again.preflight.samples_recorded == 3
    assert infer.calls == [] and [call[:2] for call in control.calls] == [("load", "model-v1")]


def test_only_the_samples_the_record_lacks_are_run(repository):
    job_for(repository)
    warm(repository, group_max=3)
    wider, _, infer = warm(repository, group_max=5)
    assert wider.preflight.how == PREFLIGHT_SCRATCH and wider.preflight.samples_recorded == 3
    assert sorted(shapes["mask"][1] for _, _, shapes in infer.calls) == [4, 5]


@pytest.mark.parametrize(
    "change",
    [
        "model file",
        "model file, same size",
        "data file",
        "config input",
        "server",
    ],
)
def test_any_change_to_files_config_or_server_voids_the_record(repository, change):
    job_for(repository)
    warm(repository)
    identity = IDENTITY
    model = repository / "model-v1"
    if change == "model file":
        (model / "1" / "model.pt").write_bytes(b"other torchscript bytes")
    elif change == "model file, same size":
        stat = (model / "1" / "model.pt").stat()
        os.utime(model / "1" / "model.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    elif change == "data file":
        (model / "warmup").mkdir(exist_ok=True)
        (model / "warmup" / "new.bin").write_bytes(b"\0" * 8)
    elif change == "config input":
        _, config = read_config(model)
        config.input[0].optional = True
        (model / "config.pbtxt").write_text(text_format.MessageToString(config))
    else:
        identity = "another tritonserver"
    again, _, infer = warm(repository, identity=identity)
    assert again.preflight.how == PREFLIGHT_SCRATCH and again.preflight.samples_recorded == 0
    assert len(infer.calls) == 3


@pytest.mark.parametrize("damage", ["tampered", "corrupt", "foreign", "empty"])
def test_a_damaged_or_foreign_record_is_ignored(repository, damage):
    job_for(repository)
    warm(repository)
    path = record_path(repository / "model-v1")
    document = json.loads(path.read_text())
    if damage == "tampered":
        document["record"]["samples"].append("0" * 64)
        path.write_text(json.dumps(document))
    elif damage == "corrupt":
        path.write_text(path.read_text()[:40])
    elif damage == "foreign":
        path.write_text(path.read_text().replace('"model-v1"', '"model-v2"'))
    else:
        path.write_text("")
    again, _, infer = warm(repository)
    assert again.preflight.how == PREFLIGHT_SCRATCH and len(infer.calls) == 3
    # The next preflight writes a whole record again.
    assert json.loads(path.read_text())["record"]["model"] == "model-v1"


def test_no_identity_no_record(repository):
    job_for(repository)
    warm(repository, identity=None)
    assert not record_path(repository / "model-v1").exists()
    assert identity_from_argv(None) is None
    assert server_identity("/no/such/tritonserver", "/no/such/backends") is None


def test_the_server_identity_follows_the_binary_and_the_backends(tmp_path):
    binary = tmp_path / "tritonserver"
    binary.write_bytes(b"server")
    backend = tmp_path / "backends" / "pytorch"
    backend.mkdir(parents=True)
    (backend / "libtriton_pytorch.so").write_bytes(b"backend")
    before = identity_from_argv([str(binary), f"--backend-directory={tmp_path / 'backends'}"])
    assert before == server_identity(str(binary), str(tmp_path / "backends")) is not None
    (backend / "libtriton_pytorch.so").write_bytes(b"a rebuilt backend")
    assert server_identity(str(binary), str(tmp_path / "backends")) != before


def _write_under_the_lock(model_dir, current, sample_bytes, rounds):
    from tritonclient.grpc import model_config_pb2

    sample = model_config_pb2.ModelWarmup()
    sample.ParseFromString(sample_bytes)
    for _ in range(rounds):
        with model_lock(model_dir):
            write_record(model_dir, "model-v1", current, [sample])


def test_two_replicas_writing_at_once_leave_one_whole_record(repository):
    job = job_for(repository, group_max=2)
    model_dir = repository / "model-v1"
    current = fingerprint(model_dir, [model_dir / "1" / "model.pt"], ["1"], job.rewrite.config, IDENTITY)
    samples = list(job.rewrite.config.model_warmup)
    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=_write_under_the_lock, args=(model_dir, current, sample.SerializeToString(), 25))
        for sample in samples
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    # Whole, valid, and holding both replicas' samples.
    assert len(known_good(model_dir, "model-v1", current, job.rewrite.config)) == len(samples) == 2


def test_a_record_that_already_holds_every_sample_is_not_rewritten(repository):
    job_for(repository)
    warm(repository)
    path = record_path(repository / "model-v1")
    before = path.stat().st_mtime_ns, path.read_bytes()
    os.utime(path, ns=(before[0] - 10**9, before[0] - 10**9))
    warm(repository)
    assert path.stat().st_mtime_ns == before[0] - 10**9 and path.read_bytes() == before[1]
