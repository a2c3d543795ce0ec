"""A target that cannot load or whose plan holds a sample it rejects: the
preflight stops it before anything is written, the report names the failing
shape with Triton's error, the other models of the request still warm, the
models that were READY keep serving, and the server stays up.

Before the preflight, a rejected warmup sample reached Triton as
``model_warmup`` and could crash tritonserver itself (docs/safety.md, "Known Triton
issues"); these tests then xfailed. No sample reaches Triton untried now, so
every case must pass.
"""

import warnings

import numpy as np
import pytest
import tritonclient.http as httpclient

from triton_warmup import example_models as gen_model
from live_server import model_states, send_warmup, wait_for_log, warmup_inputs
from triton_warmup.helper.repository_guard import backup_path
from target_models import (
    write_corrupt_model,
    write_model_without_file,
    write_picky_model,
    write_python_target,
)

# Server start, model-v1 warm, then a dozen requests, each with a scratch
# copy or requests to a serving model.
MODULE_TIMEOUT_S = 300

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

PICKY_LARGEST_GROUP = 3
SCRATCH_PREFIX = ".warmup_helper.preflight."


@pytest.fixture(scope="module")
def server(start_server):
    server = start_server("load_failures", extra_args=["--exit-timeout-secs=5"])
    repository = server.model_repository
    write_corrupt_model(repository, "corrupt-file")
    write_model_without_file(repository, "missing-file")
    write_python_target(repository, "fails-initialize", fail_initialize=True)
    write_python_target(repository, "second-instance-fails", fail_second_instance=True)
    write_picky_model(repository, "picky", PICKY_LARGEST_GROUP)
    loaded, _ = send_warmup(server, "http", warmup_inputs(["model-v1"], 1, 2))
    assert loaded == ["model-v1"]
    return server


def answers(server, model="model-v1") -> bool:
    """Whether ``model`` (model-v1's interface) answers an inference request."""
    with httpclient.InferenceServerClient(server.http_url) as client:
        x = httpclient.InferInput("x", [1, 2, 64], "FP32")
        x.set_data_from_numpy(np.ones((1, 2, 64), dtype=np.float32))
        mask = httpclient.InferInput("mask", [1, 2], "INT64")
        mask.set_data_from_numpy(np.ones((1, 2), dtype=np.int64))
        result = client.infer(model, [x, mask])
    return result.as_numpy("output").shape == (1, 16)


def assert_no_scratch_copy_left(server):
    with httpclient.InferenceServerClient(server.http_url) as client:
        for name in model_states(server):
            assert not name.startswith(SCRATCH_PREFIX), name
        for target in ("picky", "corrupt-file", "text-encoder"):
            assert not client.is_model_ready(SCRATCH_PREFIX + target)


NOT_LOADABLE = "the model does not load even without warmup samples"

FAILING_TARGETS = {
    "model file is corrupt": ("corrupt-file", 2, NOT_LOADABLE),
    "model file is missing": ("missing-file", 2, NOT_LOADABLE),
    "instance raises in initialize": ("fails-initialize", 2, NOT_LOADABLE),
    "a warmup sample the model rejects": ("picky", PICKY_LARGEST_GROUP + 1, "group size above the model's maximum"),
}


@pytest.mark.parametrize("target, group_max, words", FAILING_TARGETS.values(), ids=FAILING_TARGETS.keys())
def test_failed_target_is_reported_with_nothing_written_and_the_others_warm(server, target, group_max, words):
    config = server.model_repository / target / "config.pbtxt"
    original = config.read_bytes()
    loaded, report = send_warmup(server, "http", warmup_inputs([target, "model-v2"], 1, group_max))

    failed, other = report.models
    assert failed.status == "FAILED" and failed.error.startswith("preflight: ")
    assert words in failed.error and "nothing was written or loaded" in failed.error
    assert failed.preflight.how == "scratch copy" and failed.preflight.why == "model not loaded"
    assert failed.config_written is False and failed.timings.load_s == 0
    assert config.read_bytes() == original and not backup_path(config.parent).exists()
    assert other.status == "READY" and loaded == ["model-v2"]
    # Absent when the model is READY with this plan already (nothing to load).
    if other.preflight is not None:
        checked = other.preflight.samples_checked + other.preflight.samples_known_good
        assert other.preflight.error is None and checked == other.warmup_samples
    assert report.failed == [target]
    states = model_states(server)
    assert states[target] != "READY" and states["model-v1"] == "READY"
    assert server.is_running() and answers(server, "model-v1")
    assert_no_scratch_copy_left(server)


def test_the_failing_sample_is_named_with_its_shape(server):
    _, report = send_warmup(server, "http", warmup_inputs(["picky"], 1, PICKY_LARGEST_GROUP + 2, batch_sizes=[2]))
    (entry,) = report.models
    # Samples run in plan order: groups 1..3 pass, group 4 is the first to fail.
    assert entry.preflight.samples_checked == PICKY_LARGEST_GROUP
    failed = entry.preflight.failed_sample
    assert failed["inputs"] == {"mask": [2, PICKY_LARGEST_GROUP + 1], "x": [2, PICKY_LARGEST_GROUP + 1, 64]}
    assert failed["batch_size"] == 2 and failed["sample"] in entry.error
    assert f"x [2, {PICKY_LARGEST_GROUP + 1}, 64]" in entry.error


def test_ready_model_is_checked_with_requests_and_keeps_serving_when_a_sample_fails(server):
    config = server.model_repository / "picky" / "config.pbtxt"
    loaded, first = send_warmup(server, "http", warmup_inputs(["picky"], 1, PICKY_LARGEST_GROUP, batch_sizes=[1]))
    assert loaded == ["picky"] and first.models[0].preflight.how == "scratch copy"
    warmed = config.read_bytes()

    loaded, report = send_warmup(
        server, "grpc", warmup_inputs(["picky"], 1, PICKY_LARGEST_GROUP + 2, batch_sizes=[1])
    )
    (entry,) = report.models
    assert loaded == [] and entry.status == "FAILED"
    assert entry.preflight.how == "requests to the serving model"
    # The three group sizes Triton already ran at the last load are not sent again.
    assert entry.preflight.samples_known_good == PICKY_LARGEST_GROUP
    assert entry.preflight.samples_checked == 0
    assert "group size above the model's maximum" in entry.error
    assert entry.serving_previous_version is True and entry.config_written is False
    assert config.read_bytes() == warmed
    assert model_states(server)["picky"] == "READY" and answers(server, "picky")
    assert server.is_running()


def test_a_transformer_asked_for_a_sequence_longer_than_its_positions_stays_untouched(server):
    config = server.model_repository / "text-encoder" / "config.pbtxt"
    original = config.read_bytes()
    longest = gen_model.MAX_SEQUENCE_LENGTH
    loaded, report = send_warmup(
        server, "http", warmup_inputs(["text-encoder"], longest - 1, longest + 1, feature_dims=[0], batch_sizes=[1])
    )
    (entry,) = report.models
    assert loaded == [] and entry.status == "FAILED"
    assert entry.preflight.samples_checked == 2
    assert entry.preflight.failed_sample["inputs"]["input_ids"] == [1, longest + 1]
    assert "index out of range" in entry.error
    assert config.read_bytes() == original
    assert model_states(server)["text-encoder"] != "READY" and server.is_running()
    assert_no_scratch_copy_left(server)


def test_a_load_that_fails_after_the_preflight_passed_is_rolled_back(server, start_server):
    """One instance loads (the scratch copy's), the second does not: the
    preflight passes, the real load fails, and the config is put back.

    Rarely, Triton itself dies here: it tears down the first instance, which
    has run its warmup, when the second fails to initialize, most likely
    into its known SIGSEGV (docs/safety.md, "Known Triton issues"; seen
    once in a CI run, 0 of 30 runs by hand). The config must then come back
    when the helper next starts, which is what the test checks in that case.
    """
    config = server.model_repository / "second-instance-fails" / "config.pbtxt"
    original = config.read_bytes()
    try:
        loaded, report = send_warmup(server, "http", warmup_inputs(["second-instance-fails", "model-v3"], 1, 2))
    except Exception:  # noqa: BLE001 - a dead server only closes the connection
        server.wait(timeout=10)
        if server.is_running():
            raise
        log = server.log_path.read_text(errors="replace")
        assert "this instance refuses to initialize" in log and "Signal (11) received." in log, log[-3000:]
        warnings.warn("tritonserver crashed tearing down a warmed instance; checked the restore at restart instead")
        restarted = start_server("load_failures_restarted", shared=server.model_repository)
        wait_for_log(restarted, ["put back the original of"])
        assert config.read_bytes() == original and not backup_path(config.parent).exists()
        return
    failed, other = report.models
    assert failed.preflight.error is None and failed.preflight.samples_checked == failed.warmup_samples
    assert failed.status == "FAILED" and failed.error.startswith("load failed")
    assert "this instance refuses to initialize" in failed.error
    assert failed.config_written is True and failed.config_restored is True
    assert config.read_bytes() == original and not backup_path(config.parent).exists()
    assert other.status == "READY" and loaded == ["model-v3"]
    assert server.is_running() and answers(server, "model-v1")
