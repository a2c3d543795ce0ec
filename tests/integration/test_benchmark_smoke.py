"""The benchmark runs end to end (`--smoke`: model-v1, two shapes, one trial)
and writes every figure it promises. The numbers themselves are for
`make bench` to report, not for tests to time, with one exception that no
noise can flip: the first request after this project's warmup is not slower
than the first request of a cold load (tens of milliseconds of TorchScript
profiling against about one)."""

import json

import pytest

from live_server import PROJECT_ROOT, run_script

# A server start, three conditions, two scaling points, two throughput runs.
MODULE_TIMEOUT_S = 300

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

SHAPE_FIELDS = {
    "group", "batch", "first_ms", "first_ms_trials", "first_compute_ms", "steady_p50_ms", "steady_p99_ms",
    "steady_compute_p50_ms", "steady_compute_p99_ms", "ratio", "worst_trial_ratio", "compute_ratio", "steady_ms",
}
COST_FIELDS = {"model", "samples", "count", "seconds_to_ready", "load_s", "warmup_forward_s", "triton_load_s", "helper_s", "helper_share"}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    output = tmp_path_factory.mktemp("bench")
    finished = run_script("bench/warmup_benchmark.py", "--smoke", "--output-dir", str(output), timeout=MODULE_TIMEOUT_S - 30)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return output, json.loads((output / "warmup_benchmark.json").read_text())


def test_every_condition_and_shape_is_measured(results):
    _, data = results
    conditions = data["latency"]["model-v1"]
    assert set(conditions) == {"cold", "seed-style", "project"}
    for condition in conditions.values():
        shapes = condition["shapes"]
        assert [(row["group"], row["batch"]) for row in shapes] == [(1, 1), (1, 2)]
        for row in shapes:
            assert SHAPE_FIELDS <= set(row), SHAPE_FIELDS - set(row)
            assert len(row["steady_ms"]) == data["settings"]["steady_requests"]
            assert row["first_ms"] > 0 and row["steady_p50_ms"] > 0


def test_cost_scaling_and_extras_are_reported(results):
    _, data = results
    (cost,) = data["cost"]["models"]
    assert COST_FIELDS <= set(cost)
    assert cost["warmup_forward_s"] > 0 and cost["seconds_to_ready"] > cost["helper_s"] > 0
    assert [point["samples"] for point in data["scaling"]["points"]] == [1, 4]
    assert data["scaling"]["fit"]["points"] == 2
    throughput = data["extras"]["throughput"]
    assert set(throughput) == {"batched (one forward per execute)", "per request"}
    assert all(row["requests"] == 8 * data["settings"]["throughput_requests"] for row in throughput.values())
    assert data["extras"]["retrigger"]["reloads"].startswith("none")
    assert {"ratio_met", "helper_share_met", "project_worst_ratio"} <= set(data["targets"])


def test_markdown_and_plot_are_written(results):
    output, data = results
    text = (output / "warmup_benchmark.md").read_text()
    assert "| model-v1 | project |" in text and "Cost of the warmup" in text
    png = (output / "warmup_benchmark.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_first_request_after_warmup_is_not_slower_than_cold(results):
    _, data = results
    cold = data["latency"]["model-v1"]["cold"]["shapes"][0]
    warm = data["latency"]["model-v1"]["project"]["shapes"][0]
    assert warm["first_ms"] <= cold["first_ms"], (warm["first_ms"], cold["first_ms"])
