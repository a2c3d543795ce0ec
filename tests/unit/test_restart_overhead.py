"""The helper's own work on a restart (issue: the helper's own time per
model): nothing is written or fsynced where nothing changed, each model's
lock is taken once, the server's identity is computed once whatever the
number of models, large backend files are not read, and the helper's own
work never waits for a load slot."""

import os
import shutil
import threading
import time

import pytest

import triton_warmup.helper.preflight_record as preflight_record
from triton_warmup.helper import repository_guard
from triton_warmup.helper.job_planning import plan_jobs
from triton_warmup.helper.load_jobs import run_jobs
from triton_warmup.helper.preflight_record import identity_from_argv, server_identity
from triton_warmup.report import PREFLIGHT_RECORD
from repository_fixtures import Infer, control_for, warmup_request, with_model_file
from test_preflight import preflight

MODELS = 6


@pytest.fixture
def many(repository):
    """``MODELS`` copies of model-v1 (the ``repository`` fixture's files)."""
    with_model_file(repository)
    names = []
    for index in range(MODELS):
        name = f"m{index}"
        shutil.copytree(repository / "model-v1", repository / name)
        text = (repository / name / "config.pbtxt").read_text().replace('name: "model-v1"', f'name: "{name}"')
        (repository / name / "config.pbtxt").write_text(text)
        names.append(name)
    return repository, names


def restart(repository, names, identity="identity", max_parallel=4):
    """A fresh server's warmup of ``names``: nothing loaded yet."""
    plan = plan_jobs(repository, warmup_request(tuple(names), group_max=3, batch_sizes=(1,)))
    return run_jobs(plan, control_for(repository), max_parallel=max_parallel,
                    preflight=preflight(Infer(), server_identity=identity))


def test_a_restart_where_nothing_changed_writes_and_fsyncs_nothing(many, monkeypatch):
    repository, names = many
    assert all(entry.ready for entry in restart(repository, names))
    fsyncs, locks = [], []
    real_fsync, real_lock = os.fsync, repository_guard.model_lock
    # Every atomic write fsyncs its file and folder (repository_guard.write_atomically).
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))

    def counted_lock(model_dir, *args, **kwargs):
        locks.append(model_dir.name)
        return real_lock(model_dir, *args, **kwargs)

    monkeypatch.setattr("triton_warmup.helper.load_jobs.model_lock", counted_lock)
    before = {path: path.stat().st_mtime_ns for path in repository.rglob("*") if path.is_file()}
    entries = restart(repository, names)
    assert all(entry.ready and entry.preflight.how == PREFLIGHT_RECORD for entry in entries)
    assert not any(entry.config_changed or entry.config_written for entry in entries)
    assert fsyncs == []
    assert sorted(locks) == sorted(names)
    # No file was created or touched either (lock files and records included).
    assert {path: path.stat().st_mtime_ns for path in repository.rglob("*") if path.is_file()} == before


def test_the_server_identity_is_computed_once_whatever_the_number_of_models(many, monkeypatch, tmp_path):
    repository, names = many
    calls = []
    real = preflight_record.server_identity
    monkeypatch.setattr(preflight_record, "server_identity", lambda *args: calls.append(args) or real(*args))
    binary = tmp_path / "tritonserver"
    binary.write_bytes(b"server")
    (tmp_path / "backends" / "python").mkdir(parents=True)
    identity = preflight_record.identity_from_argv([str(binary), f"--backend-directory={tmp_path / 'backends'}"])
    restart(repository, names, identity=identity)
    restart(repository, names, identity=identity)
    assert len(calls) == 1


def test_large_backend_files_count_by_size_and_time_not_read(tmp_path, monkeypatch):
    binary = tmp_path / "tritonserver"
    binary.write_bytes(b"server")
    backend = tmp_path / "backends" / "pytorch"
    backend.mkdir(parents=True)
    (backend / "libtriton_pytorch.so").write_bytes(b"small")
    large = backend / "libtorch_cpu.so"
    with open(large, "wb") as file:
        file.truncate(preflight_record.DIGEST_MAX_BYTES + 1)
    read = []
    real = preflight_record._content_digest
    monkeypatch.setattr(preflight_record, "_content_digest", lambda path: read.append(path.name) or real(path))
    before = server_identity(str(binary), str(tmp_path / "backends"))
    assert read == ["libtriton_pytorch.so"]
    os.utime(large, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert server_identity(str(binary), str(tmp_path / "backends")) != before
    assert identity_from_argv(None) is None


def test_the_helpers_own_work_goes_on_while_loads_hold_every_slot(many, monkeypatch):
    """With one load slot and a load that blocks, the next model is locked
    and checked meanwhile; only its load waits."""
    repository, names = many
    restart(repository, names)
    release = threading.Event()
    control = control_for(repository)
    real_load, real_lock = control.load, repository_guard.model_lock
    locked, loading = [], []

    def slow_load(name, *args, **kwargs):
        loading.append(name)
        release.wait(10)
        return real_load(name, *args, **kwargs)

    def counted_lock(model_dir, *args, **kwargs):
        locked.append(model_dir.name)
        return real_lock(model_dir, *args, **kwargs)

    control.load = slow_load
    monkeypatch.setattr("triton_warmup.helper.load_jobs.model_lock", counted_lock)
    plan = plan_jobs(repository, warmup_request(tuple(names[:2]), group_max=3, batch_sizes=(1,)))
    runner = threading.Thread(target=lambda: run_jobs(plan, control, max_parallel=1,
                                                      preflight=preflight(Infer(), server_identity="identity")))
    runner.start()
    deadline = time.monotonic() + 10
    while len(locked) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    # Both locked (and checked), one loads, the other waits for its slot.
    assert sorted(locked) == sorted(names[:2]) and len(loading) == 1
    release.set()
    runner.join(10)
    assert sorted(loading) == sorted(names[:2])


def test_a_file_no_one_touched_is_not_planned_twice_and_one_that_changed_is(many, monkeypatch):
    repository, names = many
    restart(repository, names)
    plan = plan_jobs(repository, warmup_request(tuple(names[:2]), group_max=3, batch_sizes=(1,)))
    replanned = []
    for job in plan.jobs:
        real = job.replan
        job.replan = lambda real=real, name=job.name: replanned.append(name) or real()
    # Another writer changes the second model's file between the plan and the lock.
    config = repository / names[1] / "config.pbtxt"
    config.write_text(config.read_text() + "\n# edited by hand\n")
    entries = run_jobs(plan, control_for(repository), max_parallel=1,
                       preflight=preflight(Infer(), server_identity="identity"))
    assert all(entry.ready for entry in entries) and replanned == [names[1]]


def test_one_listing_per_wave_replaces_a_readiness_probe_per_model(many):
    repository, names = many
    restart(repository, names)
    control = control_for(repository)
    probes, listings = [], []
    real_is_ready = control.is_ready
    control.is_ready = lambda name: probes.append(name) or real_is_ready(name)
    control.repository_index = lambda: listings.append(1) or [{"name": name} for name in names]
    plan = plan_jobs(repository, warmup_request(tuple(names), group_max=3, batch_sizes=(1,)))
    entries = run_jobs(plan, control, max_parallel=4, preflight=preflight(Infer(), server_identity="identity"))
    assert all(entry.ready for entry in entries)
    assert listings == [1] and probes == []
