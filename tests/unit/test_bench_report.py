"""The benchmark's pure arithmetic: combining trials, summaries, the fit."""

import pytest

from bench.report import linear_fit, specialization_summary, summarize_condition
from bench.warmup_benchmark import combine_trials, rounded


def row(group, batch, first, steady, first_compute=0.5, steady_compute=(0.5,)):
    return {
        "group": group, "batch": batch, "first_ms": first, "first_compute_ms": first_compute,
        "steady_ms": list(steady), "steady_compute_ms": list(steady_compute),
    }


def test_first_request_is_the_median_over_trials_and_steady_pools_every_trial():
    trials = [
        [row(1, 1, 3.0, [1.0, 1.0]), row(1, 2, 1.0, [1.0, 1.0])],
        [row(1, 1, 1.2, [1.0, 1.0]), row(1, 2, 1.1, [1.0, 1.0])],
        [row(1, 1, 1.4, [1.0, 3.0]), row(1, 2, 1.0, [1.0, 1.0])],
    ]
    first, second = combine_trials(trials)
    assert first["first_ms"] == 1.4 and first["first_ms_trials"] == [3.0, 1.2, 1.4]
    assert first["steady_p50_ms"] == 1.0 and first["ratio"] == pytest.approx(1.4)
    assert first["worst_trial_ratio"] == pytest.approx(3.0)
    assert len(first["steady_ms"]) == 6 and second["ratio"] == pytest.approx(1.0)


def test_summary_names_the_worst_shape_not_the_mean():
    rows = combine_trials([[row(1, 1, 1.1, [1.0]), row(2, 4, 2.5, [1.0]), row(3, 8, 1.0, [1.0])]])
    summary = summarize_condition(rows)
    assert summary["worst_shape"] == "g2xb4" and summary["worst_ratio"] == pytest.approx(2.5)
    assert summary["median_ratio"] == pytest.approx(1.1)


def test_linear_fit_recovers_a_line():
    fit = linear_fit([4, 16, 64, 256], [2.0 + 0.003 * x for x in (4, 16, 64, 256)])
    assert fit["intercept_s"] == pytest.approx(2.0) and fit["per_sample_s"] == pytest.approx(0.003)
    assert fit["r_squared"] == pytest.approx(1.0)


def test_rounded_keeps_structure():
    assert rounded({"a": [1.234567, 2], "b": (0.00001,)}) == {"a": [1.2346, 2], "b": [0.0]}


def test_summary_gives_the_worst_excess_in_microseconds_server_side():
    rows = combine_trials([[
        row(1, 1, 1.0, [1.0], first_compute=0.30, steady_compute=(0.10,)),
        row(2, 1, 1.0, [1.0], first_compute=0.12, steady_compute=(0.10,)),
    ]])
    summary = summarize_condition(rows)
    assert summary["worst_excess_us"] == pytest.approx(200.0) and summary["worst_excess_shape"] == "g1xb1"
    assert summary["worst_compute_ratio"] == pytest.approx(3.0)


def test_specialization_summary_groups_shapes_by_where_they_were_warmed():
    rows = [
        {"warmed_at": position, "compute_ratio": 3.0 if position > 12 else 1.0,
         "first_compute_ms": 0.3 if position > 12 else 0.1, "steady_compute_p50_ms": 0.1}
        for position in range(1, 17)
    ]
    summary = specialization_summary({"orders": {"plan order": {"rows": rows[::-1]}}})["plan order"]
    assert [bucket["warmed"] for bucket in summary["buckets"]] == ["1..12", "13..16"]
    assert [bucket["above_1_5x"] for bucket in summary["buckets"]] == [0, 4]
    assert summary["marks"] == {12: 1.0, 16: 3.0}
    assert summary["buckets"][1]["worst_excess_us"] == pytest.approx(200.0)


def test_the_scale_benchmark_runs_the_first_start_first_and_rotates_the_rest():
    from bench.scale_benchmark import CONDITIONS, run_order

    orders = [run_order(trial) for trial in range(3)]
    assert all(order[0] == "first start" and sorted(order) == sorted(CONDITIONS) for order in orders)
    # Over three trials each later condition takes each later place once.
    for place in range(1, len(CONDITIONS)):
        assert sorted(order[place] for order in orders) == sorted(CONDITIONS[1:])
