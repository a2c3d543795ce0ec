#!/usr/bin/env python3
"""What warmup buys, in one figure: the first request after READY, cold and warmed.

Reads the JSON results that ``make bench`` leaves in bench/results and
measures nothing. For each model kind (TorchScript: text-encoder, the
ensemble embed, the torch.compile models) it draws every planned shape's
first request after READY on a server without warmup (cold) and on one the
helper warmed, each above the steady median of the requests that followed it
on the same server, on a log scale; beside each chart, the same numbers as a
table. Every number is read from the results, none is computed here.

    python -m bench.figures                       # bench/results/first_request.png
    python -m bench.figures --results-dir DIR --output PATH
"""

import argparse
import dataclasses
import io
import json
import pathlib
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import PIL.Image
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
# Names the results use (bench.measure's COLD, PROJECT and TEXT_ENCODER),
# written out: bench.measure imports torch, and redrawing needs only the JSON.
COLD = "cold"
PROJECT = "project"
# The warmed condition of the ensemble and torch.compile benchmarks.
WARMED = "warmed"
TEXT_ENCODER = "text-encoder"
FIGURE_NAME = "first_request.png"
# GitHub shows a README image at most about 900 px wide: 10.5 in at 120 dpi
# (1260 px) keeps the tables' 7.5 pt text legible there once opened.
FIGURE_WIDTH_IN = 10.5
DPI = 120
# A palette of 128 colours keeps the antialiased text and lines as they look
# and the PNG at a third of its RGB size (every README view loads it).
PALETTE_COLORS = 128
# One latency range for every panel, so that kinds compare at a glance:
# from a warm compiled-encoder (under 1 ms) to a cold compiled-attention
# (tens of seconds).
LATENCY_RANGE_MS = (0.3, 1e5)
COLD_COLOR = "#c0392b"
WARMED_COLOR = "#1f5fa8"
STEADY_COLOR = "#222222"


@dataclasses.dataclass(frozen=True)
class ShapeRow:
    """One planned shape's latencies in milliseconds, as the results hold them.

    Attributes:
        shape: The shape's label, "g<group size> b<batch size>", or "<n>w b<batch size>"
            for a text of n words; the space parts the two lines of its tick.
        cold_first_ms: The first request after READY without warmup.
        cold_steady_ms: The steady median at this shape on that cold server.
        warmed_first_ms: The first request after READY once the helper warmed the model.
        warmed_steady_ms: The steady median at this shape on that warmed server.
    """

    shape: str
    cold_first_ms: float
    cold_steady_ms: float
    warmed_first_ms: float
    warmed_steady_ms: float


@dataclasses.dataclass(frozen=True)
class Panel:
    """One model's chart and table: what was timed, where the numbers come from."""

    kind: str
    model: str
    timed: str
    shape_axis: str
    source: str
    machine: str
    date: str
    rows: Tuple[ShapeRow, ...]


def _paired_rows(cold: Sequence[Dict], warmed: Sequence[Dict], label: Callable[[Dict], str],
                 first_key: str, steady_key: str) -> Tuple[ShapeRow, ...]:
    """Each warmed shape with the cold shape of the same label, in the warmed plan's order."""
    cold_by_shape = {label(row): row for row in cold}
    return tuple(
        ShapeRow(label(row), cold_by_shape[label(row)][first_key], cold_by_shape[label(row)][steady_key],
                 row[first_key], row[steady_key])
        for row in warmed
    )


def _group_batch(row: Dict) -> str:
    return f"g{row['group']} b{row['batch']}"


def _words_batch(row: Dict) -> str:
    return f"{row['words']}w b{row['batch']}"


def torchscript_panel(results: Dict, source: str, model: str = TEXT_ENCODER) -> Panel:
    """warmup_benchmark.json: ``model`` cold against the helper's default plan
    (the condition "project"), server-side compute_infer."""
    conditions = results["latency"][model]
    return Panel(
        kind="TorchScript", model=model,
        timed=f"Triton's compute_infer; medians of {results['settings']['trials']} fresh loads",
        shape_axis="planned shape (g: group size, b: batch size)",
        source=source, machine=results["machine"], date=results["date"],
        rows=_paired_rows(conditions[COLD]["shapes"], conditions[PROJECT]["shapes"], _group_batch,
                          "first_compute_ms", "steady_compute_p50_ms"),
    )


def ensemble_panel(results: Dict, source: str) -> Panel:
    """ensemble_benchmark.json: the ensemble's own request time (``success``)."""
    conditions = results["conditions"]
    return Panel(
        kind="Ensemble", model="embed (tokenizer, then text-encoder)",
        timed=f"the ensemble's request time in Triton; medians of {results['trials']} servers",
        shape_axis="planned shape (w: words of text, b: batch size)",
        source=source, machine=results["machine"], date=results["date"],
        rows=_paired_rows(conditions[COLD]["shapes"], conditions[WARMED]["shapes"], _words_batch,
                          "first_ensemble_ms", "steady_ensemble_ms"),
    )


def compiled_panel(results: Dict, source: str) -> Panel:
    """pytorch2_benchmark*.json: a torch.compile model, server-side compute_infer."""
    conditions = results["conditions"]
    # Results written before pytorch2_benchmark's --model existed measured the example model.
    model = results.get("model", "compiled-encoder")
    return Panel(
        kind="torch.compile", model=model,
        timed=f"Triton's compute_infer; medians of {results['trials']} servers",
        shape_axis="planned shape (g: group size, b: batch size)",
        source=source, machine=results["machine"], date=results["date"],
        rows=_paired_rows(conditions[COLD]["shapes"], conditions[WARMED]["shapes"], _group_batch,
                          "first_ms", "steady_ms"),
    )


# The panels top to bottom: the results file each reads and how.
SOURCES = (
    ("warmup_benchmark.json", torchscript_panel),
    ("ensemble_benchmark.json", ensemble_panel),
    ("pytorch2_benchmark.json", compiled_panel),
    ("pytorch2_benchmark_compiled-attention.json", compiled_panel),
)


def read_panels(results_dir: pathlib.Path) -> List[Panel]:
    """Every panel of the figure, from the JSON results in ``results_dir``.

    Raises:
        FileNotFoundError: A results file is missing (``make bench`` writes them all).
    """
    return [read(json.loads((results_dir / name).read_text()), name) for name, read in SOURCES]


def table_text(panel: Panel) -> List[List[str]]:
    """The cells of a panel's table: shape, then cold and warmed first and steady, in ms."""
    return [
        [row.shape.replace(" ", "x"), *(f"{value:.2f}" for value in (row.cold_first_ms, row.cold_steady_ms,
                                                                      row.warmed_first_ms, row.warmed_steady_ms))]
        for row in panel.rows
    ]


TABLE_HEADER = ("shape", "cold\nfirst", "cold\nsteady", "warmed\nfirst", "warmed\nsteady")
HEADER_COLORS = (STEADY_COLOR, COLD_COLOR, COLD_COLOR, WARMED_COLOR, WARMED_COLOR)
# Marker offsets left and right of a shape's tick, so that the two conditions
# never cover each other where their latencies are the same.
OFFSET = {COLD: -0.18, WARMED: 0.18}
DASH_HALF_WIDTH = 0.14


def _draw_condition(axis, positions: Sequence[float], first: Sequence[float], steady: Sequence[float],
                    condition: str, color: str, marker: str, label: str) -> None:
    xs = [position + OFFSET[condition] for position in positions]
    axis.vlines(xs, steady, first, color=color, linewidth=1, alpha=0.6)
    axis.hlines(steady, [x - DASH_HALF_WIDTH for x in xs], [x + DASH_HALF_WIDTH for x in xs],
                color=STEADY_COLOR, linewidth=1.6)
    axis.plot(xs, first, linestyle="none", marker=marker, markersize=5.5, color=color, label=label)


def _draw_chart(axis, panel: Panel) -> None:
    positions = list(range(len(panel.rows)))
    rows = panel.rows
    _draw_condition(axis, positions, [row.cold_first_ms for row in rows], [row.cold_steady_ms for row in rows],
                    COLD, COLD_COLOR, "o", "first request, cold (no warmup)")
    _draw_condition(axis, positions, [row.warmed_first_ms for row in rows], [row.warmed_steady_ms for row in rows],
                    WARMED, WARMED_COLOR, "^", "first request, warmed by the helper")
    # Only for the legend: the dashes drawn above are each condition's steady.
    axis.plot([], [], color=STEADY_COLOR, linewidth=1.6, label="steady median, same server")
    axis.set_yscale("log")
    axis.set_ylim(*LATENCY_RANGE_MS)
    axis.yaxis.set_major_locator(LogLocator(base=10))
    axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_ylabel("latency, ms (log scale)", fontsize=8.5)
    axis.set_xticks(positions, [row.shape.replace(" ", "\n") for row in rows], fontsize=7)
    axis.set_xlim(-0.6, len(rows) - 0.4)
    axis.set_xlabel(panel.shape_axis, fontsize=8.5)
    axis.tick_params(axis="y", labelsize=8)
    axis.grid(True, axis="y", which="major", alpha=0.35)
    axis.set_title(f"{panel.kind}: {panel.model}\n{panel.timed}", fontsize=9.5, loc="left")
    axis.set_title(f"{panel.source}\n{panel.date}", fontsize=7.5, loc="right", color="#555555")


def _draw_table(axis, panel: Panel) -> None:
    axis.axis("off")
    table = axis.table(cellText=table_text(panel), colLabels=TABLE_HEADER, bbox=[0, 0, 1, 1], cellLoc="right",
                       colLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7.5)
    for (row, column), cell in table.get_celld().items():
        cell.set_linewidth(0.3)
        if row == 0:
            # Two lines of header; the table is then scaled into its bbox as a whole.
            cell.set_height(2 * cell.get_height())
            cell.set_text_props(weight="bold", color=HEADER_COLORS[column])
    axis.set_title("the same, in ms", fontsize=8)


def build_figure(panels: Sequence[Panel]) -> Figure:
    """A chart and a table per panel, top to bottom, their heights by their numbers of shapes."""
    heights = [2.1 + 0.11 * len(panel.rows) for panel in panels]
    figure = Figure(figsize=(FIGURE_WIDTH_IN, sum(heights) + 0.9), layout="constrained")
    grid = figure.add_gridspec(len(panels), 2, width_ratios=(2.2, 1), height_ratios=heights)
    for index, panel in enumerate(panels):
        _draw_chart(figure.add_subplot(grid[index, 0]), panel)
        _draw_table(figure.add_subplot(grid[index, 1]), panel)
    machines = sorted({panel.machine for panel in panels})
    figure.suptitle(
        "The first request after READY at each planned shape: cold, and warmed by warmup_helper\n"
        f"server-side, each first request above the steady median after it; on {'; '.join(machines)}",
        fontsize=10.5,
    )
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8.5, frameon=False)
    return figure


def write_figure(results_dir: pathlib.Path, output: pathlib.Path) -> List[Panel]:
    panels = read_panels(results_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    image = io.BytesIO()
    build_figure(panels).savefig(image, format="png", dpi=DPI)
    PIL.Image.open(image).convert("RGB").quantize(colors=PALETTE_COLORS).save(output, optimize=True)
    return panels


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=pathlib.Path, default=RESULTS_DIR,
                        help=f"Where the benchmarks' JSON results are. Default is {RESULTS_DIR}.")
    parser.add_argument("--output", type=pathlib.Path, default=None,
                        help=f"The PNG to write. Default is {FIGURE_NAME} in --results-dir.")
    args = parser.parse_args(argv)
    output = args.output or args.results_dir / FIGURE_NAME
    try:
        panels = write_figure(args.results_dir, output)
    except FileNotFoundError as error:
        print(f"FAILED: {error.filename} is missing; `make bench` writes it.")
        return 1
    print(f"PASS: {output} ({output.stat().st_size // 1024} KiB), {len(panels)} panels from {args.results_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
