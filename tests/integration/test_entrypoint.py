"""deploy/entrypoint.sh and the Deployment's probes, run for real.

The entrypoint starts the embedded tritonserver (``TRITONSERVER="python -m
embedded_triton"`` stands in for the image's tritonserver), warms the plan of
deploy/kubernetes/configmap.yaml and serves. The readiness probe command of
deploy/kubernetes/deployment.yaml runs as the kubelet would run it, with the
image's paths and port mapped to this checkout and this server.
"""

import fcntl
import shutil
import signal
import socket
import subprocess
import time

import pytest
import tritonclient.http as httpclient

from triton_warmup import threads
from triton_warmup.embedded.container import LocalContainer, configmap_plan, probe_command
from triton_warmup.client.plan_file import load_plan
from triton_warmup.helper.repository_guard import LOCK_FILENAME

# Start (about 3 s), one failing probe (5 s) and the plan's three loads
# (under a second each), with a wide margin for a loaded CI machine.
WARM_TIMEOUT_S = 120
# Triton unloads its models and the stubs exit on SIGTERM.
STOP_TIMEOUT_S = 60
MODULE_TIMEOUT_S = 400

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]


@pytest.fixture
def configmap_plan_file(tmp_path):
    """The plan of the ConfigMap, as the pod sees it at its mount path."""
    name, text = configmap_plan()
    path = tmp_path / "etc-warmup" / name
    path.parent.mkdir()
    path.write_text(text)
    return path


def entrypoint(template, tmp_path, plan, *server_flags):
    """The entrypoint on a copy of ``template``, as the container runs it."""
    repository = tmp_path / "model_repository"
    shutil.copytree(template, repository)
    return LocalContainer(repository, plan, tmp_path, server_flags)


def listening(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_pod_is_ready_only_once_the_plan_is_warm_and_stops_cleanly_on_sigterm(
    template_repository, tmp_path, configmap_plan_file
):
    _, plan = load_plan(configmap_plan_file)
    container = entrypoint(template_repository, tmp_path, configmap_plan_file)
    # The whole warmup takes a few seconds on the native backend, less than
    # the probe's own wait: hold one planned model's lock (as a replica
    # writing it on a shared volume would) so that the warmup cannot finish
    # until the probe has been seen to fail.
    held_model = sorted(plan.models)[-1]
    lock = open(container.repository / held_model / LOCK_FILENAME, "w")
    fcntl.lockf(lock, fcntl.LOCK_EX)
    with container:
        probe = probe_command("readinessProbe", configmap_plan_file, container.http_port)
        answers = []
        deadline = time.monotonic() + WARM_TIMEOUT_S
        while True:
            code = subprocess.run(probe, capture_output=True, text=True, timeout=30).returncode
            answers.append(code)
            if code == 0:
                break
            if not lock.closed:
                lock.close()  # releases the lock: the warmup goes on
            assert container.process.poll() is None, container.output()
            assert time.monotonic() < deadline, container.output()
            time.sleep(0.5)
        log_when_ready = container.output()

        # The probe failed while the plan was not warm; when it passed,
        # Triton had loaded every planned model with its samples.
        assert answers[0] != 0
        for model in plan.models:
            assert f"successfully loaded '{model}'" in log_when_ready, model
            with httpclient.InferenceServerClient(f"localhost:{container.http_port}") as client:
                assert client.get_model_config(model)["model_warmup"], model
        # The startup probe is the same check.
        startup = subprocess.run(probe_command("startupProbe", configmap_plan_file, container.http_port), timeout=30)
        assert startup.returncode == 0

        container.signal(signal.SIGTERM)
        code = container.wait(STOP_TIMEOUT_S)

    log = container.output()
    assert code == 0, log
    assert log.index("PASS: Warmup done") < log.index("entrypoint: READY: every model of")
    # The helper's own lines (a stub's log lines arrive asynchronously, so
    # only the whole log is sure to hold them).
    assert all(f"warmup_helper: '{model}' READY after" in log for model in plan.models), log
    assert "entrypoint: tritonserver stopped (exit code 0)" in log
    assert not listening(container.http_port)
    # The entrypoint set OpenMP's thread count for the libtorch models, so the
    # helper found nothing to warn about.
    setting = threads.openmp_setting(threads.repository_configs(container.repository), threads.Machine.here())
    assert setting.reason in log
    assert "thread counts differ" not in log


@pytest.mark.parametrize(
    "plan_text, exit_code, said, not_said",
    [
        pytest.param(
            "defaults: {group_size_max: 2}\nmodels:\n  model-v1: {}\n  no-such-model: {}\n", 1,
            ["no model 'no-such-model'", "entrypoint: FAILED: the warmup of", "entrypoint: tritonserver stopped"],
            ["entrypoint: READY"],
            id="a model that fails to warm stops the server",
        ),
        pytest.param(
            "models:\n  model-v1:\n    group_size_max: many\n", 2,
            ["plan.yaml, line 3"], ["entrypoint: starting"],
            id="a bad plan is refused before a server starts",
        ),
    ],
)
def test_a_plan_that_cannot_be_warmed_exits_non_zero(
    template_repository, tmp_path, plan_text, exit_code, said, not_said
):
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text)

    with entrypoint(template_repository, tmp_path, plan) as container:
        code = container.wait(WARM_TIMEOUT_S)

    log = container.output()
    assert code == exit_code, log
    assert all(text in log for text in said), log
    assert not any(text in log for text in not_said), log
    assert not listening(container.http_port)


def test_a_server_that_exits_at_start_fails_fast_with_its_exit_code(template_repository, tmp_path, configmap_plan_file):
    with entrypoint(template_repository, tmp_path, configmap_plan_file, "--no-such-flag") as container:
        code = container.wait(WARM_TIMEOUT_S)

    log = container.output()
    assert code == 1, log
    assert "entrypoint: tritonserver exited with code" in log
    assert "entrypoint: FAILED: tritonserver exited (code 1) before warmup_helper was READY" in log


def test_sigterm_during_the_warmup_stops_the_server_without_waiting_for_it(
    template_repository, tmp_path, configmap_plan_file
):
    """A pod deleted while it warms (a rollout that moves on, a scale-down)."""
    with entrypoint(template_repository, tmp_path, configmap_plan_file) as container:
        container.wait_for_line("warming ", WARM_TIMEOUT_S)
        container.signal(signal.SIGTERM)
        code = container.wait(STOP_TIMEOUT_S)

    log = container.output()
    assert code == 0, log
    assert "entrypoint: signal received: stopping tritonserver" in log
    assert "entrypoint: READY" not in log
    assert not listening(container.http_port)
