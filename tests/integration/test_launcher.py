"""triton-warmup-serve and EmbeddedTriton: pass-through flags, running a command, clean
stops on SIGTERM with no stub left behind, a fast failure when the server dies, and
Triton's auto-complete left out only where no model needs it."""

import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from triton_warmup.embedded import EmbeddedTriton, TritonStartError
from live_server import COMMANDS, free_port, live_processes

# A server start (~3 s with the helper's stub) plus a stop; the margin is
# for a busy machine.
LAUNCHER_TEST_TIMEOUT_S = 120

pytestmark = [pytest.mark.integration, pytest.mark.timeout(LAUNCHER_TEST_TIMEOUT_S)]


def processes_mentioning(text: str):
    """PIDs of live processes whose command line contains ``text``."""
    return [process["pid"] for process in live_processes() if text in process["cmdline"]]


def serve_argv(template_repository, workdir, *extra):
    return [
        str(COMMANDS / "triton-warmup-serve"),
        "--model-repository", str(template_repository),
        "--working-copy", "--workdir", str(workdir),
        "--http-port", str(free_port()), "--grpc-port", str(free_port()),
        "--metrics-port", str(free_port()),
        *extra,
    ]


def test_command_runs_against_the_ready_server_and_its_exit_code_is_returned(template_repository, tmp_path):
    check = (
        "import sys, urllib.request;"
        "urllib.request.urlopen('http://127.0.0.1:' + sys.argv[1] + '/v2/health/ready');"
        "sys.exit(7)"
    )
    argv = serve_argv(template_repository, tmp_path, "--exit-timeout-secs=5")
    http_port = argv[argv.index("--http-port") + 1]
    result = subprocess.run(argv + ["--", sys.executable, "-c", check, http_port],
                            capture_output=True, text=True, timeout=LAUNCHER_TEST_TIMEOUT_S)
    assert result.returncode == 7, result.stdout + result.stderr
    assert "tritonserver ready" in result.stdout
    # The pass-through flag reached tritonserver, whose option table logs it.
    assert "exit_timeout" in (tmp_path / "tritonserver.log").read_text()
    assert not processes_mentioning(str(tmp_path / "backends"))
    # The working copy was served, not the template.
    assert (tmp_path / "model_repository" / "warmup_helper" / "config.pbtxt").is_file()


def test_sigterm_stops_the_server_and_every_stub(template_repository, tmp_path):
    process = subprocess.Popen(serve_argv(template_repository, tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if "tritonserver ready" in line:
                break
        stubs = [pid for pid in processes_mentioning("triton_python_backend_stub") if pid in
                 processes_mentioning(str(tmp_path))]
        assert stubs, "the helper's stub should be running"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    deadline = time.monotonic() + 10
    while processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(str(tmp_path))


def test_wait_ready_fails_fast_with_the_log_when_the_server_dies(template_repository, tmp_path):
    server = EmbeddedTriton(
        template_repository, tmp_path, http_port=free_port(), grpc_port=free_port(),
        metrics_port=free_port(), load_models=["warmup_helper", "no-such-model"],
    )
    started = time.monotonic()
    server.start()
    try:
        with pytest.raises(TritonStartError, match="exited with code") as caught:
            server.wait_ready(timeout=60)
    finally:
        server.stop()
    assert time.monotonic() - started < 30
    # The error carries the log's tail, which says what went wrong.
    assert "no-such-model" in str(caught.value)
    assert not processes_mentioning(str(tmp_path / "backends"))


LOAD_AND_CHECK = (
    "import sys, tritonclient.http as http;"
    "client = http.InferenceServerClient('localhost:' + sys.argv[1]);"
    "[client.load_model(name) for name in sys.argv[2:]];"
    "sys.exit(0 if all(client.is_model_ready(name) for name in sys.argv[2:]) else 5)"
)


def stubs_started(log_text: str):
    """The model instance names the Python backend started stubs for, in order.

    An instance's stub is named ``<model>_<group>_<index>``; the stub that
    asks a model's ``auto_complete_config`` carries the model's bare name.
    """
    return [line.split(" ")[-2] for line in log_text.splitlines() if "Starting Python backend stub" in line]


def serve_and_load(template_repository, workdir, models, *extra):
    argv = serve_argv(template_repository, workdir, "--log-verbose", "1", *extra)
    http_port = argv[argv.index("--http-port") + 1]
    result = subprocess.run(argv + ["--", sys.executable, "-c", LOAD_AND_CHECK, http_port, *models],
                            capture_output=True, text=True, timeout=LAUNCHER_TEST_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, (workdir / "tritonserver.log").read_text()


def test_the_launcher_starts_without_auto_complete_where_no_model_needs_it(template_repository, tmp_path):
    output, log = serve_and_load(template_repository, tmp_path, ["tokenizer", "embed"])
    assert "--disable-auto-complete-config for tritonserver: no config of the" in output
    # Triton's own option table, and one stub per Python instance: none to ask auto_complete_config.
    assert re.search(r"\| strict_model_config\s+\| 1\s+\|", log)
    started = stubs_started(log)
    assert {"warmup_helper_0_0", "tokenizer_0_0"} <= set(started)
    assert all(re.fullmatch(r".+_\d+_\d+", name) for name in started), started


def test_a_model_without_a_config_keeps_auto_complete_and_loads(template_repository, tmp_path):
    repository = tmp_path / "repository"
    shutil.copytree(template_repository, repository)
    (repository / "tokenizer" / "config.pbtxt").unlink()
    output, log = serve_and_load(repository, tmp_path / "run", ["tokenizer"])
    assert "Triton's auto-complete kept: model 'tokenizer' may need it: it has no config.pbtxt" in output
    assert re.search(r"\| strict_model_config\s+\| 0\s+\|", log)
    assert {"warmup_helper", "tokenizer"} <= set(stubs_started(log))
