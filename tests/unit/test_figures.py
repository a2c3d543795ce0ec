"""bench/figures.py: the figure of first requests, built from a fixture of results.

figure_fixture/ holds trimmed copies of the four results files the figure
reads (bench/results/*.json of the committed run): the first two or three
shapes of each, only the fields a reader needs. Nothing is measured.
"""

import json
import pathlib

import pytest

from bench import figures

FIXTURE = pathlib.Path(__file__).parent / "figure_fixture"
PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fixture_results(name):
    return json.loads((FIXTURE / name).read_text())


def test_every_plotted_number_is_the_results_own():
    panels = {panel.source: panel for panel in figures.read_panels(FIXTURE)}
    assert list(panels) == [name for name, _ in figures.SOURCES]

    latency = fixture_results("warmup_benchmark.json")["latency"]["text-encoder"]
    assert panels["warmup_benchmark.json"].rows == tuple(
        figures.ShapeRow(f"g{warmed['group']} b{warmed['batch']}", cold["first_compute_ms"],
                         cold["steady_compute_p50_ms"], warmed["first_compute_ms"], warmed["steady_compute_p50_ms"])
        for cold, warmed in zip(latency["cold"]["shapes"], latency["project"]["shapes"])
    )
    conditions = fixture_results("ensemble_benchmark.json")["conditions"]
    assert panels["ensemble_benchmark.json"].rows == tuple(
        figures.ShapeRow(f"{warmed['words']}w b{warmed['batch']}", cold["first_ensemble_ms"],
                         cold["steady_ensemble_ms"], warmed["first_ensemble_ms"], warmed["steady_ensemble_ms"])
        for cold, warmed in zip(conditions["cold"]["shapes"], conditions["warmed"]["shapes"])
    )
    for name in ("pytorch2_benchmark.json", "pytorch2_benchmark_compiled-attention.json"):
        conditions = fixture_results(name)["conditions"]
        assert panels[name].rows == tuple(
            figures.ShapeRow(f"g{warmed['group']} b{warmed['batch']}", cold["first_ms"], cold["steady_ms"],
                             warmed["first_ms"], warmed["steady_ms"])
            for cold, warmed in zip(conditions["cold"]["shapes"], conditions["warmed"]["shapes"])
        )
    assert [panel.model for panel in panels.values()] == [
        "text-encoder", "embed (tokenizer, then text-encoder)", "compiled-encoder", "compiled-attention"]


def test_a_cold_shape_pairs_with_the_same_warmed_shape_whatever_the_order():
    results = fixture_results("pytorch2_benchmark.json")
    results["conditions"]["cold"]["shapes"].reverse()
    rows = figures.compiled_panel(results, "pytorch2_benchmark.json").rows
    cold = {(row["group"], row["batch"]): row for row in results["conditions"]["cold"]["shapes"]}
    for row, warmed in zip(rows, results["conditions"]["warmed"]["shapes"]):
        assert row.cold_first_ms == cold[warmed["group"], warmed["batch"]]["first_ms"]


def test_the_tables_beside_the_charts_show_the_markdown_tables_figures():
    tables = {panel.source: figures.table_text(panel) for panel in figures.read_panels(FIXTURE)}
    # Rows of bench/results/ensemble_benchmark.md and pytorch2_benchmark.md, as written there.
    assert tables["ensemble_benchmark.json"][0] == ["4wxb1", "1295.99", "9.15", "8.50", "8.17"]
    assert tables["pytorch2_benchmark.json"][0] == ["g1xb1", "9453.46", "1.42", "1.83", "0.71"]
    # warmup_benchmark.md gives the warmed text-encoder in microseconds: 6266 and 5020.
    assert tables["warmup_benchmark.json"][0] == ["g1xb1", "1341.30", "5.22", "6.27", "5.02"]


def test_the_figure_is_a_png_with_a_log_latency_axis_in_ms(tmp_path, capsys):
    output = tmp_path / "figure" / "first_request.png"
    assert figures.main(["--results-dir", str(FIXTURE), "--output", str(output)]) == 0
    assert capsys.readouterr().out.startswith(f"PASS: {output}")
    data = output.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and 20_000 < len(data) < 400_000

    figure = figures.build_figure(figures.read_panels(FIXTURE))
    charts = figure.axes[0::2]
    assert len(charts) == 4
    for chart in charts:
        assert chart.get_yscale() == "log" and "ms" in chart.get_ylabel() and chart.get_xlabel()


def test_missing_results_fail_with_the_file_named(tmp_path, capsys):
    assert figures.main(["--results-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAILED:") and "warmup_benchmark.json" in out
    assert not (tmp_path / figures.FIGURE_NAME).exists()


def test_the_helper_and_clients_never_import_matplotlib():
    # matplotlib is a benchmark dependency (the bench extra), not a runtime one.
    sources = list((PROJECT_ROOT / "triton_warmup").rglob("*.py"))
    sources += list((PROJECT_ROOT / "model_repository" / "warmup_helper").rglob("*.py"))
    assert sources
    assert [path for path in sources if "matplotlib" in path.read_text()] == []


def test_the_names_written_out_are_the_benchmarks_own():
    # figures.py spells them out rather than import bench.measure (and torch with it).
    from bench import measure
    from triton_warmup import example_models

    assert (figures.COLD, figures.PROJECT, figures.TEXT_ENCODER) == (measure.COLD, measure.PROJECT,
                                                                      measure.TEXT_ENCODER)
    # pytorch2_benchmark.json names no model: it measured the example one.
    results = fixture_results("pytorch2_benchmark.json")
    assert "model" not in results
    assert figures.compiled_panel(results, "pytorch2_benchmark.json").model == example_models.COMPILED_ENCODER
