"""The warm_on_start, traffic-watch, learning and helper-overhead benchmarks run end to end on small
inputs and write every figure they promise; the numbers themselves are for
`make bench`."""

import json

import pytest

from live_server import run_module

# start_benchmark: 4 server starts; watch_benchmark: 2, with 60 and 160 requests; adapt_benchmark: 2;
# helper_overhead: 4.
MODULE_TIMEOUT_S = 420

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]


def test_start_benchmark_times_both_ways_and_what_readiness_said(tmp_path):
    finished = run_module("bench.start_benchmark", "--trials", "1", "--output-dir", str(tmp_path),
                          timeout=MODULE_TIMEOUT_S - 30)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = json.loads((tmp_path / "start_benchmark.json").read_text())
    runs = results["runs"]
    assert sorted((run["way"], run["start"]) for run in runs) == [
        ("client", "first start"), ("client", "restart"), ("start", "first start"), ("start", "restart")]
    for run in runs:
        assert run["all_ready_s"] > run["server_live_s"] > 0, run
        # Readiness was polled while the warmup loaded: Triton said 400 then.
        assert run["readiness"]["polls_400"] > 0, run
    # The first request at every planned shape, after each way's first start.
    for way in ("start", "client"):
        for model in ("model-v1", "text-encoder"):
            rows = results["summary"]["first_requests"][f"{model}, {way}"]
            assert len(rows) == 16 and all(row["first_compute_ms"] > 0 for row in rows), (way, model)
    for start in ("first start", "restart"):
        (ratio,) = results["summary"][start]["pair_ratios"]
        assert ratio == pytest.approx(results["summary"][start]["median_pair_ratio"], abs=1e-3)
    assert "## What `/v2/health/ready` said meanwhile" in (tmp_path / "start_benchmark.md").read_text()


def test_watch_benchmark_counts_the_mix_exactly_at_rate_1_and_reports_the_cost(tmp_path):
    finished = run_module("bench.watch_benchmark", "--trials", "1", "--truth-rates", "1", "--truth-observations", "60",
                          "--cost-rates", "0", "100", "--block-requests", "40", "--rounds", "2",
                          "--output-dir", str(tmp_path), timeout=MODULE_TIMEOUT_S - 30)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = json.loads((tmp_path / "watch_benchmark.json").read_text())
    (every,) = [run for run in results["truth"] if run["watch_rate"] == 1]
    assert every["seen"] == 60 and every["measured_cold_share"] == every["sent_cold_share"]
    (cost,) = results["cost"]
    assert set(cost["conditions"]) == {"0", "100"}
    assert all(figures["requests"] == 2 * 40 and figures["p99_ms"] >= figures["p50_ms"] > 0
               for figures in cost["conditions"].values())
    assert results["summary"]["cost"]["0"]["p50_ratio"] == 1.0
    assert results["summary"]["truth"]["1"]["worst_points_off"] == 0
    assert "## Cost" in (tmp_path / "watch_benchmark.md").read_text()


def test_adapt_benchmark_learns_the_shape_and_reports_every_figure(tmp_path):
    finished = run_module("bench.adapt_benchmark", "--trials", "1", "--models", "model-v1",
                          "--output-dir", str(tmp_path), timeout=MODULE_TIMEOUT_S - 30)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = json.loads((tmp_path / "adapt_benchmark.json").read_text())
    (run,) = results["runs"]
    assert run["learned"] and run["failed_requests"] == 0, run
    assert run["seconds_third_sighting_to_warm"] > 0 and run["restart_first_ms"] > 0, run
    assert run["cold_share_after"] == 0.0 and run["cold_share_before"] > 0, run
    assert len(run["helper_log"]) == 1 and "learned 'model-v1'" in run["helper_log"][0]
    assert "## Against the targets" in (tmp_path / "adapt_benchmark.md").read_text()


def test_helper_overhead_splits_a_restart_and_times_the_helpers_load(tmp_path):
    finished = run_module("bench.helper_overhead", "--sizes", "4", "--load-trials", "1", "--pytorch2-pairs", "0",
                          "--output-dir", str(tmp_path), timeout=MODULE_TIMEOUT_S - 30)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = json.loads((tmp_path / "helper_overhead.json").read_text())
    (split,) = results["split"]
    assert split["ready"] == 4 and split["helper_ms_per_model"] > 0, split
    # A restart where nothing changed writes nothing.
    assert split["fsyncs"] == 0 and split["files_written"] == [], split
    assert split["ms_per_model"]["Triton's load (HTTP, Triton's own time)"] > 0
    assert set(results["helper_load"]) == {"default flags", "--disable-auto-complete-config"}
    for load in results["helper_load"].values():
        for model in ("trivial", "warmup_helper"):
            (run,) = load[model]
            assert run["total_s"] >= run["instance_s"] > 0, run
