"""The preflight's pure logic: which samples need a run, what the scratch
copy is made of, which way each model is checked, and that a failing sample
stops the job before anything is written."""

import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from triton_warmup.helper.config_rewrite import read_config
from triton_warmup.helper.preflight import (
    Preflight,
    describe_sample,
    loaded_versions,
    model_files,
    sample_key,
    scratch_config,
    unchecked_samples,
)
from repository_fixtures import (
    SCRATCH_PREFIX,
    Infer,
    RecordingControl,
    control_for,
    frames_left_in_cycles,
    job_for,
    snapshot,
    warmup_request,
    with_model_file,
)
from triton_warmup.helper.job_planning import plan_jobs
from triton_warmup.helper.load_jobs import run_job
from triton_warmup.report import Status
from triton_warmup.helper.requests_mode import sample_arrays
from triton_warmup.pytorch2 import PREFLIGHT_PARAMETER

def files(repository):
    """Every file but the model's lock file, which any job leaves (empty)."""
    return {path: data for path, data in snapshot(repository).items() if not path.endswith(".warmup_helper.lock")}


def preflight(infer, **settings):
    return Preflight(infer=infer, **settings)


def test_sample_key_ignores_name_and_count_but_not_shape_batch_or_data():
    sample = model_config_pb2.ModelWarmup(name="a", batch_size=2, count=3)
    sample.inputs["x"].data_type = model_config_pb2.DataType.TYPE_FP32
    sample.inputs["x"].dims.extend([4, 64])
    sample.inputs["x"].random_data = True
    renamed = model_config_pb2.ModelWarmup()
    renamed.CopyFrom(sample)
    renamed.name, renamed.count = "b", 1
    assert sample_key(renamed) == sample_key(sample)
    for change in (
        lambda s: setattr(s, "batch_size", 4),
        lambda s: s.inputs["x"].dims.__setitem__(0, 5),
        lambda s: setattr(s.inputs["x"], "zero_data", True),
        lambda s: setattr(s.inputs["x"], "input_data_file", "x.bin"),
    ):
        changed = model_config_pb2.ModelWarmup()
        changed.CopyFrom(sample)
        change(changed)
        assert sample_key(changed) != sample_key(sample)


def test_unchecked_samples_skip_known_good_and_repeats_in_config_order(repository):
    job = job_for(repository, group_max=4)
    config = job.rewrite.config
    known = list(config.model_warmup)[:2]
    config.model_warmup.append(config.model_warmup[3])
    unchecked = unchecked_samples(config, known)
    assert [sample.name for sample in unchecked] == [sample.name for sample in config.model_warmup[2:4]]


def test_loaded_versions_follow_the_version_policy(tmp_path):
    for version in ("1", "2", "10", "notes"):
        (tmp_path / version).mkdir()
    policy = model_config_pb2.ModelVersionPolicy
    assert loaded_versions(tmp_path, policy()) == ["10"]
    assert loaded_versions(tmp_path, policy(latest=policy.Latest(num_versions=2))) == ["10", "2"]
    assert loaded_versions(tmp_path, policy(all=policy.All())) == ["10", "2", "1"]
    assert loaded_versions(tmp_path, policy(specific=policy.Specific(versions=[1, 7]))) == ["1"]


def test_model_files_leave_out_config_hidden_files_warmup_data_and_unloaded_versions(tmp_path):
    for path in ("config.pbtxt", ".warmup_helper.lock", "warmup/x.bin", "1/model.pt", "2/model.pt",
                 "2/sub/vocab.txt", "2/.cache", "labels.txt"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(path)
    names = [path.relative_to(tmp_path).as_posix() for path in model_files(tmp_path, ["2"])]
    assert names == ["2/model.pt", "2/sub/vocab.txt", "labels.txt"]


def test_scratch_config_has_no_warmup_one_instance_no_batcher_or_cache(repository):
    job = job_for(repository)
    config = job.rewrite.config
    config.instance_group[0].count = 4
    config.response_cache.enable = True
    scratch = scratch_config(config, SCRATCH_PREFIX + "model-v1")
    assert scratch.name == SCRATCH_PREFIX + "model-v1" and not scratch.model_warmup
    assert [(group.kind, group.count) for group in scratch.instance_group] == [(config.instance_group[0].kind, 1)]
    assert not scratch.HasField("dynamic_batching") and not scratch.HasField("response_cache")
    assert scratch.parameters["DISABLE_OPTIMIZED_EXECUTION"].string_value == "true"
    assert list(scratch.input) == list(config.input) and scratch.max_batch_size == config.max_batch_size
    # The planned config itself is untouched.
    assert config.model_warmup and config.instance_group[0].count == 4


def test_random_data_is_tritons_random_bytes_the_same_for_every_request_of_a_batch(repository):
    job = job_for(repository, batch_sizes=(4,))
    sample = job.rewrite.config.model_warmup[1]
    arrays = sample_arrays(job.rewrite.config, sample, job.model_dir, np.random.default_rng(0))
    x = arrays["x"]
    assert x.shape == (4, 2, 64) and x.dtype == np.float32
    assert all((x[row].view(np.uint32) == x[0].view(np.uint32)).all() for row in range(4))
    # Random bytes, not floats in [0, 1): some exponents leave that range.
    assert (np.abs(x[np.isfinite(x)]) > 1).any()
    assert not arrays["mask"].any()  # integers get zero_data


def test_an_unloaded_model_is_checked_on_a_scratch_copy_then_written_and_loaded(repository):
    job = job_for(repository)
    control, infer = control_for(repository), Infer()
    check = preflight(infer)
    entry = run_job(job, control, preflight=check)

    assert entry.status == Status.READY
    record = entry.preflight
    assert record.how == "scratch copy" and record.error is None
    assert record.scratch == "a hidden folder of links to the model's files"
    assert record.samples_checked == job.samples == len(infer.calls)
    assert record.model_bytes == len(b"torchscript bytes")
    scratch = SCRATCH_PREFIX + "model-v1"
    # The scratch folder held its own config and a link to the version folder, nothing copied.
    folder = control.folders[scratch]
    assert folder["1"] == str((repository / "model-v1" / "1").resolve())
    scratch_config_seen = model_config_pb2.ModelConfig()
    text_format.Parse(folder["config.pbtxt"], scratch_config_seen)
    assert scratch_config_seen.name == scratch and not scratch_config_seen.model_warmup
    assert sorted(folder) == ["1", "config.pbtxt"]
    assert [call[:2] for call in control.calls] == [("load scratch", scratch), ("unload", scratch), ("load", "model-v1")]
    assert {call[0] for call in infer.calls} == {scratch}
    assert "model-v1" in check.loaded_at
    # Gone afterwards; the model's own file untouched.
    assert not (repository / scratch).exists()
    assert (repository / "model-v1" / "1" / "model.pt").read_bytes() == b"torchscript bytes"


def test_a_read_only_repository_folder_gets_the_files_in_the_load_request(repository):
    job = job_for(repository)
    control = control_for(repository)
    repository.chmod(0o555)
    try:
        entry = run_job(job, control, preflight=preflight(Infer()))
    finally:
        repository.chmod(0o755)
    record = entry.preflight
    assert record.error is None and record.scratch.startswith("file overrides in the load request")
    assert "read-only" in record.scratch
    scratch = SCRATCH_PREFIX + "model-v1"
    assert control.files[scratch] == {"file:1/model.pt": b"torchscript bytes"}
    loaded_config = json_format.Parse(control.calls[0][2], model_config_pb2.ModelConfig())
    assert loaded_config.name == scratch and not loaded_config.model_warmup


def test_a_failing_sample_on_the_scratch_copy_stops_the_job_with_nothing_written(repository):
    job = job_for(repository, group_max=4)
    before = files(repository)
    control = control_for(repository)
    entry = run_job(job, control, preflight=preflight(Infer(largest_group=2)))

    assert entry.status == Status.FAILED and entry.config_written is False
    assert entry.error.startswith("preflight: sample 'warmup_helper:group3_batch1' (mask [1, 3], x [1, 3, 64])")
    assert "group size above the model's maximum" in entry.error
    assert entry.preflight.failed_sample == {
        "sample": "warmup_helper:group3_batch1",
        "batch_size": 1,
        "inputs": {"mask": [1, 3], "x": [1, 3, 64]},
    }
    assert entry.preflight.samples_checked == 2
    assert entry.serving_previous_version is False
    # The scratch copy was unloaded; the model itself never loaded.
    assert control.calls[-1] == ("unload", SCRATCH_PREFIX + "model-v1")
    assert "model-v1" not in control.ready
    assert files(repository) == before


def test_a_failing_sample_leaves_no_frames_in_a_reference_cycle(repository):
    """A sample's error comes back through a thread pool's future; kept with
    its traceback, its frames (the request's among them) would wait for the
    stub's exit to be freed, which crashes the stub (kept_errors)."""
    job = job_for(repository, group_max=4)
    frames, entry = frames_left_in_cycles(
        lambda: run_job(job, control_for(repository), preflight=preflight(Infer(largest_group=2))))
    assert entry.status == Status.FAILED and "group size above the model's maximum" in entry.error
    assert frames == []


def test_a_model_that_does_not_load_at_all_fails_in_the_preflight(repository):
    job = job_for(repository)
    before = files(repository)
    entry = run_job(job, control_for(repository, refuse_scratch=True), preflight=preflight(Infer()))
    assert entry.status == Status.FAILED
    assert "does not load even without warmup samples: failed to load" in entry.error
    assert files(repository) == before


def test_a_model_above_the_size_limit_is_refused_where_its_files_would_travel(repository):
    job = job_for(repository)
    control = control_for(repository)
    repository.chmod(0o555)
    try:
        before = files(repository)
        entry = run_job(job, control, preflight=preflight(Infer(), max_model_bytes=10))
    finally:
        repository.chmod(0o755)
    assert entry.status == Status.FAILED and "above preflight_max_model_bytes (10)" in entry.error
    assert control.calls == [] and files(repository) == before
    # With a scratch folder, nothing travels: the limit does not apply.
    entry = run_job(job, control_for(repository), preflight=preflight(Infer(), max_model_bytes=10))
    assert entry.status == Status.READY


def test_a_scratch_folder_a_killed_helper_left_is_replaced_then_removed(repository):
    job = job_for(repository)
    leftover = repository / (SCRATCH_PREFIX + "model-v1")
    leftover.mkdir()
    (leftover / "1").symlink_to(repository / "model-v1" / "1", target_is_directory=True)
    (leftover / "config.pbtxt").write_text("stale")
    entry = run_job(job, control_for(repository), preflight=preflight(Infer()))
    assert entry.status == Status.READY and not leftover.exists()
    assert (repository / "model-v1" / "1" / "model.pt").exists()


def test_a_ready_model_gets_requests_for_the_new_samples_only(repository):
    (first,) = plan_jobs(repository, warmup_request(group_max=2, batch_sizes=(1,)))
    with_model_file(repository)
    served = json_format.MessageToDict(first.rewrite.config, preserving_proto_field_name=True)
    assert run_job(first, RecordingControl()).status == Status.READY

    job = job_for(repository, group_max=4)
    control, infer = control_for(repository, ready={"model-v1"}, served=served), Infer()
    entry = run_job(job, control, preflight=preflight(infer, server_started_at=time.time() + 60))

    record = entry.preflight
    assert record.how == "requests to the serving model" and "unchanged since the server started" in record.why
    assert record.samples_known_good == 2 and record.samples_checked == 2
    assert [call[2]["mask"] for call in infer.calls] == [(1, 3), (1, 4)]
    assert {call[0] for call in infer.calls} == {"model-v1"}
    assert entry.status == Status.READY and not control.files


def test_a_ready_model_whose_files_changed_since_it_loaded_gets_a_scratch_copy(repository):
    job = job_for(repository)
    model_file = repository / "model-v1" / "1" / "model.pt"
    check = preflight(Infer(), server_started_at=time.time() - 60)
    check.loaded_at["model-v1"] = time.time() - 30
    os.utime(model_file, (time.time(), time.time()))
    entry = run_job(job, control_for(repository, ready={"model-v1"}), preflight=check)
    assert entry.preflight.how == "scratch copy"
    assert entry.preflight.why == "model files changed since the helper's last load of it"


def test_a_ready_model_when_the_server_start_is_unknown_gets_a_scratch_copy(repository):
    job = job_for(repository)
    entry = run_job(job, control_for(repository, ready={"model-v1"}), preflight=preflight(Infer()))
    assert entry.preflight.how == "scratch copy" and "start time is unknown" in entry.preflight.why


def test_model_files_that_vanish_fail_the_preflight_not_the_request(repository):
    job = job_for(repository)
    shutil.rmtree(repository / "model-v1" / "1")
    (repository / "model-v1" / "1").write_text("a file where the version folder was")
    check = preflight(Infer())
    record = check.check(job, control_for(repository), was_ready=False)
    assert "holds no version folder to load" in record.error
    shutil.rmtree(repository / "model-v1")
    record = check.check(job, control_for(repository), was_ready=False)
    assert record.error.startswith("reading the model's files failed")


def test_a_ready_model_whose_plan_is_on_disk_already_is_not_checked(repository):
    job = job_for(repository)
    assert run_job(job, RecordingControl()).status == Status.READY
    (again,) = plan_jobs(repository, warmup_request(group_max=3, batch_sizes=(1,)))
    infer = Infer()
    check = preflight(infer, server_started_at=time.time() + 60)
    entry = run_job(again, control_for(repository, ready={"model-v1"}), preflight=check)
    assert entry.preflight is None and infer.calls == []


def test_a_ready_model_whose_plan_is_on_disk_but_whose_files_changed_is_checked_before_its_reload(repository):
    """The reload would run the samples on the new files in Triton's warmup."""
    with_model_file(repository)
    job = job_for(repository)
    assert run_job(job, RecordingControl()).status == Status.READY
    (again,) = plan_jobs(repository, warmup_request(group_max=3, batch_sizes=(1,)))
    assert not again.rewrite.changed
    check = preflight(Infer(largest_group=1), server_started_at=time.time() - 60)
    check.loaded_at["model-v1"] = time.time() - 30
    os.utime(repository / "model-v1" / "1" / "model.pt", (time.time(), time.time()))
    control = control_for(repository, ready={"model-v1"})
    entry = run_job(again, control, preflight=check)
    assert entry.preflight.how == "scratch copy" and entry.preflight.why == (
        "model files changed since the helper's last load of it")
    # The new files fail a sample: nothing is reloaded, the serving version stays.
    assert entry.status == Status.FAILED and entry.preflight.failed_sample["inputs"]["mask"] == [1, 2]
    assert ("load", "model-v1") not in [call[:2] for call in control.calls]


def test_an_unloaded_model_whose_plan_is_on_disk_is_still_checked(repository):
    """Triton runs every sample of the file when it loads the model."""
    job = job_for(repository)
    assert run_job(job, RecordingControl()).status == Status.READY
    (again,) = plan_jobs(repository, warmup_request(group_max=3, batch_sizes=(1,)))
    infer = Infer(largest_group=1)
    entry = run_job(again, control_for(repository), preflight=preflight(infer))
    assert entry.status == Status.FAILED and entry.preflight.failed_sample["inputs"]["mask"] == [1, 2]


@pytest.mark.parametrize("version_policy", ["", "version_policy { all {} }"])
def test_every_loaded_version_gets_each_sample(repository, version_policy):
    with_model_file(repository)
    (repository / "model-v1" / "2").mkdir()
    (repository / "model-v1" / "2" / "model.pt").write_bytes(b"v2")
    config_path = repository / "model-v1" / "config.pbtxt"
    config_path.write_text(config_path.read_text() + version_policy)
    (job,) = plan_jobs(repository, warmup_request(group_max=1, batch_sizes=(1,)))
    infer, control = Infer(), control_for(repository)
    run_job(job, control, preflight=preflight(infer))
    expected = ["2", "1"] if version_policy else ["2"]
    assert [call[1] for call in infer.calls] == expected
    assert sorted(control.folders[SCRATCH_PREFIX + "model-v1"]) == sorted(expected + ["config.pbtxt"])
    assert read_config(job.model_dir)[1].model_warmup


def as_pytorch2(config):
    config.backend, config.runtime, config.platform = "pytorch", "model.py", ""
    return config


def test_a_pytorch2_scratch_copy_carries_the_whole_plan_for_the_runtime_shim(repository):
    """The shim compiles on the scratch copy what the real load's warmup will
    (issue 38): it needs every planned sample, in the plan's order, though
    the scratch config has no ``model_warmup``, and the model's name, under
    which it keeps what Dynamo traced for the real load."""
    config = as_pytorch2(job_for(repository, batch_sizes=(1, 2)).rewrite.config)
    scratch = scratch_config(config, SCRATCH_PREFIX + "model-v1")
    assert not scratch.model_warmup
    plan = json.loads(scratch.parameters[PREFLIGHT_PARAMETER].string_value)
    assert plan["model"] == config.name
    carried = plan["model_warmup"]
    assert [sample["name"] for sample in carried] == [sample.name for sample in config.model_warmup]
    assert [sample["batch_size"] for sample in carried] == [sample.batch_size for sample in config.model_warmup]
    first = config.model_warmup[0]
    assert {name: [int(d) for d in data["dims"]] for name, data in carried[0]["inputs"].items()} == {
        name: list(data.dims) for name, data in first.inputs.items()
    }
    # A TorchScript model's scratch copy has no such parameter.
    libtorch = scratch_config(job_for(repository).rewrite.config, SCRATCH_PREFIX + "model-v1")
    assert PREFLIGHT_PARAMETER not in libtorch.parameters


class OneAtATime(Infer):
    """Records how many requests were in flight at once."""

    def __init__(self):
        super().__init__()
        self.lock, self.now, self.most = threading.Lock(), 0, 0

    def __call__(self, request):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.01)
        try:
            return super().__call__(request)
        finally:
            with self.lock:
                self.now -= 1


def test_a_pytorch2_scratch_copy_gets_its_samples_one_at_a_time_in_the_plans_order(repository):
    """torch.compile's graphs depend on the order of the shapes it sees, and
    Triton's warmup runs the samples one by one in the config's order."""
    job = job_for(repository, group_max=4, batch_sizes=(1, 2))
    as_pytorch2(job.rewrite.config)
    infer = OneAtATime()
    entry = run_job(job, control_for(repository), preflight=preflight(infer, in_flight=4))
    assert entry.preflight.error is None and entry.preflight.how == "scratch copy"
    planned = [describe_sample(job.rewrite.config, sample)["inputs"] for sample in job.rewrite.config.model_warmup]
    sent = [{name: list(shape) for name, shape in shapes.items()} for _, _, shapes in infer.calls]
    assert sent == planned and infer.most == 1
