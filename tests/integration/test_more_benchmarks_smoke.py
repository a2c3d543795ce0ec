"""The traffic, warm-stays-warm, S3 and scale benchmarks run end to end on
small inputs and write every figure they promise; the numbers themselves are
for `make bench`. Apart from test_benchmark_smoke.py so that the two halves
run on different test workers."""

import json

import pytest

from live_server import run_module

# Each test runs one benchmark with a few server starts.
MODULE_TIMEOUT_S = 300

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]


def test_traffic_benchmark_compares_every_plan_on_the_recorded_traffic(tmp_path):
    finished = run_module("bench.traffic_benchmark", "--models", "model-v1", "--requests", "40", "--trials", "1",
                          "--steady", "1", "--read-requests", "200", "--output-dir", str(tmp_path),
                          timeout=MODULE_TIMEOUT_S - 30)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    result = json.loads((tmp_path / "traffic_benchmark.json").read_text())["models"]["model-v1"]
    rows = {row["condition"]: row for row in result["conditions"]}
    first, last = "traffic, frequent first", "traffic, frequent last"
    assert list(rows) == ["cold", "range", first, last, "traffic --cover 0.95"]
    shapes = result["recording"]["distinct_shapes"]
    assert rows[first]["samples"] == rows[last]["samples"] == shapes
    assert rows["range"]["samples"] == 4 * result["recording"]["longest"]
    assert rows[last]["coverage"] == rows["range"]["coverage"] == 1.0 and rows["cold"]["coverage"] == 0.0
    # Each shape's position in the plan: the two orders are each other's reverse.
    (first_trial,), (last_trial,) = rows[first]["trials"], rows[last]["trials"]
    at_first = {(row["batch"], row["group"]): row["warmed_at"] for row in first_trial["rows"]}
    at_last = {(row["batch"], row["group"]): row["warmed_at"] for row in last_trial["rows"]}
    assert all(at_first[shape] == shapes + 1 - at_last[shape] for shape in at_first)
    assert rows["traffic --cover 0.95"]["samples"] <= shapes and rows["traffic --cover 0.95"]["coverage"] >= 0.95
    assert all(row["seconds_to_ready"] > 0 for row in rows.values())
    recorded, scaled = result["reading"]
    assert recorded["requests"] == 40 and scaled["requests"] == 200
    assert "## model-v1" in (tmp_path / "traffic_benchmark.md").read_text()


def test_warm_stays_warm_warms_the_four_models_from_one_trace_and_scores_every_pass(tmp_path):
    traffic = "traffic, four in one request"
    finished = run_module("bench.warm_stays_warm", "--requests", "20", "--trials", "1", "--steady", "2", "--passes", "3",
                          "--conditions", "cold", traffic, "--output-dir", str(tmp_path),
                          timeout=MODULE_TIMEOUT_S - 30)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = json.loads((tmp_path / "warm_stays_warm.json").read_text())
    rows = {row["condition"]: row for row in results["conditions"]}
    assert list(rows) == ["cold", traffic]
    # One trace of one server holds the four models' traffic, and the plan
    # made of it warms every recorded shape of each.
    assert set(rows[traffic]["models"]) == {"model-v1", "model-v2", "model-v3", "text-encoder"}
    assert rows[traffic]["samples"] == rows[traffic]["shapes"] and rows["cold"]["samples"] == 0
    (trial,) = rows[traffic]["trials"]
    assert set(trial["floor"]) == set(trial["models"])
    assert all(entry["shapes"] > 0 for entry in trial["floor"].values())
    # The third pass is the one settled pass here; its count is the floor.
    (settled,) = trial["settled"]
    assert set(settled) == set(trial["models"])
    assert all(entry["shapes"] == trial["models"][model]["shapes"] for model, entry in settled.items())
    assert rows[traffic]["settled_slow_shapes"] == sum(entry["slow_shapes"] for entry in settled.values())
    assert trial["resident_mib"] > 0 and trial["seconds_to_ready"] > 0
    page = (tmp_path / "warm_stays_warm.md").read_text()
    assert "second pass" in page and "settled passes" in page


def test_warm_stays_warm_measures_every_model_after_idle_gaps_in_a_mixed_repository(tmp_path):
    condition = "mixed, text-encoder at 2, smallest count"
    finished = run_module("bench.warm_stays_warm", "--parts", "idle", "--conditions", condition, "--idle-trials", "1",
                          "--idle-steady", "2", "--idle-requests", "1", "--idle-gaps", "0.01",
                          "--output-dir", str(tmp_path), timeout=MODULE_TIMEOUT_S - 30)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert not (tmp_path / "warm_stays_warm.json").exists()
    (row,) = json.loads((tmp_path / "warm_after_idle.json").read_text())["conditions"]
    assert row["condition"] == condition
    # The launcher's policy for that repository, and the helper's note on the model above it.
    assert row["openmp"] == "1"
    assert "switches its backend thread to 2" in row["threads_notes"]["text-encoder"]
    assert row["threads_notes"]["model-v1"] is None
    assert set(row["models"]) == {"model-v1", "model-v2", "model-v3", "text-encoder"}
    for entry in row["models"].values():
        assert set(entry["after_gap"]) == {"quiet", "one CPU busy"}
        assert all(set(by_gap) == {"0.01"} for by_gap in entry["after_gap"].values())
    assert "## text-encoder" in (tmp_path / "warm_after_idle.md").read_text()


def test_the_s3_benchmark_reports_both_sources(tmp_path):
    finished = run_module("bench.s3_benchmark", "--trials", "1", "--models", "model-v1", "--output-dir", str(tmp_path),
                          timeout=MODULE_TIMEOUT_S - 30)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = json.loads((tmp_path / "s3_benchmark.json").read_text())
    runs = {run["source"]: run for run in results["runs"]}
    assert set(runs) == {"folder", "s3"}
    # The folder's config is rewritten; the bucket's never is.
    assert runs["folder"]["config_written"] == {"model-v1": True}
    assert runs["s3"]["config_written"] == {"model-v1": False}
    assert runs["s3"]["samples"] == runs["folder"]["samples"] == {"model-v1": 32}
    page = (tmp_path / "s3_benchmark.md").read_text()
    assert "| model-v1 to READY |" in page and "S3 / folder" in page


def test_scale_benchmark_splits_the_helpers_time_and_runs_the_command_on_the_whole_repository(tmp_path):
    finished = run_module("bench.scale_benchmark", "--sizes", "2", "--large-model-mib", "0", "--trials", "1",
                          "--restart-pairs", "1", "--output-dir", str(tmp_path), timeout=MODULE_TIMEOUT_S - 30)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    (runs,) = json.loads((tmp_path / "scale_benchmark.json").read_text())["repositories"]["2"]
    first, restart = runs["first start"], runs["restart"]
    assert (first["scratch_copies"], first["recorded"]) == (2, 0)
    # The restart finds the record the first start left: no scratch copy.
    assert (restart["scratch_copies"], restart["recorded"]) == (0, 2)
    assert first["preflight_s"] > restart["preflight_s"] >= 0
    for run in (first, restart):
        assert run["load_s"] > 0 and run["helper_s"] > 0 and run["plan_s"] > 0
        assert run["stub_peak_mib"] > run["stub_growth_mib"] >= 0
    cli = runs["triton-warmup --all"]
    # Output to a pipe: a line per model and change, READY last.
    assert cli["models"] == 2 and cli["progress_lines"] >= 2 and cli["last_progress_line"].endswith("READY")
    assert 0 < cli["client_peak_mib"] < 1024
    # The last trial adds a restart and Triton's own loads, each timed on its own server.
    (pair,) = runs["restart pairs"]
    assert set(pair) == {"restart", "triton"} and pair["restart"] > 0 and pair["triton"] > 0
    markdown = (tmp_path / "scale_benchmark.md").read_text()
    assert "| 2 | restart |" in markdown and "## `triton-warmup --all`" in markdown
    assert f"| 2 | 1 | {pair['restart'] / pair['triton']:.2f}x |" in markdown
