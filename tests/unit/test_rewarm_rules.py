"""Re-warming a READY model: when the helper warms it in place instead of
reloading it, what it sends, and that the file ends as the next load needs
it (or untouched when a run fails)."""

import os
import time

from google.protobuf import json_format

from repository_fixtures import Infer, RecordingControl, control_for, job_for, snapshot, with_model_file
from triton_warmup.helper.config_rewrite import read_config, render_config
from triton_warmup.helper.job_planning import plan_jobs
from triton_warmup.helper.load_jobs import run_job
from triton_warmup.helper.preflight import Preflight
from triton_warmup.helper.repository_guard import write_atomically
from triton_warmup.helper.rewarm import Rewarm
from triton_warmup.report import REWARM_IN_PLACE as IN_PLACE
from triton_warmup.report import REWARM_RELOADED as RELOADED
from triton_warmup.report import Status
from repository_fixtures import warmup_request


def served_first(repository, group_max=2):
    """model-v1 loaded with group sizes up to ``group_max``; the config
    Triton serves for it, as its model config API answers."""
    (first,) = plan_jobs(repository, warmup_request(group_max=group_max, batch_sizes=(1,)))
    with_model_file(repository)
    assert run_job(first, RecordingControl()).status == Status.READY
    return json_format.MessageToDict(first.rewrite.config, preserving_proto_field_name=True)


def rewarm_job(repository, served, infer, rewarm=None, group_max=4, started_at=None, preflight=None):
    job = job_for(repository, group_max=group_max)
    # The model's files are older than the serving version, which runs them.
    long_ago = time.time() - 3600
    os.utime(repository / "model-v1" / "1" / "model.pt", (long_ago, long_ago))
    control = control_for(repository, ready={"model-v1"}, served=served)
    check = preflight or Preflight(infer=infer, server_started_at=started_at or time.time() + 60)
    rewarm = rewarm if rewarm is not None else Rewarm(infer=infer, duty=1.0)
    return run_job(job, control, preflight=check, rewarm=rewarm), control, job


def set_instances(repository, model, count, backend=None):
    _, config = read_config(repository / model)
    config.instance_group[0].count = count
    if backend:
        config.ClearField("platform")
        config.backend = backend
    write_atomically(repository / model / "config.pbtxt", render_config(config))


def test_new_samples_run_count_times_on_the_serving_model_and_the_file_takes_them_without_a_load(repository):
    served = served_first(repository)
    infer = Infer()
    entry, control, job = rewarm_job(repository, served, infer)

    assert entry.status == Status.READY and entry.rewarm == IN_PLACE
    assert "only model_warmup changed" in entry.rewarm_reason
    assert not any(call[0] == "load" for call in control.calls)
    masks = [call[2]["mask"] for call in infer.calls]
    # The preflight's one run of each new sample, then count (3) per instance (1).
    assert masks == [(1, 3), (1, 4)] + [(1, 3)] * job.count + [(1, 4)] * job.count
    assert entry.in_place_runs == 2 * job.count
    _, on_disk = read_config(repository / "model-v1")
    assert on_disk == job.rewrite.config and entry.config_written
    assert not (repository / "model-v1" / ".config.pbtxt.warmup-backup").exists()
    assert not [path for path in (repository / "model-v1").iterdir() if "backup" in path.name]


def test_a_second_rewarm_after_one_in_place_also_goes_in_place(repository):
    """The file is newer than the serving version's load, but it is what the
    first in-place re-warm wrote."""
    served = served_first(repository)
    infer = Infer()
    rewarm = Rewarm(infer=infer, duty=1.0)
    check = Preflight(infer=infer, server_started_at=time.time() + 60)
    first, _, job = rewarm_job(repository, served, infer, rewarm=rewarm, preflight=check)
    assert first.rewarm == IN_PLACE
    # The file is now newer than "the server started".
    check.server_started_at = time.time() - 60
    served_now = json_format.MessageToDict(job.rewrite.config, preserving_proto_field_name=True)
    second, control, _ = rewarm_job(repository, served_now, infer, rewarm=rewarm, group_max=5, preflight=check)
    assert second.rewarm == IN_PLACE, second.rewarm_reason
    assert not any(call[0] == "load" for call in control.calls)


def test_a_second_rewarm_in_place_runs_only_what_the_first_did_not(repository):
    served = served_first(repository)
    infer = Infer()
    rewarm = Rewarm(infer=infer, duty=1.0)
    check = Preflight(infer=infer, server_started_at=time.time() + 60)
    first, _, _ = rewarm_job(repository, served, infer, rewarm=rewarm, preflight=check)
    # Triton still serves the first config: the in-place runs do not show in it.
    second, _, job = rewarm_job(repository, served, infer, rewarm=rewarm, group_max=5, preflight=check)
    assert second.rewarm == IN_PLACE and second.in_place_runs == job.count
    # After a load the instances are new: the next re-warm counts on the served config alone.
    rewarm.forget("model-v1")
    third, _, _ = rewarm_job(repository, served, infer, rewarm=rewarm, group_max=6, preflight=check)
    assert third.rewarm == IN_PLACE and third.in_place_runs == 4 * job.count


def test_a_config_edited_since_the_serving_version_loaded_is_reloaded(repository):
    served = served_first(repository)
    infer = Infer()
    entry, control, _ = rewarm_job(repository, served, infer, started_at=time.time() - 60)
    assert entry.rewarm == RELOADED and entry.rewarm_reason == "config.pbtxt changed since the serving version loaded"
    assert ("load", "model-v1") in control.calls and entry.status == Status.READY


def test_the_reload_parameter_and_a_missing_preflight_reload(repository):
    served = served_first(repository)
    infer = Infer()
    entry, control, _ = rewarm_job(repository, served, infer, rewarm=Rewarm(infer=infer, in_place=False))
    assert entry.rewarm == RELOADED and entry.rewarm_reason == "the helper's parameter rewarm is reload"
    assert ("load", "model-v1") in control.calls

    job = job_for(repository, group_max=5)
    control = control_for(repository, ready={"model-v1"}, served=served)
    entry = run_job(job, control, preflight=None, rewarm=Rewarm(infer=infer))
    assert entry.rewarm == RELOADED and "the preflight is off" in entry.rewarm_reason


def test_an_unloaded_model_loads_and_says_nothing_of_a_rewarm(repository):
    infer = Infer()
    job = job_for(repository)
    entry = run_job(job, control_for(repository), preflight=Preflight(infer=infer), rewarm=Rewarm(infer=infer))
    assert entry.rewarm is None and entry.status == Status.READY


def test_two_libtorch_cpu_instances_warm_in_place_with_runs_for_each(repository):
    set_instances(repository, "model-v1", 2)
    served = served_first(repository)
    infer = Infer()
    entry, control, job = rewarm_job(repository, served, infer)
    assert entry.rewarm == IN_PLACE and "2 instances, which share libtorch's caches" in entry.rewarm_reason
    assert entry.in_place_runs == 2 * job.count * 2
    assert not any(call[0] == "load" for call in control.calls)


def test_two_python_instances_reload_because_each_is_its_own_process(repository):
    set_instances(repository, "model-v1", 2, backend="python")
    served = served_first(repository)
    infer = Infer()
    entry, control, _ = rewarm_job(repository, served, infer)
    assert entry.rewarm == RELOADED and "2 instances keep separate caches" in entry.rewarm_reason
    assert ("load", "model-v1") in control.calls


def test_a_run_that_fails_in_place_leaves_the_file_and_the_serving_version_alone(repository):
    served = served_first(repository)

    class FailsLate(Infer):
        def __call__(self, request):
            # The preflight's runs pass; the third in-place run fails.
            if len(self.calls) >= 4:
                self.calls.append(None)
                raise RuntimeError("out of memory")
            return super().__call__(request)

    before = snapshot(repository / "model-v1")
    entry, control, _ = rewarm_job(repository, served, FailsLate())
    assert entry.status == Status.FAILED and entry.rewarm == IN_PLACE
    assert entry.error.startswith("warming in place: sample") and "out of memory" in entry.error
    assert entry.serving_previous_version is True
    assert not any(call[0] == "load" for call in control.calls)
    after = {path: data for path, data in snapshot(repository / "model-v1").items() if "lock" not in path}
    assert after == {path: data for path, data in before.items() if "lock" not in path}


def test_sample_data_that_cannot_be_read_fails_the_model_not_the_request(repository, monkeypatch):
    served = served_first(repository)
    infer = Infer()

    def unreadable(*args):
        raise OSError("warmup/ids.bin: permission denied")

    entry, control, _ = rewarm_job(repository, served, infer)
    assert entry.rewarm == IN_PLACE
    monkeypatch.setattr("triton_warmup.helper.rewarm.sample_arrays", unreadable)
    failed, control, _ = rewarm_job(repository, served, infer, group_max=6)
    assert failed.status == Status.FAILED and "its data cannot be read" in failed.error
    assert not any(call[0] == "load" for call in control.calls)
