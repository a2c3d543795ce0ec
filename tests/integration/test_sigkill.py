"""SIGKILL the server (and its stubs) at random moments of a long warmup.

Afterwards every config.pbtxt still parses and equals either its state before
the request or the state the uninterrupted request leaves; the next start of
the server removes any temporary file a killed rewrite left, and puts back the
original of a config whose load the kill interrupted (the backup the writer
keeps beside it until the load settles).

`make test` runs WARMUP_KILL_RUNS=3 of these; `make test-faults` runs 20.
Each run's delay comes from a generator seeded with the run's number, so a
failing run can be repeated.
"""

import os
import random
import shutil
import threading
import time

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from live_server import EXAMPLE_MODELS, running_server, send_warmup, serving, wait_for_log, warmup_inputs
from triton_warmup.helper.repository_guard import SCRATCH_PREFIX, backup_path, stale_temp_files
from target_models import write_python_target

KILL_RUNS = int(os.environ.get("WARMUP_KILL_RUNS", "3"))
# Per run: a server start, up to one warmup, a restart; then one more kill.
MODULE_TIMEOUT_S = 120 + 30 * KILL_RUNS

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(MODULE_TIMEOUT_S)]

# Three models x 6 group sizes x 4 batch sizes: a warmup of several seconds,
# with a rewrite and a load per model to interrupt.
REQUEST = warmup_inputs(EXAMPLE_MODELS, 1, 6)


def configs(repository):
    return {model: (repository / model / "config.pbtxt").read_bytes() for model in EXAMPLE_MODELS}


@pytest.fixture(scope="module")
def reference(template_repository, tmp_path_factory):
    """The configs before and after one uninterrupted request, and its duration."""
    with running_server(template_repository, tmp_path_factory.mktemp("reference")) as server:
        before = configs(server.model_repository)
        started = time.monotonic()
        loaded, _ = send_warmup(server, "http", REQUEST)
        duration = time.monotonic() - started
        assert loaded == EXAMPLE_MODELS
        after = configs(server.model_repository)
    assert all(before[model] != after[model] for model in EXAMPLE_MODELS)
    return before, after, duration


@pytest.mark.parametrize("run", range(KILL_RUNS))
def test_sigkill_during_a_warmup_leaves_every_config_whole(run, reference, template_repository, tmp_path):
    before, after, duration = reference
    delay = random.Random(run).uniform(0, duration)
    repository = tmp_path / "model_repository"
    shutil.copytree(template_repository, repository)

    with serving(repository, tmp_path / "killed") as server:
        request = threading.Thread(target=_send_and_ignore_the_broken_connection, args=(server,))
        request.start()
        time.sleep(delay)
        server.kill()
        request.join(60)

    left_behind, interrupted = {}, []
    for model in EXAMPLE_MODELS:
        text = (repository / model / "config.pbtxt").read_bytes()
        text_format.Parse(text.decode(), model_config_pb2.ModelConfig())
        assert text in (before[model], after[model]), f"run {run}, {delay:.2f} s: {model} is neither"
        left_behind[model] = stale_temp_files(repository / model)
        if backup_path(repository / model).exists():
            interrupted.append(model)
    # A kill during a preflight leaves its scratch folder (links only).
    scratch_left = sorted(path.name for path in repository.glob(f"{SCRATCH_PREFIX}*"))

    # The next start cleans what a killed rewrite left and undoes a rewrite
    # whose load the kill cut short.
    with serving(repository, tmp_path / "restarted"):
        for model in EXAMPLE_MODELS:
            assert not stale_temp_files(repository / model), (run, left_behind)
            assert not backup_path(repository / model).exists(), run
        assert not list(repository.glob(f"{SCRATCH_PREFIX}*")), (run, scratch_left)
    restarted = configs(repository)
    for model in interrupted:
        assert restarted[model] == before[model], f"run {run}: {model}'s load was cut short"
    states = ["after" if restarted[m] == after[m] else "before" for m in EXAMPLE_MODELS]
    print(f"run {run}: killed at {delay:.2f} s of {duration:.2f} s; configs {states}; "
          f"temp files left {sum(map(len, left_behind.values()))}; loads cut short {interrupted}; "
          f"scratch folders left {scratch_left}")


def test_a_server_killed_during_a_load_gets_the_original_config_back_at_restart(template_repository, tmp_path):
    """What a Triton crash during a load leaves (docs/safety.md, "Known Triton
    issues"): the rewritten config and its backup; the restart undoes it."""
    repository = tmp_path / "model_repository"
    shutil.copytree(template_repository, repository)
    config = write_python_target(repository, "slow-to-load", initialize_seconds=20) / "config.pbtxt"
    before = config.read_bytes()
    request = warmup_inputs(["slow-to-load"], 1, 2)

    with serving(repository, tmp_path / "killed") as server:
        sender = threading.Thread(target=_send_and_ignore_the_broken_connection, args=(server, request))
        sender.start()
        # The model's initialize sleeps for 20 s: the kill lands inside its load.
        wait_for_log(server, ['"loading: slow-to-load:1"'], timeout=60)
        server.kill()
        sender.join(60)
    assert config.read_bytes() != before
    assert backup_path(config.parent).read_bytes() == before

    with serving(repository, tmp_path / "restarted") as restarted:
        log = wait_for_log(restarted, ["put back the original of"])
    assert config.read_bytes() == before
    assert not backup_path(config.parent).exists()
    assert str(config) in log


def _send_and_ignore_the_broken_connection(server, request=REQUEST):
    try:
        send_warmup(server, "http", request)
    except Exception:  # noqa: BLE001 - the server is killed under the request
        pass
