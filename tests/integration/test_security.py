"""A locked-down server: model-control endpoints restricted to clients that
send a header (tritonserver's restricted-API flags), a helper that may touch
only the models on its allow-list, and a smaller plan cap, all set in the
helper's config.pbtxt. A default server shows the same requests without the
allow-list."""

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from triton_warmup.client import warm as warm_cli, states as states_cli
from live_server import (
    model_states,
    repository_snapshot,
    send_warmup,
    template_with_helper_parameters,
    warmup_inputs,
)

# Two servers start; three loads.
MODULE_TIMEOUT_S = 180

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

HEADER_KEY, HEADER_VALUE = "admin-key", "s3cret"
HTTP_HEADERS = {HEADER_KEY: HEADER_VALUE}
RESTRICTED_FLAGS = [
    f"--http-restricted-api=model-repository:{HEADER_KEY}={HEADER_VALUE}",
    f"--grpc-restricted-protocol=model-repository:{HEADER_KEY}={HEADER_VALUE}",
]
ALLOWED = ["model-v1", "model-v3"]
PLAN_CAP = 6


@pytest.fixture(scope="module")
def locked(start_server, template_repository, tmp_path_factory):
    template = template_with_helper_parameters(
        template_repository,
        tmp_path_factory.mktemp("locked") / "template",
        allowed_models=",".join(ALLOWED),
        max_warmup_samples=str(PLAN_CAP),
    )
    return start_server("locked", template, extra_args=RESTRICTED_FLAGS)


@pytest.fixture(scope="module")
def default(start_server):
    return start_server("default")


def header_flag():
    return ["-H", f"{HEADER_KEY}={HEADER_VALUE}"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_repository_endpoints_refuse_clients_without_the_header(run_cli, locked, protocol):
    url = locked.grpc_url if protocol == "grpc" else locked.http_url
    refused = run_cli(states_cli.main, "-u", url, "-i", protocol)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "restricted" in refused.stderr and HEADER_KEY in refused.stderr

    allowed = run_cli(states_cli.main, "-u", url, "-i", protocol, *header_flag())
    assert allowed.returncode == 0, allowed.stderr
    assert "'name': 'warmup_helper'" in allowed.stdout

    if protocol == "http":
        client, headers = httpclient.InferenceServerClient(url), HTTP_HEADERS
    else:
        client, headers = grpcclient.InferenceServerClient(url), {f"triton-grpc-protocol-{HEADER_KEY}": HEADER_VALUE}
    with client:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.unload_model("model-v3")
        client.unload_model("model-v3", headers=headers)


def test_warmup_through_a_restricted_server(run_cli, locked):
    """The helper loads through the restricted HTTP endpoint: it finds the
    header on the server's command line."""
    result = run_cli(warm_cli.main, "-u", locked.http_url, *header_flag(),
        "--models", "model-v1", "--group-size-max", "2", "--batch-sizes", "1", "2",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS: Warmup done for models: ['model-v1']" in result.stdout
    assert "no live states" not in result.stdout
    assert f"(with restricted-API header {HEADER_KEY})" in locked.log_text()
    assert model_states(locked, HTTP_HEADERS)["model-v1"] == "READY"

    # Without the header the warmup itself still runs (inference is not
    # restricted here); only the live states are missing, and it says so.
    # A new plan, so that the request lasts a reload.
    result = run_cli(warm_cli.main, "-u", locked.http_url,
        "--models", "model-v1", "--group-size-max", "3", "--batch-sizes", "1", "2",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no live states: the server refused the repository index" in result.stdout


def test_allow_list_refuses_other_models_and_changes_nothing(locked, default):
    before = repository_snapshot(locked.model_repository)
    with pytest.raises(InferenceServerException) as caught:
        send_warmup(locked, "grpc", warmup_inputs(["model-v3", "model-v2"], 1, 2))
    message = caught.value.message()
    assert "MODELS" in message and "'model-v2' is not in the warmup_helper's allowed_models" in message
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert repository_snapshot(locked.model_repository) == before
    assert model_states(locked, HTTP_HEADERS)["model-v2"] != "READY"

    # Without an allow-list the same model is warmed.
    loaded, _ = send_warmup(default, "grpc", warmup_inputs(["model-v2"], 1, 1, batch_sizes=[1]))
    assert loaded == ["model-v2"]


def test_plan_cap_comes_from_the_helper_config(locked, default):
    before = repository_snapshot(locked.model_repository)
    too_many = warmup_inputs(["model-v3"], 1, 4, batch_sizes=[1, 2])  # 8 samples
    with pytest.raises(InferenceServerException) as caught:
        send_warmup(locked, "http", too_many)
    assert "GROUP_SIZE_MAX" in caught.value.message()
    assert f"above the cap of {PLAN_CAP}" in caught.value.message()
    assert repository_snapshot(locked.model_repository) == before

    # The default cap (1024) takes it.
    loaded, report = send_warmup(default, "http", warmup_inputs(["model-v3"], 1, 4, batch_sizes=[1, 2]))
    assert loaded == ["model-v3"] and report.models[0].warmup_samples == 8
