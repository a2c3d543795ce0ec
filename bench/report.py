"""Turning the benchmark's raw numbers into its summary, Markdown and plot."""

import json
import pathlib
from typing import Dict, List, Sequence

import numpy as np

from bench.measure import backend_line

# On a model whose steady compute is at least 1 ms (text-encoder): the first
# request after READY, server-side compute_infer, at most this times steady.
RATIO_TARGET = 1.3
HELPER_SHARE_TARGET = 0.05
# Positions in warmup order that the specialization study singles out: the
# 12th, where PyTorch's fusion strategy (2 static + 10 dynamic) would stop if
# it applied (a CPU build does not fuse, so it does not), and the 16th, 64th
# and 256th.
SPECIALIZATION_MARKS = (12, 16, 64, 256)


def worst(rows: List[Dict], key: str = "ratio") -> Dict:
    candidates = [row for row in rows if row.get(key) is not None]
    return max(candidates, key=lambda row: row[key])


def excess_us(row: Dict) -> float:
    """How much longer the first request computed than steady, in microseconds."""
    return (row["first_compute_ms"] - row["steady_compute_p50_ms"]) * 1000


def _label(row: Dict) -> str:
    return f"g{row['group']}xb{row['batch']}"


def summarize_condition(rows: List[Dict]) -> Dict:
    """Worst and median first/steady ratios over the shapes of one model,
    client wall time and server compute_infer, and the worst excess."""
    worst_wall, worst_compute = worst(rows), worst(rows, "compute_ratio")
    worst_excess = max(rows, key=excess_us)
    return {
        "shapes": len(rows),
        "worst_ratio": worst_wall["ratio"],
        "worst_shape": _label(worst_wall),
        "worst_first_ms": worst_wall["first_ms"],
        "worst_steady_p50_ms": worst_wall["steady_p50_ms"],
        "worst_single_trial_ratio": max(row.get("worst_trial_ratio", row["ratio"]) for row in rows),
        "median_ratio": float(np.median([row["ratio"] for row in rows])),
        "worst_compute_ratio": worst_compute["compute_ratio"],
        "worst_compute_shape": _label(worst_compute),
        "worst_compute_first_ms": worst_compute["first_compute_ms"],
        "worst_compute_steady_ms": worst_compute["steady_compute_p50_ms"],
        "median_compute_ratio": float(np.median([row["compute_ratio"] for row in rows if row["compute_ratio"]])),
        "slowest_first_ms": max(row["first_ms"] for row in rows),
        "steady_compute_p50_ms": float(np.median([row["steady_compute_p50_ms"] for row in rows])),
        # Where steady compute is a tenth of a millisecond, ratios measure
        # timer noise; the excess in microseconds says what a user feels.
        "worst_excess_us": excess_us(worst_excess),
        "worst_excess_shape": _label(worst_excess),
    }


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> Dict:
    """Least squares ``y = intercept + slope * x`` and its R^2."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    slope, intercept = np.polyfit(xs, ys, 1)
    predicted = intercept + slope * xs
    total = float(np.sum((ys - ys.mean()) ** 2))
    r_squared = 1 - float(np.sum((ys - predicted) ** 2)) / total if total else 1.0
    return {"intercept_s": float(intercept), "per_sample_s": float(slope), "r_squared": r_squared}


def write_results(output_dir: pathlib.Path, name: str, results: Dict, text: str) -> None:
    """Every benchmark's output: ``<name>.md`` (its tables), ``<name>.json``
    (every raw number), and the tables on stdout."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{name}.md").write_text(text)
    (output_dir / f"{name}.json").write_text(json.dumps(results, indent=1))
    print(text)


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _latency_section(results: Dict) -> List[str]:
    trials = results["settings"]["trials"]
    parts = ["## First request after READY vs steady state\n"]
    parts.append(
        f"Per shape: the first request right after READY (median over {trials} fresh load(s)) against "
        f"the steady p50 of {results['settings']['steady_requests']} further requests per load, "
        "server-side (`compute_infer` from Triton's statistics API) and client wall time. The worst "
        "shape is shown, not the mean. Excess: first minus steady compute_infer, in microseconds.\n"
    )
    rows = []
    for model, conditions in results["latency"].items():
        for condition, data in conditions.items():
            summary = data["summary"]
            rows.append(
                (
                    model,
                    condition,
                    summary["shapes"],
                    f"{summary['steady_compute_p50_ms']:.3f}",
                    f"**{summary['worst_compute_ratio']:.2f}x** ({summary['worst_compute_shape']})",
                    f"{summary['worst_compute_first_ms']:.3f} / {summary['worst_compute_steady_ms']:.3f}",
                    f"{summary['median_compute_ratio']:.2f}x",
                    f"{summary['worst_excess_us']:.0f} ({summary['worst_excess_shape']})",
                    f"{summary['worst_ratio']:.2f}x ({summary['worst_shape']})",
                    f"{summary['slowest_first_ms']:.2f}",
                    f"{data['seconds_to_ready']:.2f}",
                )
            )
    parts.append(
        table(
            (
                "model",
                "condition",
                "shapes",
                "steady compute ms (median shape)",
                "worst compute first / p50",
                "that shape: first / p50 compute ms",
                "median compute ratio",
                "worst excess us",
                "worst wall first / p50",
                "slowest first request ms (wall)",
                "s to READY",
            ),
            rows,
        )
    )
    verdict = results["targets"]
    if "ratio_met" in verdict:
        parts.append(
            f"\nTarget: on {verdict['ratio_model']} (steady compute of milliseconds), after this project's "
            f"warmup the first request at every planned shape computes at most {RATIO_TARGET}x its steady "
            f"p50. Worst: **{verdict['ratio_compute']:.2f}x** ({verdict['ratio_where']}) -> "
            f"{'met' if verdict['ratio_met'] else 'MISSED'}.\n"
        )
    excess = ", ".join(f"{model} {value:.0f} us" for model, value in verdict["worst_excess_us"].items())
    parts.append(f"Worst excess of the first request over steady after this project's warmup: {excess}.\n")
    return parts


def _excess_section(results: Dict) -> List[str]:
    parts = ["## Per shape after this project's warmup (server compute_infer)\n"]
    rows = []
    for model, conditions in results["latency"].items():
        for row in conditions["project"]["shapes"]:
            rows.append(
                (
                    model,
                    _label(row),
                    f"{row['first_compute_ms'] * 1000:.0f}",
                    f"{row['steady_compute_p50_ms'] * 1000:.0f}",
                    f"{excess_us(row):.0f}",
                    f"{row['compute_ratio']:.2f}x",
                )
            )
    parts.append(table(("model", "shape", "first us", "steady p50 us", "excess us", "ratio"), rows))
    parts.append("")
    return parts


def _cost_section(results: Dict) -> List[str]:
    cost, verdict = results["cost"], results["targets"]
    parts = ["## Cost of the warmup (this project's condition, one model per request)\n"]
    parts.append(
        table(
            ("model", "samples x runs", "s to READY", "Triton load s", "warmup runs' compute s",
             "helper's own work ms", "helper share", "preflight s", "of it scratch load s", "preflight share"),
            [
                (
                    row["model"],
                    f"{row['samples']} x {row['count']}",
                    f"{row['seconds_to_ready']:.3f}",
                    f"{row['triton_load_s']:.3f}",
                    f"{row['warmup_forward_s']:.3f}",
                    f"{row['helper_s'] * 1000:.1f}",
                    f"{row['helper_share'] * 100:.2f}%",
                    f"{row['preflight_s']:.3f}",
                    f"{row['preflight_scratch_load_s']:.3f}",
                    f"{row['preflight_share'] * 100:.0f}%",
                )
                for row in cost["models"]
            ],
        )
    )
    parts.append(
        f"\nHelper's own work (request check + planning + re-planning under the lock + the atomic "
        f"write) is at most {cost['worst_helper_share'] * 100:.2f}% of the time to READY in any trial "
        f"(target {HELPER_SHARE_TARGET * 100:.0f}%: {'met' if verdict['helper_share_met'] else 'MISSED'}). "
        "The preflight is counted apart: each model was unloaded, so every sample ran once on a "
        "scratch copy loaded for it (its load is the second figure) before the real load.\n"
    )
    return parts


def _preflight_section(results: Dict) -> List[str]:
    study = results.get("preflight")
    if not study:
        return []
    parts = [f"## The preflight on a {study['rows'][0]['samples']}-sample plan\n"]
    parts.append(
        table(
            ("model state before", "samples", "run by the preflight", "how", "preflight s", "s to READY", "preflight share"),
            [
                (
                    row["case"],
                    row["samples"],
                    row["checked"],
                    row["how"],
                    f"{row['preflight_s']:.3f}",
                    f"{row['seconds_to_ready']:.3f}",
                    f"{row['share'] * 100:.0f}%",
                )
                for row in study["rows"]
            ],
        )
    )
    parts.append("\nMedians over the trials; s to READY includes the preflight.\n")
    return parts


def _scaling_section(results: Dict) -> List[str]:
    scaling = results["scaling"]
    if not scaling["points"]:
        return []
    parts = ["## How the time to READY grows (one request, models unloaded first)\n"]
    parts.append(
        table(
            ("models", "group sizes", "batch sizes", "samples", "s to READY", "load s per model", "preflight s per model"),
            [
                (
                    ", ".join(point["models"]),
                    f"1..{point['group_max']}",
                    ", ".join(map(str, point["batch_sizes"])),
                    point["samples"],
                    f"{point['seconds']:.2f}",
                    ", ".join(f"{value:.2f}" for value in point["load_s"]),
                    ", ".join(f"{value:.2f}" for value in point.get("preflight_s", [])),
                )
                for point in scaling["points"]
            ],
        )
    )
    fit = scaling.get("fit")
    if fit:
        parts.append(
            f"\nOne model, least squares over {fit['points']} runs: time to READY = "
            f"{fit['intercept_s']:.3f} s + {fit['per_sample_s'] * 1000:.2f} ms x samples "
            f"(R^2 {fit['r_squared']:.3f}).\n"
        )
    return parts


def _extras_section(results: Dict) -> List[str]:
    extras, parts = results["extras"], []
    if "parallel" in extras:
        parallel = extras["parallel"]
        parts.append("## Parallel loads\n")
        parts.append(
            f"{', '.join(parallel['models'])} warmed from unloaded in one request; medians of the "
            "client's wall time.\n"
        )
        parts.append(
            table(
                ("preflight", "max_parallel_loads", "s to all READY", "preflight s (sum over models)", "runs"),
                [
                    (
                        "on" if run["preflight"] else "off",
                        run["max_parallel_loads"],
                        f"{run['median_s']:.2f}",
                        f"{run['preflight_median_s']:.2f}",
                        ", ".join(f"{value:.2f}" for value in run["seconds"]),
                    )
                    for run in parallel["runs"]
                ],
            )
        )
        parts.append("")
    if "instances" in extras:
        instances = extras["instances"]
        parts.append(
            f"One model with 1 instance: {instances['one_instance_s']:.2f} s to READY; the same "
            f"model with 2 instances: {instances['two_instances_s']:.2f} s.\n"
        )
    if "throughput" in extras:
        row = extras["throughput"]
        parts.append(f"## Throughput with dynamic batching ({row['model']}, batch-1 requests from 8 clients)\n")
        parts.append(
            table(
                ("requests/s", "p50 ms", "p99 ms", "mean batch", "executions per batch size"),
                [
                    (
                        f"{row['requests_per_s']:.0f}",
                        f"{row['latency_p50_ms']:.2f}",
                        f"{row['latency_p99_ms']:.2f}",
                        f"{row['mean_batch']:.2f}" if row["mean_batch"] else "-",
                        ", ".join(f"{size}: {count}" for size, count in row["batch_sizes_run"].items()),
                    )
                ],
            )
        )
        parts.append("")
    if "retrigger" in extras:
        retrigger = extras["retrigger"]
        parts.append(
            f"## Unchanged re-trigger\n\nThe same request again, {retrigger['requests']} times: median "
            f"{retrigger['median_ms']:.1f} ms client-side (max {retrigger['max_ms']:.1f} ms); "
            f"reloads: {retrigger['reloads']}.\n"
        )
    return parts


def specialization_summary(study: Dict) -> Dict:
    """Per order: the compute ratio at the marked warmup positions, and how
    many shapes, by where they were warmed, came back above 1.5x steady."""
    summary = {}
    for order, data in study["orders"].items():
        rows = sorted(data["rows"], key=lambda row: row["warmed_at"])
        buckets = []
        bounds = [0] + [mark for mark in SPECIALIZATION_MARKS if mark <= len(rows)]
        if bounds[-1] < len(rows):
            bounds.append(len(rows))
        for low, high in zip(bounds, bounds[1:]):
            span = rows[low:high]
            buckets.append(
                {
                    "warmed": f"{low + 1}..{high}",
                    "shapes": len(span),
                    "above_1_5x": sum(1 for row in span if (row["compute_ratio"] or 0) > 1.5),
                    "median_ratio": float(np.median([row["compute_ratio"] for row in span])),
                    "worst_ratio": max(row["compute_ratio"] for row in span),
                    "worst_excess_us": max(
                        (row["first_compute_ms"] - row["steady_compute_p50_ms"]) * 1000 for row in span
                    ),
                }
            )
        summary[order] = {
            "marks": {
                mark: rows[mark - 1]["compute_ratio"] for mark in SPECIALIZATION_MARKS if mark <= len(rows)
            },
            "buckets": buckets,
        }
    return summary


def _specialization_section(results: Dict) -> List[str]:
    study = results.get("specialization")
    if not study:
        return []
    parts = [
        f"## How many warmed shapes stay fast ({study['model']}, {study['shapes']} shapes)\n",
        "Group sizes x batch sizes 1, 2, 4, 8, warmup count 3, loaded once with the samples in plan "
        "order and once reversed; then every shape requested (first request, then "
        f"{study['steady_requests']} more). Ratio: first / steady p50 compute_infer, grouped by the "
        "position at which the shape was warmed.\n",
    ]
    rows = []
    for order, data in specialization_summary(study).items():
        for bucket in data["buckets"]:
            rows.append(
                (
                    order,
                    bucket["warmed"],
                    bucket["shapes"],
                    f"{bucket['median_ratio']:.2f}x",
                    f"{bucket['worst_ratio']:.2f}x",
                    f"{bucket['worst_excess_us']:.0f}",
                    bucket["above_1_5x"],
                )
            )
    parts.append(
        table(("warmup order", "warmed at", "shapes", "median ratio", "worst ratio", "worst excess us", "above 1.5x"), rows)
    )
    for order, data in specialization_summary(study).items():
        marks = ", ".join(f"#{mark}: {ratio:.2f}x" for mark, ratio in data["marks"].items())
        parts.append(f"\n{order}: the shape warmed at {marks}.")
    parts.append("")
    return parts


def markdown(results: Dict) -> str:
    parts = [
        f"# Warmup benchmark\n\n`{results['command']}` on {results['machine']}, {results['date']}.\n",
        backend_line(results["backend"]),
    ]
    for section in (_latency_section, _excess_section, _cost_section, _preflight_section, _scaling_section, _extras_section,
                    _specialization_section):
        parts.extend(section(results))
    return "\n".join(parts) + "\n"


def plot(results: Dict, path: pathlib.Path) -> None:
    """First-request latency per shape for each condition, steady p50 as the reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["latency"])
    figure, axes = plt.subplots(len(models), 1, figsize=(11, 3.6 * len(models)), squeeze=False)
    styles = {"cold": ("tab:red", "o"), "seed-style": ("tab:orange", "s"), "project": ("tab:green", "^")}
    for axis, model in zip(axes[:, 0], models):
        conditions = results["latency"][model]
        reference = conditions.get("project") or next(iter(conditions.values()))
        labels = [f"g{row['group']}\nb{row['batch']}" for row in reference["shapes"]]
        positions = np.arange(len(labels))
        for condition, data in conditions.items():
            if condition not in styles:
                continue  # the count sweep is in the table, not the plot
            color, marker = styles[condition]
            axis.plot(positions, [row["first_ms"] for row in data["shapes"]], marker=marker,
                      color=color, linestyle="none", label=f"{condition}: first request")
        axis.plot(positions, [row["steady_p50_ms"] for row in reference["shapes"]], color="black",
                  linewidth=1, label="steady p50 (project)")
        axis.set_yscale("log")
        axis.set_xticks(positions, labels, fontsize=7)
        axis.set_ylabel("ms (client wall)")
        axis.set_title(f"{model}: first request after READY, per shape (group g, batch b)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
