"""Writes that others share: the per-model lock across processes and threads,
temp files a killed writer leaves, read-only files and a full disk."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from triton_warmup.helper.config_cache import cache_path
from triton_warmup.helper.config_rewrite import read_config
from triton_warmup.helper.preflight_record import record_path
from repository_fixtures import PROJECT_REPOSITORY, RecordingControl, snapshot, warmup_request
from triton_warmup.helper.repository_guard import (
    backup_path,
    LOCK_FILENAME,
    ModelLockTimeout,
    clean_repository,
    scratch_folder,
    model_lock,
    remove_stale_temp_files,
    stale_temp_files,
    unwritable_reason,
)
from triton_warmup.helper.job_planning import plan_jobs
from triton_warmup.helper.load_jobs import run_job, run_jobs
from triton_warmup.report import ModelEntry, Status

def python_child(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """Another Python process (another writer) running ``code``."""
    return subprocess.Popen([sys.executable, "-c", "import sys\n" + textwrap.dedent(code), *args], text=True, **kwargs)


@pytest.fixture
def lock_holder(repository):
    """Another process that holds model-v1's lock until told to let go."""
    child = python_child(
        f"""
        import pathlib
        from triton_warmup.helper.repository_guard import model_lock
        with model_lock(pathlib.Path({str(repository / "model-v1")!r})):
            print("locked", flush=True)
            sys.stdin.readline()
        """,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdout.readline().strip() == "locked"
    yield child
    if child.poll() is None:
        child.kill()
        child.wait()


def release(child: subprocess.Popen) -> None:
    child.stdin.write("\n")
    child.stdin.flush()
    assert child.wait(timeout=30) == 0


def test_lock_held_by_another_process_blocks_until_it_is_released(repository, lock_holder):
    with pytest.raises(ModelLockTimeout, match="another process"):
        with model_lock(repository / "model-v1", timeout_s=0.3):
            pass
    # Another model's lock is independent.
    with model_lock(repository / "model-v2", timeout_s=0.3) as hold:
        assert hold is not None
    release(lock_holder)
    with model_lock(repository / "model-v1", timeout_s=10) as hold:
        assert hold.held_from > 0 and hold.held_until is None
    assert hold.held_until >= hold.held_from


def test_lock_also_excludes_threads_of_one_process(repository):
    holding, done = threading.Event(), threading.Event()

    def hold_lock():
        with model_lock(repository / "model-v1"):
            holding.set()
            done.wait(30)

    thread = threading.Thread(target=hold_lock)
    thread.start()
    try:
        assert holding.wait(30)
        with pytest.raises(ModelLockTimeout):
            with model_lock(repository / "model-v1", timeout_s=0.2):
                pass
    finally:
        done.set()
        thread.join()
    with model_lock(repository / "model-v1", timeout_s=1):
        pass


def test_run_job_waits_for_the_lock_and_plans_from_what_the_other_writer_left(repository, lock_holder):
    path = repository / "model-v1" / "config.pbtxt"
    (job,) = plan_jobs(repository, warmup_request(group_max=2))
    # While the other process holds the lock it adds a hand-written sample.
    _, config = read_config(repository / "model-v1")
    config.model_warmup.add(name="written meanwhile", batch_size=1)
    path.write_text(text_format.MessageToString(config))
    release(lock_holder)

    entry = run_job(job, RecordingControl())
    assert entry.status == Status.READY and entry.lock.waited_s >= 0
    _, after = read_config(repository / "model-v1")
    names = [sample.name for sample in after.model_warmup]
    assert names[0] == "written meanwhile" and len(names) == 1 + 2 * 4


def test_run_job_reports_a_lock_that_stays_taken(repository, lock_holder):
    before = snapshot(repository)
    (job,) = plan_jobs(repository, warmup_request())
    control = RecordingControl()
    entry = run_job(job, control, lock_timeout_s=0.2)
    assert entry.status != Status.READY and "stayed locked" in entry.error
    assert control.calls == [] and snapshot(repository) == before


def test_a_lock_wait_ends_when_the_server_stops(repository, lock_holder):
    """SIGTERM while the warmup waits for another server's writer: the wait
    of up to lock_timeout_s would hold the helper's process, and Triton's exit."""
    polls = []

    def stopping():
        polls.append(1)
        return len(polls) > 3

    started = time.monotonic()
    with pytest.raises(ModelLockTimeout, match="the server began to stop"):
        with model_lock(repository / "model-v1", timeout_s=600, stopping=stopping):
            pass
    assert time.monotonic() - started < 60


def test_run_jobs_says_the_server_stopped_not_that_the_model_failed(repository, lock_holder):
    before = snapshot(repository)
    plan = plan_jobs(repository, warmup_request(models=("model-v1", "model-v2")))
    stopped = threading.Event()
    settled = []

    def stopping():
        return stopped.is_set()

    def on_done(entry):
        settled.append(entry.name)
        stopped.set()  # SIGTERM arrives after the first model settles

    # Both at once: model-v1 waits for its lock, held by another process,
    # while model-v2 loads; then the server stops.
    entries = run_jobs(plan, RecordingControl(), lock_timeout_s=600, max_parallel=2, on_done=on_done,
                       stopping=stopping)
    by_name = {entry.name: entry for entry in entries}
    assert by_name["model-v2"].status == Status.READY
    assert by_name["model-v1"].error.startswith("not warmed: the server began to stop during its warmup: "), (
        by_name["model-v1"].error)
    assert (repository / "model-v1" / "config.pbtxt").read_bytes() == before["model-v1/config.pbtxt"]
    assert sorted(settled) == ["model-v1", "model-v2"]


def test_clean_repository_removes_stale_temp_files_but_not_under_a_held_lock(repository, lock_holder):
    half_backups = {}
    for name in ("model-v1", "model-v2"):
        (repository / name / ".config.pbtxt.abc123.tmp").write_text("half a conf")
        # What write_atomically leaves when killed while saving the original.
        half_backups[name] = repository / f".{backup_path(repository / name).name}.xyz789.tmp"
        half_backups[name].write_text("half a saved conf")
    removed, restored = clean_repository(repository)
    assert removed == [
        str(repository / "model-v2" / ".config.pbtxt.abc123.tmp"), str(half_backups["model-v2"])
    ] and restored == []
    assert stale_temp_files(repository / "model-v1") and half_backups["model-v1"].exists()
    release(lock_holder)
    assert len(clean_repository(repository)[0]) == 2
    assert not stale_temp_files(repository / "model-v1") and not half_backups["model-v1"].exists()


def test_clean_repository_removes_a_dead_writers_half_written_record_and_parsed_config(repository, lock_holder):
    # What write_atomically leaves when killed while writing the files kept
    # beside each model: the preflight record and the parsed config.
    halves = {
        name: [repository / f".{path.name}.k1ll3d.tmp"
               for path in (record_path(repository / name), cache_path(repository / name))]
        for name in ("model-v1", "model-v2")
    }
    for paths in halves.values():
        for path in paths:
            path.write_bytes(b"half")
    removed, _ = clean_repository(repository)
    assert sorted(removed) == sorted(str(path) for path in halves["model-v2"])
    assert all(path.exists() for path in halves["model-v1"])  # its lock is held: a live writer's
    release(lock_holder)
    assert sorted(clean_repository(repository)[0]) == sorted(str(path) for path in halves["model-v1"])


def test_clean_repository_removes_a_dead_preflights_scratch_folder_but_not_what_it_links(repository, lock_holder):
    folders = {}
    for name in ("model-v1", "model-v2"):
        (repository / name / "1").mkdir()
        (repository / name / "1" / "model.pt").write_bytes(b"weights")
        folders[name] = scratch_folder(repository / name)
        folders[name].mkdir()
        (folders[name] / "config.pbtxt").write_text("scratch")
        (folders[name] / "1").symlink_to(repository / name / "1", target_is_directory=True)
    removed, _ = clean_repository(repository)
    assert removed == [str(folders["model-v2"])] and folders["model-v1"].exists()
    release(lock_holder)
    assert clean_repository(repository)[0] == [str(folders["model-v1"])]
    for name in ("model-v1", "model-v2"):
        assert not folders[name].exists() and (repository / name / "1" / "model.pt").read_bytes() == b"weights"


def rewritten_by_a_writer_that_died(repository, model):
    """Rewrite ``model``'s config as a writer does before its load, then stop
    there, as when Triton crashes during that load. Returns the original bytes."""
    (job,) = plan_jobs(repository, warmup_request(models=(model,), feature_dims=(None,)))
    job.rewrite.apply()
    assert backup_path(repository / model).exists()
    return job.rewrite.original


def test_clean_repository_puts_back_what_a_dead_writer_rewrote_but_not_under_a_held_lock(repository, lock_holder):
    originals = {model: rewritten_by_a_writer_that_died(repository, model) for model in ("model-v1", "model-v2")}
    removed, restored = clean_repository(repository)
    assert removed == [] and restored == [str(repository / "model-v2" / "config.pbtxt")]
    assert (repository / "model-v2" / "config.pbtxt").read_bytes() == originals["model-v2"]
    assert not backup_path(repository / "model-v2").exists()
    # model-v1's lock is held: its writer may be alive, so nothing is touched.
    assert (repository / "model-v1" / "config.pbtxt").read_bytes() != originals["model-v1"]
    release(lock_holder)
    assert clean_repository(repository)[1] == [str(repository / "model-v1" / "config.pbtxt")]
    assert (repository / "model-v1" / "config.pbtxt").read_bytes() == originals["model-v1"]


def test_next_writer_puts_back_what_a_dead_writer_rewrote_then_plans_anew(repository, tmp_path_factory):
    untouched = tmp_path_factory.mktemp("untouched") / "repository"
    shutil.copytree(repository, untouched)
    rewritten_by_a_writer_that_died(repository, "model-v1")
    # The dead writer's plan (group sizes 1..3) and the next one (1..2) differ.
    entries = {}
    for folder in (repository, untouched):
        (job,) = plan_jobs(folder, warmup_request(group_max=2))
        entries[folder] = run_job(job, RecordingControl())
        assert entries[folder].status == Status.READY
    assert entries[repository].interrupted_rewrite_restored == str(repository / "model-v1" / "config.pbtxt")
    assert entries[untouched].interrupted_rewrite_restored is None
    # The same files as a writer that never met the dead one's leftovers writes.
    assert snapshot(repository) == snapshot(untouched)


@pytest.mark.parametrize("target", ["file", "folder", "repository"])
def test_read_only_config_is_never_written_and_loads_with_the_config_instead(repository, target):
    model_dir = repository / "model-v1"
    path = model_dir / "config.pbtxt"
    # A read-only repository folder could not hold the saved original.
    made_read_only = {"file": path, "folder": model_dir, "repository": repository}[target]
    os.chmod(made_read_only, 0o444 if target == "file" else 0o555)
    try:
        before = snapshot(repository)
        assert "read-only" in unwritable_reason(path)
        (job,) = plan_jobs(repository, warmup_request(group_max=2))
        control = RecordingControl()
        entry = run_job(job, control)
        assert entry.status == Status.READY and entry.config_written is False
        assert "read-only" in entry.fallback and "Model Loading API" in entry.fallback
        # The load got the planned config, as the JSON Triton takes.
        ((_, name, config_text),) = control.calls
        loaded = json.loads(config_text)
        assert name == "model-v1" and len(loaded["model_warmup"]) == 2 * 4
        after = snapshot(repository)
        if target != "folder":
            # The model's folder is writable, so the lock file may be made there.
            assert after.pop(f"model-v1/{LOCK_FILENAME}") == b""
        assert after == before
    finally:
        os.chmod(repository, 0o755)
        os.chmod(model_dir, 0o755)
        os.chmod(path, 0o644)


def test_model_lock_in_a_read_only_folder_creates_nothing(repository):
    model_dir = repository / "model-v1"
    os.chmod(model_dir, 0o555)
    try:
        with model_lock(model_dir) as hold:
            assert hold is None
        assert not (model_dir / LOCK_FILENAME).exists()
    finally:
        os.chmod(model_dir, 0o755)


def test_writable_config_has_no_reason(repository):
    assert unwritable_reason(repository / "model-v1" / "config.pbtxt") is None


def test_sigkill_at_random_points_of_a_rewrite_leaves_the_old_or_the_new_file(repository):
    """A writer alternates between two configs and is killed at random moments;
    the file is always whole, and the temp files it leaves are cleaned."""
    path = repository / "model-v1" / "config.pbtxt"
    _, config = read_config(repository / "model-v1")
    # Big files make each write last long enough for kills to land inside it.
    states = []
    for count in (1, 2):
        bigger = model_config_pb2.ModelConfig()
        bigger.CopyFrom(config)
        for index in range(4000):
            bigger.model_warmup.add(name=f"sample{index}", batch_size=1, count=count)
        states.append(text_format.MessageToString(bigger).encode())
    path.write_bytes(states[0])
    state_files = [repository / f"state{index}" for index in (0, 1)]
    for state_file, data in zip(state_files, states):
        state_file.write_bytes(data)

    rng = random.Random(20261124)
    runs, left_temp_files = 40, 0
    for _ in range(runs):
        writer = python_child(
            f"""
            import pathlib
            from triton_warmup.helper.repository_guard import write_atomically
            path = pathlib.Path({str(path)!r})
            states = [pathlib.Path(p).read_bytes() for p in {[str(p) for p in state_files]!r}]
            print("writing", flush=True)
            index = 0
            while True:
                index = 1 - index
                write_atomically(path, states[index])
            """,
            stdout=subprocess.PIPE,
        )
        assert writer.stdout.readline().strip() == "writing"
        threading.Event().wait(rng.uniform(0, 0.05))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        assert path.read_bytes() in states
        text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        left_temp_files += bool(stale_temp_files(path.parent))
        with model_lock(path.parent):
            remove_stale_temp_files(path.parent)
        assert not stale_temp_files(path.parent)
    print(f"{left_temp_files} of {runs} kills landed mid-write and left a temp file")
    # Proof that the kills did land inside writes, not only between them.
    assert left_temp_files >= 1, f"no kill of {runs} landed mid-write"


DISK_FULL_CHILD = """
import json, pathlib, resource, signal
from triton_warmup.helper.job_planning import plan_jobs
from triton_warmup.helper.load_jobs import run_job
from triton_warmup.helper.request import ModelPlanRequest, WarmupRequest

class Control:
    calls = []
    def is_ready(self, name):
        return False
    def load(self, name, config=None):
        self.calls.append(config is not None)

repository = pathlib.Path(sys.argv[1])
(job,) = plan_jobs(repository, WarmupRequest((ModelPlanRequest("model-v1", None, range(1, 33)),)))
# Files may not grow past 4 KiB from here on: writes fail with EFBIG as they
# would with ENOSPC on a full disk. Ignore the signal the kernel sends first.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
control = Control()
entry = run_job(job, control)
print(json.dumps({"entry": entry.to_dict(), "loaded_with_config": control.calls}))
"""


def test_a_write_that_fails_half_way_keeps_the_old_config_and_falls_back(repository):
    before = snapshot(repository)
    child = python_child(
        DISK_FULL_CHILD, str(repository), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    result = json.loads(out)
    entry = ModelEntry.from_dict(result["entry"])
    assert entry.status == Status.READY and entry.config_written is False
    assert "File too large" in entry.fallback, entry.fallback
    assert result["loaded_with_config"] == [True]
    # The old config is whole and no temp file is left; only the lock file is new.
    after = snapshot(repository)
    assert after.pop(f"model-v1/{LOCK_FILENAME}") == b""
    assert after == before


class BarrierControl(RecordingControl):
    """Each load waits until ``parties`` loads are under way at once."""

    def __init__(self, parties):
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=10)

    def load(self, name, config=None):
        self.barrier.wait()
        super().load(name, config)


def test_run_jobs_loads_models_in_parallel_and_keeps_their_order(repository):
    jobs = plan_jobs(repository, warmup_request(models=("model-v2", "model-v1"), feature_dims=(128, 64)))
    # Both loads must be in flight together, or the barrier breaks.
    entries = run_jobs(jobs, BarrierControl(parties=2), max_parallel=2)
    assert [entry.name for entry in entries] == ["model-v2", "model-v1"]
    assert all(entry.status == Status.READY for entry in entries)


class OverlapControl(RecordingControl):
    """Counts how many loads are under way at once; each lasts 0.2 s."""

    def __init__(self):
        super().__init__()
        self.active = self.most = 0
        self.guard = threading.Lock()

    def load(self, name, config=None):
        with self.guard:
            self.active += 1
            self.most = max(self.most, self.active)
        threading.Event().wait(0.2)
        with self.guard:
            self.active -= 1
        super().load(name, config)


def test_run_jobs_one_at_a_time_when_asked(repository):
    jobs = plan_jobs(repository, warmup_request(models=("model-v2", "model-v1"), feature_dims=(128, 64)))
    control = OverlapControl()
    entries = run_jobs(jobs, control, max_parallel=1)
    assert [entry.status for entry in entries] == [Status.READY, Status.READY]
    assert control.most == 1


def test_a_pytorch2_model_loads_after_the_requests_torchscript_models(repository):
    """Triton 2.51 keeps one 'pytorch' backend per server: a PyTorch 2 model
    loaded first would also run every later TorchScript model (docs/pytorch2.md)."""
    (repository / "compiled-encoder").mkdir()
    shutil.copy(PROJECT_REPOSITORY / "compiled-encoder" / "config.pbtxt", repository / "compiled-encoder")
    jobs = plan_jobs(repository, warmup_request(models=("compiled-encoder", "model-v2", "model-v1"),
                                                feature_dims=(64, 128, 64)))
    control = RecordingControl()
    entries = run_jobs(jobs, control, max_parallel=4)
    loads = [call[1] for call in control.calls if call[0] == "load"]
    assert loads[-1] == "compiled-encoder" and sorted(loads[:2]) == ["model-v1", "model-v2"]
    # The report keeps the request's order.
    assert [entry.name for entry in entries] == ["compiled-encoder", "model-v2", "model-v1"]
