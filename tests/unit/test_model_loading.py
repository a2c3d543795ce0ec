"""Finding the server's own HTTP endpoint and choosing how to load models."""

import base64
import os
import subprocess
import time

import pytest

import http.server
import json
import threading

from triton_warmup.helper.model_loading import (
    HttpModelControl,
    ModelLoadError,
    choose_model_control,
    choose_warmup_mode,
    http_url_from_argv,
    model_control_mode_from_argv,
    process_start_time,
    restricted_headers_from_argv,
    server_argv,
)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["tritonserver", "--model-repository=/m"], "127.0.0.1:8000"),
        (["tritonserver", "--http-port=8123"], "127.0.0.1:8123"),
        (["tritonserver", "--http-port", "9000", "--grpc-port=9001"], "127.0.0.1:9000"),
        (["tritonserver", "--http-address=10.1.2.3", "--http-port=81"], "10.1.2.3:81"),
        (["tritonserver", "--http-address=::1"], "[::1]:8000"),
        (["tritonserver", "--allow-http=false", "--http-port=81"], None),
        (["tritonserver", "--allow-http=true", "--http-port=81"], "127.0.0.1:81"),
    ],
)
def test_http_url_from_the_server_command_line(argv, expected):
    assert http_url_from_argv(argv) == expected


def test_server_argv_reads_proc():
    argv = server_argv(os.getpid())
    assert argv and "python" in argv[0]


class BlsStandIn:
    description = "pb_utils.load_model"


def test_auto_prefers_the_http_endpoint_and_falls_back_to_bls():
    bls = BlsStandIn()
    control = choose_model_control("auto", "127.0.0.1:8000", bls)
    assert isinstance(control, HttpModelControl) and control.url == "127.0.0.1:8000"
    assert choose_model_control("auto", None, bls) is bls
    assert choose_model_control("bls", "127.0.0.1:8000", bls) is bls


def test_bad_load_api_settings_are_refused():
    with pytest.raises(ValueError, match="one of"):
        choose_model_control("grpc", None, BlsStandIn())
    with pytest.raises(ValueError, match="unknown"):
        choose_model_control("http", None, BlsStandIn())


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["tritonserver"], {}),
        (["tritonserver", "--http-restricted-api=model-repository:admin-key=secret"], {"admin-key": "secret"}),
        (
            ["tritonserver", "--http-restricted-api", "model-repository,health:k=v=w",
             "--http-restricted-api=inference:other=x", "--grpc-restricted-protocol=model-repository:g=h"],
            {"k": "v=w", "other": "x"},
        ),
    ],
)
def test_restricted_api_headers_from_the_server_command_line(argv, expected):
    assert restricted_headers_from_argv(argv) == expected


@pytest.fixture
def recording_endpoint():
    """A local HTTP server that records requests and answers like Triton's load endpoint."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append((self.path, self.headers, body))  # names are case-insensitive
            failing = "broken" in self.path
            self.send_response(400 if failing else 200)
            self.end_headers()
            if failing:
                self.wfile.write(json.dumps({"error": "failed to load 'broken'"}).encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_http_load_sends_the_config_and_the_restricted_header(recording_endpoint):
    url, seen = recording_endpoint
    control = HttpModelControl(url, headers={"admin-key": "secret"})
    control.load("model-v1")
    control.load("model v2", config='{"name": "model v2"}')
    with pytest.raises(ModelLoadError, match="failed to load 'broken'"):
        control.load("broken")
    (path1, headers1, body1), (path2, headers2, body2), _ = seen
    assert path1 == "/v2/repository/models/model-v1/load" and body1 == b""
    assert path2 == "/v2/repository/models/model%20v2/load"
    assert json.loads(body2) == {"parameters": {"config": '{"name": "model v2"}'}}
    assert headers1.get("admin-key") == headers2.get("admin-key") == "secret"


def test_http_load_sends_files_base64_encoded_and_unloads(recording_endpoint):
    url, seen = recording_endpoint
    control = HttpModelControl(url)
    content = bytes(range(256)) * 1000
    control.load(".scratch", config='{"name": ".scratch"}', files={"file:1/model.pt": content, "file:a b": b""})
    control.unload(".scratch")
    (path, headers, body), (unload_path, _, unload_body) = seen
    assert path == "/v2/repository/models/.scratch/load" and int(headers["Content-Length"]) == len(body)
    parameters = json.loads(body)["parameters"]
    assert parameters["config"] == '{"name": ".scratch"}'
    assert base64.b64decode(parameters["file:1/model.pt"]) == content and parameters["file:a b"] == ""
    assert unload_path == "/v2/repository/models/.scratch/unload" and unload_body == b""


def test_process_start_time_is_a_new_process_start():
    before = time.time()
    child = subprocess.Popen(["sleep", "5"])
    try:
        started = process_start_time(child.pid)
    finally:
        child.kill()
        child.wait()
    # /proc/stat's boot time is whole seconds, and clock ticks are 10 ms.
    assert before - 1.5 < started <= time.time() + 1


@pytest.mark.parametrize(
    "argv, expected",
    [
        (None, None),
        (["tritonserver", "--model-repository=/m"], "none"),
        (["tritonserver", "--model-control-mode=explicit"], "explicit"),
        (["tritonserver", "--model-control-mode", "POLL"], "poll"),
    ],
)
def test_model_control_mode_comes_from_the_command_line(argv, expected):
    assert model_control_mode_from_argv(argv) == expected


@pytest.mark.parametrize(
    "requested, server_mode, expected",
    [
        ("auto", "explicit", "load"),
        ("auto", None, "load"),
        ("auto", "poll", "requests"),
        ("auto", "none", "requests"),
        ("requests", "explicit", "requests"),
        ("load", "explicit", "load"),
    ],
)
def test_warmup_mode_follows_what_the_server_allows(requested, server_mode, expected):
    mode, reason = choose_warmup_mode(requested, server_mode)
    assert mode == expected
    assert f"MODE {requested}" in reason


@pytest.mark.parametrize("server_mode", ["poll", "none"])
def test_load_mode_on_a_server_that_cannot_load_is_refused(server_mode):
    with pytest.raises(ValueError, match=f"runs in {server_mode} model-control mode.*use MODE requests"):
        choose_warmup_mode("load", server_mode)
