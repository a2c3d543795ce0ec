"""SIGKILL the server (and its stubs) at random moments of a long warmup.

Afterwards every config.pbtxt still parses and equals either its state before
the request or the state the uninterrupted request leaves; the next start of
the server removes any temporary file a killed rewrite left.

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

from live_server import EXAMPLE_MODELS, running_server, send_warmup, serving, warmup_inputs
from repository_guard import stale_temp_files

KILL_RUNS = int(os.environ.get("WARMUP_KILL_RUNS", "3"))
# Per run: a server start, up to one warmup, a restart.
MODULE_TIMEOUT_S = 60 + 30 * KILL_RUNS

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

    left_behind = {}
    for model in EXAMPLE_MODELS:
        text = (repository / model / "config.pbtxt").read_bytes()
        text_format.Parse(text.decode(), model_config_pb2.ModelConfig())
        assert text in (before[model], after[model]), f"run {run}, {delay:.2f} s: {model} is neither"
        left_behind[model] = stale_temp_files(repository / model)

    # The next start cleans what a killed rewrite left.
    with serving(repository, tmp_path / "restarted"):
        for model in EXAMPLE_MODELS:
            assert not stale_temp_files(repository / model), (run, left_behind)
    states = ["after" if configs(repository)[m] == after[m] else "before" for m in EXAMPLE_MODELS]
    print(f"run {run}: killed at {delay:.2f} s of {duration:.2f} s; configs {states}; "
          f"temp files left {sum(map(len, left_behind.values()))}")


def _send_and_ignore_the_broken_connection(server):
    try:
        send_warmup(server, "http", REQUEST)
    except Exception:  # noqa: BLE001 - the server is killed under the request
        pass
