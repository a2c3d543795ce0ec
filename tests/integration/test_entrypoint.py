"""deploy/entrypoint.sh and the Deployment's probes, run for real.

The entrypoint starts the embedded tritonserver (``TRITONSERVER="python -m
embedded_triton"`` stands in for the image's tritonserver), warms the plan of
deploy/kubernetes/configmap.yaml and serves. The readiness probe command of
deploy/kubernetes/deployment.yaml runs as the kubelet would run it, with the
image's paths and port mapped to this checkout and this server.
"""

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import tritonclient.http as httpclient
import yaml

from embedded_triton import free_port
from live_server import PROJECT_ROOT

ENTRYPOINT = PROJECT_ROOT / "deploy" / "entrypoint.sh"
KUBERNETES = PROJECT_ROOT / "deploy" / "kubernetes"
IMAGE_CLIENTS_DIR = "/opt/warmup"
# Start (about 3 s) plus the plan's three loads (about 2.5 s each), twice
# over for a loaded CI machine, and the stop.
WARM_TIMEOUT_S = 120
# Triton unloads its models and the stubs exit on SIGTERM.
STOP_TIMEOUT_S = 60
MODULE_TIMEOUT_S = 400

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]


def manifest(kind):
    for path in KUBERNETES.glob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            if document["kind"] == kind:
                return document
    raise LookupError(kind)


def deployment_container():
    (container,) = manifest("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


@pytest.fixture
def configmap_plan(tmp_path):
    """The plan of the ConfigMap, as the pod sees it at its mount path."""
    (key, text), = manifest("ConfigMap")["data"].items()
    path = tmp_path / "etc-warmup" / key
    path.parent.mkdir()
    path.write_text(text)
    return path


def probe_command(probe, plan, http_port):
    """A probe's exec command with the image's paths and port mapped to this checkout."""
    (mount,) = deployment_container()["volumeMounts"]
    mapped = []
    for word in deployment_container()[probe]["exec"]["command"]:
        word = sys.executable if word == "python3" else word
        word = word.replace(IMAGE_CLIENTS_DIR, str(PROJECT_ROOT))
        word = word.replace(f"{mount['mountPath']}/{plan.name}", str(plan))
        mapped.append(word.replace("localhost:8000", f"localhost:{http_port}"))
    return mapped


@contextlib.contextmanager
def entrypoint(template, tmp_path, plan, *server_flags):
    """Run the entrypoint on a copy of ``template`` as the container would;
    always stop it and its server."""
    repository = tmp_path / "model_repository"
    shutil.copytree(template, repository)
    ports = {"HTTP_PORT": free_port(), "GRPC_PORT": free_port(), "METRICS_PORT": free_port()}
    env = {
        **os.environ,
        **{name: str(port) for name, port in ports.items()},
        "MODEL_REPOSITORY": str(repository),
        "WARMUP_PLAN": str(plan),
        "TRITONSERVER": f"{sys.executable} -m embedded_triton --workdir {tmp_path / 'server'}",
        "PYTHON": sys.executable,
        "CLIENTS_DIR": str(PROJECT_ROOT),
    }
    log_path = tmp_path / "container.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(ENTRYPOINT), *server_flags], env=env, cwd=PROJECT_ROOT,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    process.log_path = log_path
    process.http_port = ports["HTTP_PORT"]
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def output(process):
    return process.log_path.read_text(errors="replace")


def listening(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_pod_is_ready_only_once_the_plan_is_warm_and_stops_cleanly_on_sigterm(template_repository, tmp_path, configmap_plan):
    with entrypoint(template_repository, tmp_path, configmap_plan) as process:
        probe = probe_command("readinessProbe", configmap_plan, process.http_port)
        answers = []
        deadline = time.monotonic() + WARM_TIMEOUT_S
        while True:
            code = subprocess.run(probe, capture_output=True, text=True, timeout=30).returncode
            answers.append(code)
            if code == 0:
                break
            assert process.poll() is None, output(process)
            assert time.monotonic() < deadline, output(process)
            time.sleep(0.5)
        log_when_ready = output(process)

        # The probe failed while the server started and warmed; when it
        # passed, Triton had loaded every planned model with its samples.
        assert answers[0] != 0
        for model in ("model-v1", "model-v2", "model-v3"):
            assert f"successfully loaded '{model}'" in log_when_ready, model
            assert f"warmup_helper: '{model}' READY after" in log_when_ready, model
            with httpclient.InferenceServerClient(f"localhost:{process.http_port}") as client:
                assert client.get_model_config(model)["model_warmup"], model
        # The startup probe is the same check.
        startup = subprocess.run(probe_command("startupProbe", configmap_plan, process.http_port), timeout=30)
        assert startup.returncode == 0

        process.send_signal(signal.SIGTERM)
        code = process.wait(STOP_TIMEOUT_S)

    log = output(process)
    assert code == 0, log
    assert log.index("PASS: Warmup done") < log.index("entrypoint: READY: every model of")
    assert "entrypoint: tritonserver stopped (exit code 0)" in log
    assert not listening(process.http_port)


def test_a_model_that_fails_to_warm_stops_the_server_and_exits_1(template_repository, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("defaults: {group_size_max: 2}\nmodels:\n  model-v1: {}\n  no-such-model: {}\n")

    with entrypoint(template_repository, tmp_path, plan) as process:
        code = process.wait(WARM_TIMEOUT_S)

    log = output(process)
    assert code == 1, log
    assert "no model 'no-such-model'" in log
    assert "entrypoint: FAILED: the warmup of" in log
    assert "entrypoint: tritonserver stopped" in log
    assert not listening(process.http_port)


def test_a_bad_plan_exits_2_before_a_server_starts(template_repository, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("models:\n  model-v1:\n    group_size_max: many\n")

    with entrypoint(template_repository, tmp_path, plan) as process:
        code = process.wait(WARM_TIMEOUT_S)

    log = output(process)
    assert code == 2, log
    assert f"{plan}, line 3" in log
    assert "entrypoint: starting" not in log


def test_a_server_that_exits_at_start_fails_fast_with_its_exit_code(template_repository, tmp_path, configmap_plan):
    with entrypoint(template_repository, tmp_path, configmap_plan, "--no-such-flag") as process:
        code = process.wait(WARM_TIMEOUT_S)

    log = output(process)
    assert code == 1, log
    assert "entrypoint: tritonserver exited with code" in log
    assert "entrypoint: FAILED: tritonserver exited (code 1) before warmup_helper was READY" in log


def test_sigterm_during_the_warmup_stops_the_server_without_waiting_for_it(
    template_repository, tmp_path, configmap_plan
):
    """A pod deleted while it warms (a rollout that moves on, a scale-down)."""
    with entrypoint(template_repository, tmp_path, configmap_plan) as process:
        deadline = time.monotonic() + WARM_TIMEOUT_S
        while "warming " not in output(process):
            assert process.poll() is None and time.monotonic() < deadline, output(process)
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        code = process.wait(STOP_TIMEOUT_S)

    log = output(process)
    assert code == 0, log
    assert "entrypoint: signal received: stopping tritonserver" in log
    assert "entrypoint: READY" not in log
    assert not listening(process.http_port)
