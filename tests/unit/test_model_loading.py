"""Finding the server's own HTTP endpoint and choosing how to load models."""

import os

import pytest

from model_loading import HttpModelControl, choose_model_control, http_url_from_argv, server_argv


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
