"""A restart on an unchanged repository: the preflight record of the first
start vouches for every sample, so the second start loads each model once,
with no scratch copy, and Triton still runs every sample before READY."""

import pytest

from live_server import send_warmup, serving, warmup_inputs, warmup_runs

# Two server starts and two loads of model-v1, with room for a busy machine.
MODULE_TIMEOUT_S = 180

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

SCRATCH = ".warmup_helper.preflight.model-v1"


def test_a_restart_loads_each_model_once_and_warms_it(start_server, tmp_path):
    first = start_server("first")
    repository = first.model_repository
    inputs = warmup_inputs(["model-v1"], 1, 3, batch_sizes=[1, 2])
    _, report = send_warmup(first, "http", inputs)
    assert report.models[0].preflight.how == "scratch copy"
    assert f"loading: {SCRATCH}" in first.log_text()
    assert (repository / ".model-v1.warmup-preflight.json").is_file()
    first.stop()

    with serving(repository, tmp_path / "second") as second:
        _, report = send_warmup(second, "http", inputs)
        entry = report.models[0]
        assert entry.ready and not entry.config_changed
        assert entry.preflight.how == "the preflight record"
        assert entry.preflight.samples_known_good == entry.warmup_samples == 6
        assert SCRATCH not in second.log_text()
        # Triton ran every sample of the file before READY, as always.
        assert len(warmup_runs(second, "model-v1")) == entry.warmup_samples * entry.count

        # A changed model file voids the record: the scratch copy runs again.
        model_file = repository / "model-v1" / "1" / "model.pt"
        model_file.write_bytes(model_file.read_bytes())
        second.stop()
    with serving(repository, tmp_path / "third") as third:
        _, report = send_warmup(third, "http", inputs)
        assert report.models[0].preflight.how == "scratch copy"
        assert f"loading: {SCRATCH}" in third.log_text()
