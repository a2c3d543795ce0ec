"""deploy/entrypoint.sh and the Deployment's probes, run for real.

The entrypoint execs the embedded tritonserver (``TRITONSERVER="python -m
triton_warmup.embedded"`` stands in for the image's tritonserver) on a copy
of the repository made as the image and the pod make it (``LocalContainer``):
the helper installed with ``warm_on_start``, and the plan of
deploy/kubernetes/configmap.yaml written over its start plan. No client
sends a warmup: the helper warms its start plan by itself. The probe
commands of deploy/kubernetes/deployment.yaml run as the kubelet would run
them, with the image's paths and port mapped to this checkout and this server.
"""

import fcntl
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import types

import pytest

from triton_warmup import threads
from triton_warmup.client import openmp_threads
from triton_warmup.client.plan_file import load_plan
from triton_warmup.embedded.container import LocalContainer, configmap_plan, probe_command
from triton_warmup.helper.repository_guard import LOCK_FILENAME
from live_server import EVIDENCE_LOG_VERBOSE, load_windows, served_config, warmup_runs

# Start (about 3 s), a few failing probes (5 s each, their --timeout) and the
# plan's three loads (under a second each), with a wide margin for a loaded
# CI machine.
WARM_TIMEOUT_S = 120
# Triton unloads its models and the stubs exit on SIGTERM.
STOP_TIMEOUT_S = 60
# A server whose helper fails to load, or that rejects a flag, exits within
# seconds of its start.
EXIT_TIMEOUT_S = 60
# One probe: a Python start, then index polls for its --timeout (5 s).
PROBE_TIMEOUT_S = 30
MODULE_TIMEOUT_S = 400

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

START_SUMMARY = "warmup_helper: warmed at start:"


@pytest.fixture
def configmap_plan_file(tmp_path):
    """The plan of the ConfigMap, as a file (the Deployment mounts its key)."""
    name, text = configmap_plan()
    path = tmp_path / "configmap" / name
    path.parent.mkdir()
    path.write_text(text)
    return path


def entrypoint(template, tmp_path, plan, *server_flags, **env):
    """The entrypoint on a copy of ``template``, as the container runs it.
    Triton's log times are read as UTC (live_server)."""
    repository = tmp_path / "model_repository"
    shutil.copytree(template, repository)
    return LocalContainer(repository, tmp_path, plan, server_flags, extra_env={"TZ": "UTC", **env})


def as_server(container):
    """The container, for live_server's readers of Triton's log and configs."""
    return types.SimpleNamespace(log_text=container.output, http_url=container.http_url)


def run_probe(container, probe="readinessProbe"):
    command = probe_command(probe, container.repository, container.http_port)
    return subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)


def hold_model_lock(container, model):
    """Hold ``model``'s lock, as a replica writing it on a shared volume
    would: the start warmup waits for it, and so cannot finish meanwhile."""
    lock = open(container.repository / model / LOCK_FILENAME, "w")
    fcntl.lockf(lock, fcntl.LOCK_EX)
    return lock


def listening(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def server_environment(container):
    """The environment of the container's first process, which is
    tritonserver itself once the entrypoint has exec'd it."""
    entries = pathlib.Path(f"/proc/{container.process.pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in entries if b"=" in entry)


def test_the_pod_is_ready_only_once_the_start_plan_is_warm_and_stops_cleanly_on_sigterm(
    template_repository, tmp_path, configmap_plan_file
):
    _, plan = load_plan(configmap_plan_file)
    # The user's flags reach tritonserver: the verbose level its evidence lines need.
    container = entrypoint(template_repository, tmp_path, configmap_plan_file, f"--log-verbose={EVIDENCE_LOG_VERBOSE}")
    # The whole start warmup takes a second or two on the native backend,
    # less than a probe's own wait: hold one planned model's lock until a
    # probe has failed on it.
    held_model = sorted(plan.models)[-1]
    lock = hold_model_lock(container, held_model)
    with container:
        answers = []
        deadline = time.monotonic() + WARM_TIMEOUT_S
        while True:
            probe = run_probe(container)
            answers.append(probe)
            if probe.returncode == 0:
                break
            if probe.returncode == 1 and held_model in probe.stdout + probe.stderr:
                lock.close()  # releases the lock: the warmup goes on
            assert container.process.poll() is None, container.output()
            assert time.monotonic() < deadline, container.output()
            time.sleep(0.5)
        log_when_ready = container.output()

        # The probe failed on the server while the held model was not warm.
        assert lock.closed, [answer.stdout + answer.stderr for answer in answers]
        # When it passed, Triton had loaded every planned model and run each
        # sample of its served config before marking it READY.
        server = as_server(container)
        for model in plan.models:
            assert f"successfully loaded '{model}'" in log_when_ready, model
            samples = {sample["name"] for sample in served_config(server, model)["model_warmup"]}
            (window,) = load_windows(server, model)
            runs = warmup_runs(server, model)
            assert {run["sample"] for run in runs} == samples, model
            assert all(run["time"] <= window[1] for run in runs), f"{model}: a sample ran after READY"
        # The startup probe is the same check.
        assert run_probe(container, "startupProbe").returncode == 0
        # The helper warmed by itself (no client): its summary, every model READY.
        container.wait_for_line(START_SUMMARY, WARM_TIMEOUT_S)
        assert f"{START_SUMMARY} {len(plan.models)} of {len(plan.models)} model(s) READY" in container.output()

        # The entrypoint exec'd tritonserver with OpenMP's thread count set
        # for the libtorch models, so the helper found nothing to warn about.
        assert pathlib.Path(f"/proc/{container.process.pid}/exe").resolve().name == "tritonserver"
        setting = threads.openmp_setting(openmp_threads.repository_configs(container.repository), threads.Machine.here())
        assert server_environment(container).get("OMP_NUM_THREADS") == (
            None if setting.value is None else str(setting.value))
        assert setting.reason in container.output()

        container.signal(signal.SIGTERM)
        code = container.wait(STOP_TIMEOUT_S)

    log = container.output()
    assert code == 0, log
    assert not listening(container.http_port)
    assert "thread counts differ" not in log


def test_sigterm_during_the_start_warmup_stops_the_server_cleanly(template_repository, tmp_path):
    """A pod deleted while it warms (a rollout that moves on, a scale-down):
    SIGTERM as soon as the helper starts its warmup, which then takes about
    a second here (each model's preflight, then its load). The container is
    the image alone (``docker run``, no ConfigMap), so the image's own start
    plan is the one the helper checks and begins to warm."""
    with entrypoint(template_repository, tmp_path, None) as container:
        _, plan = load_plan(container.start_plan)
        container.wait_for_line("warming at start", WARM_TIMEOUT_S)
        container.signal(signal.SIGTERM)
        code = container.wait(STOP_TIMEOUT_S)

    log = container.output()
    assert code == 0, log
    assert not listening(container.http_port)
    cut_short = [model for model in plan.models if f"successfully loaded '{model}'" not in log]
    assert cut_short, "every planned model loaded: the SIGTERM came too late to test a stop during the start warmup"


@pytest.mark.parametrize(
    "plan_text, where",
    [
        pytest.param("defaults: {group_size_max: 2}\nmodels:\n  model-v1: {}\n  no-such-model: {}\n",
                     "line 4: models.no-such-model", id="a model the repository lacks"),
        pytest.param("models:\n  model-v1:\n    group_size_max: many\n", "line 3", id="a value of the wrong type"),
    ],
)
def test_a_bad_plan_keeps_the_server_down_and_the_output_names_its_line(
    template_repository, tmp_path, plan_text, where
):
    # A subPath mount writes the ConfigMap's plan with no check: the helper's is the only one.
    plan = tmp_path / "configmap" / "start.yaml"
    plan.parent.mkdir()
    plan.write_text(plan_text)

    with entrypoint(template_repository, tmp_path, plan) as container:
        code = container.wait(EXIT_TIMEOUT_S)

    log = container.output()
    assert code not in (None, 0), log
    assert f"{container.start_plan.resolve()}, {where}" in log, log
    assert "successfully loaded 'model-v1'" not in log
    assert not listening(container.http_port)


def test_a_model_that_fails_to_warm_leaves_the_server_up_and_the_probe_failing(
    template_repository, tmp_path, configmap_plan_file
):
    _, plan = load_plan(configmap_plan_file)
    broken = "model-v2"
    assert broken in plan.models
    # A count the user set is kept: one the entrypoint would not choose.
    setting = threads.openmp_setting(openmp_threads.repository_configs(template_repository), threads.Machine.here())
    user_threads = str((setting.value or 1) + 1)
    container = entrypoint(template_repository, tmp_path, configmap_plan_file, OMP_NUM_THREADS=user_threads)
    (container.repository / broken / "1" / "model.pt").write_bytes(b"not a TorchScript file")

    with container:
        container.wait_for_line(START_SUMMARY, WARM_TIMEOUT_S)
        probe = run_probe(container)
        assert container.process.poll() is None and listening(container.http_port), container.output()
        environment = server_environment(container)

    log = container.output()
    others = len(plan.models) - 1
    assert f"{START_SUMMARY} {others} of {len(plan.models)} model(s) READY" in log, log
    assert f"not warmed: ['{broken}']" in log and f"warmup_helper: '{broken}' failed:" in log, log
    assert probe.returncode == 1, probe.stdout + probe.stderr
    assert broken in probe.stdout + probe.stderr
    assert environment["OMP_NUM_THREADS"] == user_threads


def test_a_server_that_exits_at_start_ends_the_container_with_its_exit_code(
    template_repository, tmp_path, configmap_plan_file
):
    with entrypoint(template_repository, tmp_path, configmap_plan_file, "--no-such-flag") as container:
        code = container.wait(EXIT_TIMEOUT_S)
    # The same server with the same flag, without the entrypoint.
    alone = subprocess.run(
        [sys.executable, "-m", "triton_warmup.embedded", "--workdir", str(tmp_path / "alone"), "--no-such-flag"],
        capture_output=True, text=True, timeout=EXIT_TIMEOUT_S, env={**os.environ, "TZ": "UTC"},
    )

    assert code == alone.returncode != 0, container.output()
    assert "no-such-flag" in container.output()
