"""Both ways the helper can ask Triton to load: the server's own HTTP
endpoint (found by default) and pb_utils.load_model (``load_api: bls``)."""

import pytest
import tritonclient.http as httpclient

from live_server import (
    model_states,
    running_server,
    send_warmup,
    template_with_helper_parameters,
    warmup_inputs,
)

# Server start plus two model loads (~2 s each), with room for a busy machine.
MODULE_TIMEOUT_S = 120

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]


def test_auto_finds_this_servers_http_endpoint(template_repository, tmp_path):
    with running_server(template_repository, tmp_path) as server:
        assert f"loads through HTTP model-repository endpoint 127.0.0.1:{server.http_port}" in server.log_text()


def test_bls_load_warms_a_model(template_repository, tmp_path):
    template = template_with_helper_parameters(template_repository, tmp_path / "template", load_api="bls")
    with running_server(template, tmp_path / "server") as server:
        assert "loads through pb_utils.load_model" in server.log_text()
        loaded, report = send_warmup(server, "grpc", warmup_inputs(["model-v1"], 1, 2, batch_sizes=[1, 4]))
        assert loaded == ["model-v1"]
        assert report.models[0].warmup_samples == 4
        assert model_states(server)["model-v1"] == "READY"
        # The preflight's scratch copy loaded through pb_utils.load_model too.
        preflight = report.models[0].preflight
        assert preflight.how == "scratch copy" and preflight.samples_checked == 4

        # A read-only config goes to pb_utils.load_model(config=...) instead.
        config = server.model_repository / "model-v2" / "config.pbtxt"
        config.chmod(0o444)
        original = config.read_bytes()
        loaded, report = send_warmup(server, "http", warmup_inputs(["model-v2"], 1, 2, batch_sizes=[1, 4]))
        (entry,) = report.models
        assert loaded == ["model-v2"] and "read-only" in entry.fallback
        assert config.read_bytes() == original
        with httpclient.InferenceServerClient(server.http_url) as client:
            assert len(client.get_model_config("model-v2")["model_warmup"]) == 4

        # A read-only repository folder: the scratch copy's files go to
        # pb_utils.load_model(files=...), the planned config to its config.
        server.model_repository.chmod(0o555)
        try:
            loaded, report = send_warmup(server, "http", warmup_inputs(["model-v3"], 1, 1, batch_sizes=[1]))
        finally:
            server.model_repository.chmod(0o755)
        (entry,) = report.models
        assert loaded == ["model-v3"], entry
        assert entry.preflight.scratch.startswith("file overrides in the load request")
        assert entry.preflight.samples_checked == 1 and entry.fallback
