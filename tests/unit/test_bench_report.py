"""The benchmarks' pure parts: combining trials, summaries, the fit, the order of turns, the bench-only model."""

import importlib.util

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


def test_the_pytorch2_benchmarks_larger_model_gets_weights_its_served_class_loads(tmp_path):
    import torch

    from bench.pytorch2_benchmark import add_bench_model

    add_bench_model(tmp_path, "compiled-attention")
    folder = tmp_path / "compiled-attention"
    assert (folder / "config.pbtxt").is_file()
    # Triton's runtime serves the first nn.Module subclass by name; the
    # weights must be that class's state dict.
    spec = importlib.util.spec_from_file_location("compiled_attention", folder / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    served = next(getattr(module, name) for name in dir(module)
                  if isinstance(getattr(module, name), type) and issubclass(getattr(module, name), torch.nn.Module))
    assert served.__name__ == "AttentionEncoder"
    network = served()
    network.load_state_dict(torch.load(folder / "1" / "model.pt"))
    output = network(torch.ones(2, 3, 64), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert output.shape == (2, 16) and torch.isfinite(output).all()
