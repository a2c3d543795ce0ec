"""The clients' own logic: usage errors, unreachable servers, output formats."""

import pathlib
import socket
import subprocess
import sys

import pytest

import query_model_states
import warmup_models
PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]


def unused_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(script, *args):
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / script), *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("script", ["warmup_models.py", "query_model_states.py"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unreachable_server_exits_3(script, protocol):
    result = run(script, "-i", protocol, "-u", f"localhost:{unused_port()}")
    assert result.returncode == 3, result.stderr
    assert "FAILED" in result.stderr


def test_feature_dims_must_match_models_exits_2():
    result = run("warmup_models.py", "--models", "a", "b", "--feature-dims", "64")
    assert result.returncode == 2
    assert "--feature-dims has 1 values for 2 models" in result.stderr


def test_table_lists_each_model_with_its_error():
    entries = [
        {"name": "model-v1", "status": "READY", "warmup_samples": 16, "count": 3, "instances": 1,
         "seconds_to_ready": 2.5, "config_changed": True, "error": None},
        {"name": "broken", "status": "FAILED", "warmup_samples": 4, "count": 3, "instances": 2,
         "seconds_to_ready": None, "config_changed": True, "config_written": True,
         "config_restored": True, "error": "load failed: bad file"},
        {"name": "read-only", "status": "READY", "warmup_samples": 4, "count": 3, "instances": 1,
         "seconds_to_ready": 1.0, "config_changed": True, "config_written": False, "error": None,
         "fallback": "/m/read-only/config.pbtxt is read-only (mode 0444); loaded with ..."},
    ]
    lines = warmup_models.format_table(entries).splitlines()
    assert lines[0].split() == ["model", "status", "samples", "runs", "instances", "seconds", "config", "error"]
    assert lines[2].split() == ["model-v1", "READY", "16", "3", "1", "2.50", "rewritten"]
    assert lines[3].split()[:7] == ["broken", "FAILED", "4", "3", "2", "-", "restored"]
    assert lines[3].endswith("load failed: bad file")
    assert lines[4].split()[:8] == ["read-only", "READY", "4", "3", "1", "1.00", "not", "written"]
    assert lines[4].endswith("loaded with the planned config: /m/read-only/config.pbtxt is read-only (mode 0444)")


def test_model_states_fill_in_models_never_loaded():
    index = [
        {"name": "model-v1"},
        {"name": "warmup_helper", "version": "1", "state": "READY"},
        {"name": "broken", "version": "1", "state": "UNAVAILABLE", "reason": "bad file"},
    ]
    assert query_model_states.model_states(index) == [
        {"name": "model-v1", "version": "", "state": "UNAVAILABLE"},
        {"name": "warmup_helper", "version": "1", "state": "READY"},
        {"name": "broken", "version": "1", "state": "UNAVAILABLE"},
    ]
