"""Both ways the helper can ask Triton to load: the server's own HTTP
endpoint (found by default) and pb_utils.load_model (``load_api: bls``)."""

import shutil

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from live_server import model_states, running_server, send_warmup, warmup_inputs

# Server start plus one model load (~2 s), with room for a busy machine.
MODULE_TIMEOUT_S = 120

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]


def test_auto_finds_this_servers_http_endpoint(template_repository, tmp_path):
    with running_server(template_repository, tmp_path) as server:
        assert f"loads through HTTP model-repository endpoint 127.0.0.1:{server.http_port}" in server.log_text()


def test_bls_load_warms_a_model(template_repository, tmp_path):
    template = tmp_path / "template"
    shutil.copytree(template_repository, template)
    helper_config = template / "warmup_helper" / "config.pbtxt"
    config = text_format.Parse(helper_config.read_text(), model_config_pb2.ModelConfig())
    config.parameters["load_api"].string_value = "bls"
    helper_config.write_text(text_format.MessageToString(config))

    with running_server(template, tmp_path / "server") as server:
        assert "loads through pb_utils.load_model" in server.log_text()
        loaded, report = send_warmup(server, "grpc", warmup_inputs(["model-v1"], 1, 2, batch_sizes=[1, 4]))
        assert loaded == ["model-v1"]
        assert report["models"][0]["warmup_samples"] == 4
        assert model_states(server)["model-v1"] == "READY"
