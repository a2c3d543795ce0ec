"""Bad requests get a clear error naming the input, and nothing on disk changes;
a model whose load fails is reported, its config restored, the others warmed."""

import shutil

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from triton_warmup.client import warm as warm_cli
from live_server import (
    client_for,
    model_states,
    repository_snapshot,
    send_warmup,
    warmup_inputs,
)

# Server start plus, for the failed-load test, one good and one broken load.
MODULE_TIMEOUT_S = 180

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]


@pytest.fixture(scope="module")
def server(start_server):
    server = start_server("bad_requests")
    repository = server.model_repository
    (repository / "no-config" / "1").mkdir(parents=True)
    (repository / "bad-config" / "1").mkdir(parents=True)
    (repository / "bad-config" / "config.pbtxt").write_text('name: "bad-config"\ninput [ { name: ')
    broken = repository / "broken-model"
    (broken / "1").mkdir(parents=True)
    config = (repository / "model-v1" / "config.pbtxt").read_text()
    (broken / "config.pbtxt").write_text(config.replace('name: "model-v1"', 'name: "broken-model"'))
    (broken / "1" / "model.pt").write_bytes(b"this is not a TorchScript archive")
    # A complete, valid model that lies outside the repository, reached
    # through a symlink inside it, and one in a hidden folder.
    outside = server.workdir / "outside" / "escaped"
    shutil.copytree(repository / "model-v1", outside)
    (repository / "escaped").symlink_to(outside, target_is_directory=True)
    shutil.copytree(repository / "model-v1", repository / ".hidden-model")
    return server


def ids(values):
    return np.array(values, dtype=np.int64)


def names(*values):
    return np.array([value if isinstance(value, bytes) else value.encode() for value in values], dtype=np.object_)


GOOD = warmup_inputs(["model-v1"], 1, 2)

# Each case: the request inputs, and the input its error must name.
BAD_REQUESTS = {
    "missing MODELS": ({k: v for k, v in GOOD.items() if k != "MODELS"}, "MODELS"),
    "missing GROUP_SIZE_MAX": ({k: v for k, v in GOOD.items() if k != "GROUP_SIZE_MAX"}, "GROUP_SIZE_MAX"),
    "wrong dtype": ({**GOOD, "GROUP_SIZE_MIN": np.array([1.0], dtype=np.float32)}, "GROUP_SIZE_MIN"),
    "empty MODELS": ({**GOOD, "MODELS": np.array([], dtype=np.object_)}, "MODELS"),
    "length mismatch": ({**GOOD, "FEATURE_DIMS": ids([64, 128])}, "FEATURE_DIMS"),
    "min above max": ({**GOOD, "GROUP_SIZE_MIN": ids([3])}, "GROUP_SIZE_MIN"),
    "size below 1": ({**GOOD, "GROUP_SIZE_MIN": ids([0])}, "GROUP_SIZE_MIN"),
    "batch size below 1": ({**GOOD, "BATCH_SIZES": ids([0])}, "BATCH_SIZES"),
    "batch size above max_batch_size": ({**GOOD, "BATCH_SIZES": ids([1, 9])}, "BATCH_SIZES"),
    "feature dim contradicts config": ({**GOOD, "FEATURE_DIMS": ids([65])}, "FEATURE_DIMS"),
    "plan above the cap": ({**GOOD, "GROUP_SIZE_MAX": ids([10**9])}, "GROUP_SIZE_MAX"),
    "unknown model": ({**GOOD, "MODELS": names("model-v1", "no-such-model")}, "MODELS"),
    "parent folder": ({**GOOD, "MODELS": names("..")}, "MODELS"),
    "path": ({**GOOD, "MODELS": names("model-v1/1")}, "MODELS"),
    "absolute path": ({**GOOD, "MODELS": names("/etc")}, "MODELS"),
    "helper itself": ({**GOOD, "MODELS": names("warmup_helper")}, "MODELS"),
    "symlink to a folder outside": ({**GOOD, "MODELS": names("escaped")}, "MODELS"),
    "hidden folder": ({**GOOD, "MODELS": names(".hidden-model")}, "MODELS"),
    "no config.pbtxt": ({**GOOD, "MODELS": names("model-v1", "no-config")}, "MODELS"),
    "unparsable config.pbtxt": ({**GOOD, "MODELS": names("bad-config")}, "MODELS"),
    "not UTF-8": ({**GOOD, "MODELS": names(b"\xff\xfe")}, "MODELS"),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("inputs, field", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request_is_refused_naming_the_input_and_changes_nothing(server, protocol, inputs, field):
    before = repository_snapshot(server.model_repository)
    states = model_states(server)
    with pytest.raises(InferenceServerException) as caught:
        send_warmup(server, protocol, inputs)
    assert field in caught.value.message()
    assert repository_snapshot(server.model_repository) == before
    assert model_states(server) == states
    with client_for(server, protocol) as client:
        assert client.is_server_live()


@pytest.mark.parametrize(
    "protocol, inputs, expected_status",
    [
        ("http", {**GOOD, "BATCH_SIZES": ids([0])}, "400"),
        ("grpc", {**GOOD, "BATCH_SIZES": ids([0])}, "StatusCode.INVALID_ARGUMENT"),
        ("http", {**GOOD, "MODELS": names("no-such-model")}, "404"),
        ("grpc", {**GOOD, "MODELS": names("no-such-model")}, "StatusCode.NOT_FOUND"),
    ],
)
def test_error_codes_mean_something(server, protocol, inputs, expected_status):
    with pytest.raises(InferenceServerException) as caught:
        send_warmup(server, protocol, inputs)
    assert caught.value.status() == expected_status


def test_a_model_that_cannot_load_is_reported_untouched_and_does_not_stop_the_others(run_cli, server):
    broken_config = server.model_repository / "broken-model" / "config.pbtxt"
    original = broken_config.read_bytes()
    result = run_cli(warm_cli.main, "-u", server.http_url, "--models", "broken-model", "model-v1",
        "--group-size-max", "2",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED: Warmup failed for models: ['broken-model']" in result.stderr
    assert "model loaded: ['model-v1']" in result.stdout
    broken_row = next(line for line in result.stdout.splitlines() if line.startswith("broken-model"))
    assert "FAILED" in broken_row and "preflight" in broken_row
    assert broken_config.read_bytes() == original
    states = model_states(server)
    assert states["model-v1"] == "READY" and states["broken-model"] != "READY"

    # The JSON report says the same, and the server still serves.
    loaded, report = send_warmup(server, "grpc", warmup_inputs(["broken-model"], 1, 1))
    assert loaded == []
    (entry,) = report.models
    assert entry.status == "FAILED" and entry.config_written is False
    assert "does not load even without warmup samples" in entry.error
    assert entry.serving_previous_version is False
    assert broken_config.read_bytes() == original
    # Still serving: live, and the warmed model answers ready. (Server-wide
    # readiness turns false while a model is in the failed state: Triton's
    # --strict-readiness, documented in the README.)
    with client_for(server, "http") as http:
        assert http.is_server_live() and http.is_model_ready("model-v1")


def test_repeated_failed_loads_do_not_take_the_server_down(server):
    """A failed pb_utils.load_model can abort this Triton (docs/safety.md, "Known
    Triton issue"); the helper's default load path must survive a run of them."""
    broken_config = server.model_repository / "broken-model" / "config.pbtxt"
    original = broken_config.read_bytes()
    # A model that serves throughout (loaded here, so the test stands alone).
    loaded, _ = send_warmup(server, "http", warmup_inputs(["model-v1"], 1, 1))
    assert loaded == ["model-v1"]
    for attempt in range(5):
        loaded, report = send_warmup(server, "http", warmup_inputs(["broken-model"], 1, 1))
        assert loaded == [] and report.models[0].status == "FAILED", attempt
        assert server.is_running(), f"tritonserver died after failed load {attempt + 1}"
    assert broken_config.read_bytes() == original
    with client_for(server, "http") as http:
        assert http.is_server_live() and http.is_model_ready("model-v1")


# What only the helper can check (model-v1's max_batch_size is 8), as flags
# and as a plan file, over both protocols: a bad request exits 2 either way.
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("form", ["flags", "plan file"])
def test_a_value_only_the_helper_can_refuse_exits_2_as_flags_and_as_a_plan(run_cli, server, tmp_path, protocol, form):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    if form == "flags":
        shape = ["--models", "model-v1", "--batch-sizes", "16"]
    else:
        plan = tmp_path / "plan.yaml"
        plan.write_text("defaults:\n  group_size_max: 2\nmodels:\n  model-v1:\n    batch_sizes: [16]\n")
        shape = ["--plan", str(plan)]
    before = repository_snapshot(server.model_repository)
    result = run_cli(warm_cli.main, "-i", protocol, "-u", url, *shape)
    assert result.returncode == 2, result.stderr
    assert "16 is too large for 'model-v1': max_batch_size is 8" in result.stderr
    assert repository_snapshot(server.model_repository) == before


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_model_that_fails_exits_1(run_cli, server, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    result = run_cli(warm_cli.main, "-i", protocol, "-u", url, "--models", "broken-model", "--group-size-max", "1")
    assert result.returncode == 1, result.stderr
    assert "Warmup failed for models: ['broken-model']" in result.stderr
