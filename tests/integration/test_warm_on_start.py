"""Warm at start with nothing but the server's command line (the helper's
``warm_on_start``), on the real tritonserver.

The server starts with ``--load-model=warmup_helper`` and no client sends a
warmup: the helper checks its start plan while it loads and warms the plan
once the server's start-up is over. What ran is read from Triton's own log
(its "running warmup sample" and "successfully loaded" lines).
"""

import json
import os
import shutil
import signal
import threading
import time

import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from triton_warmup.client import states, warm
from triton_warmup.embedded import EmbeddedTriton, free_port
from triton_warmup.helper.model_loading import HttpModelControl
from triton_warmup.helper.repository_guard import backup_path
from live_server import (
    EVIDENCE_LOG_VERBOSE,
    load_windows,
    model_states,
    repository_snapshot,
    template_with_helper_parameters,
    wait_for_log,
    warmup_runs,
)

# Start (a few seconds), the slow start-up model (SLOW_START_S) and the
# plan's loads with their preflight (seconds each on 2 CPUs), with room for
# a loaded CI machine.
START_WARMUP_TIMEOUT_S = 240
# A server whose helper fails to load exits within seconds.
EXIT_TIMEOUT_S = 60
MODULE_TIMEOUT_S = 900
# How long the extra start-up model keeps the server's start-up going after
# the helper's initialize has returned and started its thread.
SLOW_START_S = 4

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

START_PLAN = """\
# The plan the server warms at start.
defaults: {group_size_max: 3}
models:
  model-v1: {batch_sizes: [1, 2]}
  text-encoder: {group_size_max: 4, batch_sizes: [1]}
  session-encoder: {}
"""
PLANNED = ["model-v1", "text-encoder", "session-encoder"]

SLOW_MODEL = '''
import time


class TritonPythonModel:
    def initialize(self, args):
        time.sleep({seconds})

    def execute(self, requests):
        return []
'''


def start_repository(template, tmp_path, plan_text=START_PLAN, value="start.yaml", **parameters):
    repository = template_with_helper_parameters(
        template, tmp_path / "model_repository", warm_on_start=value, **parameters
    )
    if plan_text is not None:
        (repository / "warmup_helper" / "start.yaml").write_text(plan_text)
    # Core loads the models of the command line in name order (a std::set):
    # with one load thread, this one loads after the helper's initialize.
    slow = repository / "zz_slow_start"
    (slow / "1").mkdir(parents=True)
    (slow / "config.pbtxt").write_text(
        'name: "zz_slow_start"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [{ name: "X", data_type: TYPE_FP32, dims: [1] }]\n'
        'output [{ name: "Y", data_type: TYPE_FP32, dims: [1] }]\n'
        "instance_group [{ count: 1, kind: KIND_CPU }]\n"
    )
    (slow / "1" / "model.py").write_text(SLOW_MODEL.format(seconds=SLOW_START_S))
    return repository


def server_for(repository, tmp_path, *extra_args, load_models=("warmup_helper",)):
    return EmbeddedTriton(
        repository,
        tmp_path / "server",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        load_models=load_models,
        log_verbose=EVIDENCE_LOG_VERBOSE,
        extra_args=extra_args,
        extra_env={"TZ": "UTC"},
    )


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.05)


def ask_helper(server, arrays):
    """One request to the helper; its outputs, or the error it answered."""
    tensors = warm.infer_inputs("http", arrays)
    with httpclient.InferenceServerClient(server.http_url) as client:
        try:
            return client.infer("warmup_helper", tensors)
        except InferenceServerException as error:
            return error


def test_the_server_warms_its_start_plan_with_no_client(template_repository, tmp_path, capsys):
    """A start-up that goes on after the helper's initialize (a slow model of
    the command line) on one model-load thread: the helper's thread waits for
    it, then every planned model is READY, each sample run before READY;
    requests meanwhile get UNAVAILABLE with the progress; server readiness
    is 400 while a model of the start warmup loads."""
    repository = start_repository(template_repository, tmp_path)
    server = server_for(
        repository, tmp_path, "--model-load-thread-count=1", load_models=("warmup_helper", "zz_slow_start")
    )
    readiness, refusals, stop_polling = [], [], threading.Event()

    def poll():
        while not stop_polling.is_set():
            readiness.append(server.is_ready())
            # A model the repository lacks: refused as unknown once the start
            # warmup is done, so the poll itself never warms anything.
            answer = ask_helper(server, warm.shape_arrays(["no-such-model"], 1, 2))
            if isinstance(answer, InferenceServerException):
                refusals.append(answer.message())
            time.sleep(0.05)

    try:
        server.start()
        wait_until(lambda: "the server is ready; warming at start" in server.log_text() or not server.is_running(),
                   START_WARMUP_TIMEOUT_S, "the helper's thread did not begin")
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        assert warm.main(["-u", server.http_url, "--start-report", "--timeout", str(START_WARMUP_TIMEOUT_S)]) == 0
        stop_polling.set()
        poller.join(10)
        printed = capsys.readouterr().out
        # The total is the warmup's own span, however late the report is read.
        assert warm.main(["-u", server.http_url, "--start-report", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert f"total {report['seconds_total']:.2f} s" in printed

        states = model_states(server)
        assert all(states[name] == "READY" for name in PLANNED), states
        assert states["model-v2"] != "READY", "the warmup at start warmed a model its plan does not name"
        for name in PLANNED:
            (window,) = load_windows(server, name)
            runs = warmup_runs(server, name)
            assert runs, f"Triton ran no warmup sample of {name}"
            assert all(run["time"] <= window[1] for run in runs), f"{name}: a sample ran after READY"
            samples = {run["sample"] for run in runs}
            assert samples == set(server_samples(server, name)), name
        log = server.log_text()
        # The helper's thread started while the server's start-up went on, and
        # waited for it: the first planned load began after the slow model loaded.
        assert log.index("checked; warming once the server is ready") < log.index("successfully loaded 'zz_slow_start'")
        first_load = min(load_windows(server, name)[0][0] for name in PLANNED)
        assert load_windows(server, "zz_slow_start")[0][1] <= first_load
        assert "warmed at start: 3 of 3 model(s) READY" in wait_for_log(server, ["warmed at start"])
        for name in PLANNED:
            assert name in printed
        assert "PASS: Warmup done for models" in printed

        # Requests during the start warmup got the documented answer, and
        # nothing was warmed twice (one load per planned model).
        during = [refusal for refusal in refusals if "warmup_helper is warming at start:" in refusal]
        assert during and any(" of 3 models done" in refusal for refusal in during), refusals
        others = sorted({refusal for refusal in refusals if refusal not in during})
        assert all("no-such-model" in refusal for refusal in others), others
        # Triton's /v2/health/ready was 400 while the start warmup loaded models.
        assert False in readiness and server.is_ready()
    finally:
        stop_polling.set()
        server.stop()


def server_samples(server, model):
    with httpclient.InferenceServerClient(server.http_url) as client:
        return [sample["name"] for sample in client.get_model_config(model).get("model_warmup", [])]


def test_a_probe_fails_at_once_for_a_model_the_start_warmup_gave_up_on(template_repository, tmp_path, capsys):
    """A model whose preflight failed is never loaded, so Triton's index has
    no reason for it: the probe reads the start warmup's report instead of
    waiting out its --timeout (a pod then restarts when its probes say)."""
    plan = "defaults: {group_size_max: 2}\nmodels:\n  model-v1: {}\n  model-v2: {}\n"
    repository = start_repository(template_repository, tmp_path, plan)
    (repository / "model-v2" / "1" / "model.pt").write_bytes(b"not a TorchScript file")
    server = server_for(repository, tmp_path)
    try:
        server.start()
        # Not /v2/health/ready: the failed scratch load keeps it at 400 for good (docs/warm-on-start.md).
        wait_until(lambda: HttpModelControl(server.http_url).server_live() or not server.is_running(),
                   START_WARMUP_TIMEOUT_S, "the server did not come up")
        assert warm.main(["-u", server.http_url, "--start-report", "--timeout", str(START_WARMUP_TIMEOUT_S)]) == 1
        capsys.readouterr()
        code = states.main(["-u", server.http_url, "--wait-ready", "model-v1", "model-v2",
                            "--timeout", str(START_WARMUP_TIMEOUT_S)])
        err = capsys.readouterr().err
        assert code == 1, err
        assert "FAILED: model-v2 did not load: the warmup at start: " in err
        assert "not READY within" not in err
        assert states.main(["-u", server.http_url, "--wait-ready", "model-v1", "--timeout", "10"]) == 0
    finally:
        server.stop()


BAD_START_PLANS = {
    "unknown model": (
        "defaults: {group_size_max: 2}\nmodels:\n  model-v1: {}\n  no-such-model: {}\n",
        "start.yaml",
        ["start.yaml, line 4: models.no-such-model"],
    ),
    "missing file": (None, "start.yaml", ["start.yaml: no such plan file"]),
}


@pytest.mark.parametrize("plan_text, value, words", BAD_START_PLANS.values(), ids=BAD_START_PLANS.keys())
def test_a_bad_start_plan_keeps_the_server_down_and_one_log_line_says_why(
    template_repository, tmp_path, plan_text, value, words
):
    repository = start_repository(template_repository, tmp_path, plan_text, value)
    before = repository_snapshot(repository)
    server = server_for(repository, tmp_path)
    try:
        server.start()
        code = server.wait(EXIT_TIMEOUT_S)
    finally:
        server.stop()
    assert code not in (None, 0), "tritonserver came up with a bad start plan"
    lines = [line for line in server.log_text().splitlines() if "warm_on_start" in line and words[0] in line]
    assert lines, server.log_tail(40)
    assert "failed to load 'warmup_helper'" in lines[0] or "warmup_helper" in lines[0]
    assert repository_snapshot(repository) == before


def test_sigterm_during_the_start_warmup_leaves_every_config_whole(template_repository, tmp_path):
    """SIGTERM while the start warmup loads the first of its models, one at a
    time: Triton finishes that load; the models after it are not warmed, and
    their configs are their originals, or put back by the next start."""
    repository = start_repository(template_repository, tmp_path, max_parallel_loads="1")
    originals = {name: (repository / name / "config.pbtxt").read_bytes() for name in PLANNED}
    server = server_for(repository, tmp_path)
    try:
        server.start()
        wait_until(lambda: f"loading: {PLANNED[0]}:" in server.log_text() or not server.is_running(),
                   START_WARMUP_TIMEOUT_S, f"{PLANNED[0]}'s load did not begin")
        os.kill(server.pid, signal.SIGTERM)
        assert server.wait(EXIT_TIMEOUT_S) is not None, "tritonserver did not stop on SIGTERM"
    finally:
        server.stop()
    log = server.log_text()
    unloaded = [name for name in PLANNED if f"successfully loaded '{name}'" not in log]
    assert unloaded, "every model loaded: the SIGTERM came too late to test what it must leave"
    # The log blames the shutdown, not the models.
    for name in unloaded:
        assert f"'{name}' failed: not warmed: the server began to stop" in log, name
    for name in PLANNED:
        text = (repository / name / "config.pbtxt").read_bytes()
        loaded = f"successfully loaded '{name}'" in log
        if not loaded:
            # Either put back at once, or left with its backup for the next start.
            assert text == originals[name] or backup_path(repository / name).exists(), name
        assert not list((repository / name).glob(".*.tmp")), name

    # The next start (no warmup at start) puts back any config whose load was cut off.
    helper_config = repository / "warmup_helper" / "config.pbtxt"
    shutil.copyfile(template_repository / "warmup_helper" / "config.pbtxt", helper_config)
    restarted = server_for(repository, tmp_path / "again")
    with restarted:
        pass
    for name in PLANNED:
        assert not backup_path(repository / name).exists(), name
        if f"successfully loaded '{name}'" not in log:
            assert (repository / name / "config.pbtxt").read_bytes() == originals[name], name
