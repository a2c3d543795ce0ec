"""The benchmarks run end to end (`--smoke`: model-v1, two shapes, one trial;
the crash-rate count with two failing loads) and write every figure they
promise. The numbers themselves are for
`make bench` to report, not for tests to time, with one exception that no
noise can flip: the first request after this project's warmup is not slower
than the first request of a cold load (tens of milliseconds of TorchScript
profiling against about one)."""

import json
import pathlib

import pytest

from live_server import run_module

# A server start, three conditions, two scaling points, two throughput runs,
# a small specialization study; then up to four server starts of the crash count.
MODULE_TIMEOUT_S = 300

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

SHAPE_FIELDS = {
    "group", "batch", "first_ms", "first_ms_trials", "first_compute_ms", "steady_p50_ms", "steady_p99_ms",
    "steady_compute_p50_ms", "steady_compute_p99_ms", "ratio", "worst_trial_ratio", "compute_ratio", "steady_ms",
}
COST_FIELDS = {
    "model", "samples", "count", "seconds_to_ready", "load_s", "warmup_forward_s", "triton_load_s", "helper_s",
    "helper_share", "preflight_s", "preflight_scratch_load_s", "preflight_share",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    output = tmp_path_factory.mktemp("bench")
    finished = run_module("bench.warmup_benchmark", "--smoke", "--output-dir", str(output), timeout=MODULE_TIMEOUT_S - 30)
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
    assert throughput["requests"] == 8 * data["settings"]["throughput_requests"]
    # Triton's statistics account for every request the clients sent.
    assert sum(int(size) * count for size, count in throughput["batch_sizes_run"].items()) == throughput["requests"]
    assert data["extras"]["retrigger"]["reloads"].startswith("none")
    assert {"helper_share_met", "worst_excess_us"} <= set(data["targets"])
    assert set(data["targets"]["worst_excess_us"]) == {"model-v1"}


def test_preflight_and_parallel_loads_are_measured(results):
    _, data = results
    not_loaded, ready = data["preflight"]["rows"]
    # --smoke: group sizes 1..4 x batch sizes 1, 2.
    assert not_loaded["case"] == "not loaded" and not_loaded["how"] == "scratch copy"
    assert not_loaded["samples"] == not_loaded["checked"] == 8
    # READY with group size 1 at batch size 1 first: that one sample is known to pass.
    assert ready["how"] == "requests to the serving model" and ready["checked"] == 7
    for row in (not_loaded, ready):
        assert 0 < row["preflight_s"] < row["seconds_to_ready"]
    runs = data["extras"]["parallel"]["runs"]
    assert [(run["preflight"], run["max_parallel_loads"]) for run in runs] == [(True, 1), (True, 2), (False, 1), (False, 2)]
    assert all(run["preflight_median_s"] > 0 for run in runs[:2]) and all(run["preflight_median_s"] == 0 for run in runs[2:])


def test_preflight_cost_by_model_size_covers_both_scratch_copies(tmp_path):
    finished = run_module("bench.preflight_cost", "--sizes-mib", "4", "--output-dir", str(tmp_path),
                          timeout=MODULE_TIMEOUT_S - 30)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    linked, sent, off = json.loads((tmp_path / "preflight_cost.json").read_text())["runs"]
    assert linked["scratch"].startswith("a hidden folder of links") and linked["repository_folder"] == "writable"
    assert sent["scratch"].startswith("file overrides") and sent["repository_folder"] == "read-only"
    assert off["preflight"] is False and off["preflight_s"] is None
    for run in (linked, sent):
        assert 0 < run["scratch_load_s"] <= run["preflight_s"] < run["seconds_to_ready"]
    assert "| 4 | on | read-only |" in (tmp_path / "preflight_cost.md").read_text()


def test_results_name_the_backend_that_ran_them(results):
    _, data = results
    backend = data["backend"]
    assert pathlib.Path(backend["library"]).name == "libtriton_pytorch.so"
    assert len(backend["pytorch_backend_commit"]) == 40
    assert backend["sources"]["pytorch_backend"] == backend["pytorch_backend_commit"]


def test_specialization_study_requests_every_warmed_shape_in_both_orders(results):
    _, data = results
    study = data["specialization"]
    # --smoke: group sizes 1..2 x batch sizes 1, 2.
    assert study["shapes"] == 4 and set(study["orders"]) == {"plan order", "reversed"}
    for order in study["orders"].values():
        assert sorted(row["warmed_at"] for row in order["rows"]) == [1, 2, 3, 4]
        assert all(row["first_compute_ms"] > 0 and row["steady_compute_p50_ms"] > 0 for row in order["rows"])
    plan, reversed_ = (study["orders"][name]["rows"] for name in ("plan order", "reversed"))
    assert [row["warmed_at"] for row in plan] == [5 - row["warmed_at"] for row in reversed_]


def test_markdown_and_plot_are_written(results):
    output, data = results
    text = (output / "warmup_benchmark.md").read_text()
    assert "| model-v1 | project |" in text and "Cost of the warmup" in text
    assert "## The preflight on a 8-sample plan" in text and "## Parallel loads" in text
    assert "Backend: Triton's native libtorch backend" in text and "How many warmed shapes stay fast" in text
    png = (output / "warmup_benchmark.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_first_request_after_warmup_is_not_slower_than_cold(results):
    _, data = results
    cold = data["latency"]["model-v1"]["cold"]["shapes"][0]
    warm = data["latency"]["model-v1"]["project"]["shapes"][0]
    assert warm["first_ms"] <= cold["first_ms"], (warm["first_ms"], cold["first_ms"])


def test_crash_rate_counts_each_failing_load(tmp_path):
    finished = run_module("bench.warmup_crash_rate", "--trials", "2", "--conditions", "idle",
                          "--output-dir", str(tmp_path), timeout=MODULE_TIMEOUT_S - 30)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    data = json.loads((tmp_path / "warmup_crash_rate.json").read_text())
    idle = data["conditions"]["idle"]
    assert idle["trials"] == len(idle["outcomes"]) == 2
    assert idle["crashes"] == sum(outcome["crashed"] for outcome in idle["outcomes"])
    # A load either came back with Triton's warmup error or lost the server.
    for outcome in idle["outcomes"]:
        assert outcome["answer"] == "error" or outcome["crashed"], outcome
    assert "| idle | 0 | 2 |" in (tmp_path / "warmup_crash_rate.md").read_text()
