"""Rewriting config.pbtxt: merge, atomic write, idempotence, rollback; plan_jobs and run_job."""

import os
import pathlib
import stat
import time

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from triton_warmup.helper.config_rewrite import ConfigRewrite, merge_warmup, parse_config, read_config
from triton_warmup.helper.repository_guard import backup_path, write_atomically
from triton_warmup.helper.job_planning import plan_jobs
from triton_warmup.helper.load_jobs import run_job
from triton_warmup.report import Status
from triton_warmup.helper.warmup_plan import GENERATED_PREFIX, plan_warmup
from triton_warmup.helper.request import INVALID_ARG, NOT_FOUND, WarmupRequestError
from repository_fixtures import RecordingControl, apply, snapshot, warmup_request

HAND_WRITTEN = """
# A person wrote this sample; the helper must keep it.
model_warmup {
  name: "by hand"
  batch_size: 1
  inputs { key: "x" value { data_type: TYPE_FP32 dims: [ 9, 64 ] zero_data: true } }
  inputs { key: "mask" value { data_type: TYPE_INT64 dims: [ 9 ] zero_data: true } }
}
"""


def generated(config):
    return [sample for sample in config.model_warmup if sample.name.startswith(GENERATED_PREFIX)]


def test_rewrite_writes_group_sizes_times_batch_sizes_samples(repository):
    apply(repository, warmup_request(group_max=3))
    _, config = read_config(repository / "model-v1")
    assert len(generated(config)) == 3 * 4
    # Everything else in the config survived the round trip.
    assert config.max_batch_size == 8 and [i.name for i in config.input] == ["x", "mask"]


def test_same_request_twice_leaves_a_byte_identical_file(repository):
    apply(repository, warmup_request())
    first = (repository / "model-v1" / "config.pbtxt").read_bytes()
    jobs = plan_jobs(repository, warmup_request())
    assert not jobs[0].rewrite.changed
    apply(repository, warmup_request())
    assert (repository / "model-v1" / "config.pbtxt").read_bytes() == first


def test_new_plan_replaces_generated_samples_instead_of_appending(repository):
    apply(repository, warmup_request(group_max=4))
    apply(repository, warmup_request(group_max=2, batch_sizes=(1, 2)))
    _, config = read_config(repository / "model-v1")
    assert sorted(sample.name for sample in generated(config)) == sorted(
        f"{GENERATED_PREFIX}group{g}_batch{b}" for g in (1, 2) for b in (1, 2)
    )


def test_hand_written_samples_are_kept_first(repository):
    path = repository / "model-v1" / "config.pbtxt"
    path.write_text(path.read_text() + HAND_WRITTEN)
    apply(repository, warmup_request(group_max=2))
    apply(repository, warmup_request(group_max=3))
    _, config = read_config(repository / "model-v1")
    assert config.model_warmup[0].name == "by hand"
    assert [s.name for s in config.model_warmup].count("by hand") == 1
    assert len(config.model_warmup) == 1 + 3 * 4


def test_unchanged_plan_does_not_touch_a_hand_formatted_file(repository):
    path = repository / "model-v1" / "config.pbtxt"
    _, current = read_config(repository / "model-v1")
    samples = plan_warmup(current, group_sizes=[1], batch_sizes=[1]).samples
    merged = merge_warmup(current, samples)
    # A person keeps the generated samples but formats the file by hand.
    text = "# my comment\n" + text_format.MessageToString(merged, as_one_line=True)
    path.write_text(text)
    apply(repository, warmup_request(group_max=1, batch_sizes=(1,)))
    assert path.read_text() == text


def test_failed_load_restores_the_original_bytes(repository):
    path = repository / "model-v1" / "config.pbtxt"
    original = path.read_bytes()
    (job,) = plan_jobs(repository, warmup_request())

    def fail(name):
        # The new config is on disk while Triton loads.
        assert path.read_bytes() != original
        raise RuntimeError("load failed for model 'model-v1'")

    control = RecordingControl(fail_load=fail)
    entry = run_job(job, control)
    assert entry.status == Status.FAILED
    assert "load failed for model 'model-v1'" in entry.error
    assert entry.config_restored is True
    assert path.read_bytes() == original
    assert not backup_path(repository / "model-v1").exists()
    assert control.calls == [("load", "model-v1")]
    assert entry.serving_previous_version is False


def test_the_original_waits_beside_the_config_until_the_load_settles(repository):
    """A crash during the load leaves the original for the next writer to put
    back (repository_guard.restore_interrupted_rewrite)."""
    path = repository / "model-v1" / "config.pbtxt"
    backup = backup_path(repository / "model-v1")
    original = path.read_bytes()
    seen_during_load = []
    (job,) = plan_jobs(repository, warmup_request())
    control = RecordingControl(fail_load=lambda name: seen_during_load.append(backup.read_bytes()))
    entry = run_job(job, control)
    assert entry.status == Status.READY and seen_during_load == [original]
    assert path.read_bytes() != original and not backup.exists()


@pytest.mark.parametrize("settle", ["commit", "restore"])
def test_commit_and_restore_drop_the_backup(repository, settle):
    path = repository / "model-v1" / "config.pbtxt"
    (job,) = plan_jobs(repository, warmup_request())
    rewrite = job.rewrite
    rewrite.apply()
    assert rewrite.backup_path.read_bytes() == rewrite.original
    getattr(rewrite, settle)()
    assert not rewrite.backup_path.exists()
    assert (path.read_bytes() == rewrite.original) == (settle == "restore")


def test_a_config_write_that_fails_leaves_no_backup(repository, monkeypatch):
    before = snapshot(repository)
    (job,) = plan_jobs(repository, warmup_request())
    replace = os.replace

    def fail_for_the_config(source, target):
        if pathlib.Path(target).name == "config.pbtxt":
            raise OSError(28, "No space left on device")
        replace(source, target)

    monkeypatch.setattr(os, "replace", fail_for_the_config)
    with pytest.raises(OSError):
        job.rewrite.apply()
    assert snapshot(repository) == before


def test_failed_reload_of_a_ready_model_says_the_old_version_serves(repository):
    (job,) = plan_jobs(repository, warmup_request())
    control = RecordingControl(ready={"model-v1"}, fail_load=lambda name: 1 / 0)
    entry = run_job(job, control)
    assert entry.status == Status.FAILED and "division by zero" in entry.error
    assert control.calls == [("load", "model-v1")]
    assert entry.serving_previous_version is True


def test_report_entry_of_a_successful_load(repository):
    (job,) = plan_jobs(repository, warmup_request(group_max=2))
    control = RecordingControl()
    entry = run_job(job, control)
    assert control.calls == [("load", "model-v1")]
    assert entry.status == Status.READY and entry.error is None
    assert entry.warmup_samples == 2 * 4 and entry.instances == 1
    assert entry.seconds_to_ready >= 0 and entry.config_changed is True


def test_a_models_time_splits_into_the_load_and_the_helpers_own_time(repository):
    (job,) = plan_jobs(repository, warmup_request(group_max=2))

    def slow_load(name):
        time.sleep(0.2)

    entry = run_job(job, RecordingControl(fail_load=slow_load))
    timings = entry.timings
    # Measured, not assumed: the load took the 0.2 s the control slept.
    assert timings.load_s >= 0.2 and timings.total_s >= timings.load_s
    assert timings.helper_s == pytest.approx(timings.total_s - timings.load_s - timings.preflight_s, abs=1e-5)
    assert timings.helper_s < timings.load_s
    assert entry.seconds_to_ready == round(timings.total_s, 3)


@pytest.mark.parametrize(
    "break_repository, code",
    [
        (lambda repo: None, NOT_FOUND),  # "missing-model" does not exist
        (lambda repo: (repo / "missing-model").mkdir(), NOT_FOUND),  # no config.pbtxt
        (
            lambda repo: ((repo / "missing-model").mkdir(), (repo / "missing-model" / "config.pbtxt").write_text("input [ {")),
            INVALID_ARG,
        ),
        (lambda repo: (repo / "missing-model").symlink_to(repo.parent), INVALID_ARG),
        (
            lambda repo: ((repo / "missing-model").mkdir(), (repo / "missing-model" / "config.pbtxt").write_text('name: "other"')),
            INVALID_ARG,
        ),
    ],
    ids=["unknown model", "no config", "unparsable config", "symlink out of the repository", "name mismatch"],
)
def test_bad_model_in_a_request_changes_nothing(repository, break_repository, code):
    break_repository(repository)
    before = snapshot(repository)
    with pytest.raises(WarmupRequestError) as caught:
        # The good model comes first: planning must refuse before any write.
        plan_jobs(repository, warmup_request(models=("model-v1", "missing-model")))
    assert caught.value.field == "MODELS" and caught.value.code == code
    assert "missing-model" in str(caught.value)
    assert snapshot(repository) == before


def test_bad_feature_dim_for_one_model_changes_nothing(repository):
    before = snapshot(repository)
    with pytest.raises(WarmupRequestError) as caught:
        plan_jobs(repository, warmup_request(models=("model-v1", "model-v2"), feature_dims=(64, 64)))
    assert caught.value.field == "FEATURE_DIMS" and "model-v2" in str(caught.value)
    assert snapshot(repository) == before


def test_atomic_write_keeps_permissions_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    write_atomically(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["config.pbtxt"]


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "config.pbtxt"
    path.write_bytes(b"old")

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        write_atomically(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.pbtxt"]


def test_restore_without_apply_does_nothing(repository):
    path = repository / "model-v1" / "config.pbtxt"
    original, current = read_config(repository / "model-v1")
    rewrite = ConfigRewrite(path, original, current, [])
    rewrite.restore()
    assert path.read_bytes() == original


def test_instances_counted_from_the_instance_groups(repository):
    path = repository / "model-v1" / "config.pbtxt"
    _, config = read_config(repository / "model-v1")
    del config.instance_group[:]
    config.instance_group.add(count=2, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
    config.instance_group.add(count=3, kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, gpus=[0, 1])
    path.write_text(text_format.MessageToString(config))
    (job,) = plan_jobs(repository, warmup_request())
    assert job.instances == 2 + 3 * 2


def test_parsed_configs_are_independent_copies_of_the_text(repository):
    text = (repository / "model-v1" / "config.pbtxt").read_bytes()
    first = parse_config(text, "first")
    first.name = "changed by a caller"
    del first.input[:]
    second = parse_config(text, "second")
    assert second == text_format.Parse(text.decode(), model_config_pb2.ModelConfig())
    assert second.name == "model-v1" and len(second.input) == 2


def test_an_edited_config_is_parsed_again_not_taken_from_memory(repository):
    path = repository / "model-v1" / "config.pbtxt"
    before = parse_config(path.read_bytes(), str(path))
    path.write_text(path.read_text().replace("max_batch_size: 8", "max_batch_size: 4"))
    after = parse_config(path.read_bytes(), str(path))
    assert before.max_batch_size == 8 and after.max_batch_size == 4


def test_an_unparsable_config_is_refused_every_time(repository):
    for source in ("first read", "second read"):
        with pytest.raises(WarmupRequestError) as caught:
            parse_config(b"max_batch_size: [", source)
        assert caught.value.field == "MODELS" and source in str(caught.value)
