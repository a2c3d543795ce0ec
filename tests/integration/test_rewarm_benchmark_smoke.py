"""The re-warm-under-traffic benchmark runs end to end on a small case and
writes every figure it promises; the numbers themselves are for `make bench`.
The reload side runs in test_rewarm.py."""

import json

import pytest

from live_server import run_module

# One server start, warming twice under a second of traffic.
MODULE_TIMEOUT_S = 180

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]


def test_rewarm_benchmark_reports_each_phase_and_every_instance(tmp_path):
    finished = run_module("bench.rewarm_under_traffic", "--models", "model-v1", "--instances", "2",
                          "--clients", "open loop", "--how", "in place", "--rate", "100", "--trials", "1",
                          "--phase-s", "0.5", "--group-size", "2", "--rewarm-group-size", "5",
                          "--output-dir", str(tmp_path), timeout=MODULE_TIMEOUT_S - 30)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = json.loads((tmp_path / "rewarm_under_traffic.json").read_text())
    (row,) = results["rows"]
    (trial,) = row["trials"]
    assert (row["how"], trial["rewarm"], trial["status"]) == ("in place", "in place", "READY")
    assert set(trial["phases"]) == {"before", "during", "after"}
    assert all(phase["requests"] > 0 for phase in trial["phases"].values()), trial["phases"]
    assert trial["failed"] == 0 and trial["not_ready"] == 0 and trial["polls"] > 0
    # No reload, and count (3) runs per new sample per instance.
    assert trial["loads_logged"] == 1 and trial["in_place_runs"] == 3 * 2 * 3 * 2
    # The first request at every new shape (groups 3..5 x batch sizes 1, 4) on each of the 2 instances.
    assert trial["probe"]["firsts"] == 3 * 2 * 2 and len(trial["probe_rows"]) == 12
    text = (tmp_path / "rewarm_under_traffic.md").read_text()
    assert "| model-v1 | 2 | open loop | in place |" in text and "## What the helper did, per row" in text
