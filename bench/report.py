"""Turning the benchmark's raw numbers into its summary, Markdown and plot."""

import pathlib
from typing import Dict, List, Sequence

import numpy as np

RATIO_TARGET = 1.5
HELPER_SHARE_TARGET = 0.05


def worst(rows: List[Dict], key: str = "ratio") -> Dict:
    candidates = [row for row in rows if row.get(key) is not None]
    return max(candidates, key=lambda row: row[key])


def summarize_condition(rows: List[Dict]) -> Dict:
    """Worst and median first/steady ratios over the shapes of one model."""
    worst_wall, worst_compute = worst(rows), worst(rows, "compute_ratio")
    return {
        "shapes": len(rows),
        "worst_ratio": worst_wall["ratio"],
        "worst_shape": f"g{worst_wall['group']}xb{worst_wall['batch']}",
        "worst_first_ms": worst_wall["first_ms"],
        "worst_steady_p50_ms": worst_wall["steady_p50_ms"],
        "worst_single_trial_ratio": max(row.get("worst_trial_ratio", row["ratio"]) for row in rows),
        "median_ratio": float(np.median([row["ratio"] for row in rows])),
        "worst_compute_ratio": worst_compute["compute_ratio"],
        "worst_compute_shape": f"g{worst_compute['group']}xb{worst_compute['batch']}",
        "slowest_first_ms": max(row["first_ms"] for row in rows),
    }


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> Dict:
    """Least squares ``y = intercept + slope * x`` and its R^2."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    slope, intercept = np.polyfit(xs, ys, 1)
    predicted = intercept + slope * xs
    total = float(np.sum((ys - ys.mean()) ** 2))
    r_squared = 1 - float(np.sum((ys - predicted) ** 2)) / total if total else 1.0
    return {"intercept_s": float(intercept), "per_sample_s": float(slope), "r_squared": r_squared}


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: Dict) -> str:
    parts = [f"# Warmup benchmark\n\n`{results['command']}` on {results['machine']}, {results['date']}.\n"]

    trials = results["settings"]["trials"]
    parts.append("## First request after READY vs steady state (client wall time)\n")
    parts.append(
        f"Per shape: the first request right after READY (median over {trials} fresh load(s)) divided "
        f"by the steady p50 of {results['settings']['steady_requests']} further requests per load. "
        "The worst shape is shown, not the mean; 'worst single load' is the same ratio for the "
        "slowest of the first requests.\n"
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
                    f"**{summary['worst_ratio']:.2f}x** ({summary['worst_shape']})",
                    f"{summary['worst_first_ms']:.2f} / {summary['worst_steady_p50_ms']:.2f}",
                    f"{summary['median_ratio']:.2f}x",
                    f"{summary['worst_single_trial_ratio']:.2f}x",
                    f"{summary['worst_compute_ratio']:.2f}x ({summary['worst_compute_shape']})",
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
                "worst first / steady p50",
                "that shape: first / p50 ms",
                "median ratio",
                "worst single load",
                "worst compute_infer ratio",
                "slowest first request ms",
                "s to READY",
            ),
            rows,
        )
    )
    verdict = results["targets"]
    parts.append(
        f"\nTarget: after this project's warmup the first request at every planned shape is at most "
        f"{RATIO_TARGET}x its steady p50. Worst over all models and shapes: "
        f"**{verdict['project_worst_ratio']:.2f}x** ({verdict['project_worst_where']}) -> "
        f"{'met' if verdict['ratio_met'] else 'MISSED'}. Server-side compute_infer, worst: "
        f"{verdict['project_worst_compute_ratio']:.2f}x.\n"
    )

    cost = results["cost"]
    parts.append("## Cost of the warmup (this project's condition, one model per request)\n")
    parts.append(
        table(
            ("model", "samples x runs", "s to READY", "Triton load s", "warmup forwards s", "helper's own work ms", "helper share"),
            [
                (
                    row["model"],
                    f"{row['samples']} x {row['count']}",
                    f"{row['seconds_to_ready']:.3f}",
                    f"{row['triton_load_s']:.3f}",
                    f"{row['warmup_forward_s']:.3f}",
                    f"{row['helper_s'] * 1000:.1f}",
                    f"{row['helper_share'] * 100:.2f}%",
                )
                for row in cost["models"]
            ],
        )
    )
    parts.append(
        f"\nHelper's own work (request check + planning + re-planning under the lock + the atomic "
        f"write) is at most {cost['worst_helper_share'] * 100:.2f}% of the time to READY (target "
        f"{HELPER_SHARE_TARGET * 100:.0f}%: {'met' if verdict['helper_share_met'] else 'MISSED'}).\n"
    )

    scaling = results["scaling"]
    if scaling["points"]:
        parts.append("## How the time to READY grows (one request, models unloaded first)\n")
        parts.append(
            table(
                ("models", "group sizes", "batch sizes", "samples", "s to READY", "load s per model"),
                [
                    (
                        ", ".join(point["models"]),
                        f"1..{point['group_max']}",
                        ", ".join(map(str, point["batch_sizes"])),
                        point["samples"],
                        f"{point['seconds']:.2f}",
                        ", ".join(f"{value:.2f}" for value in point["load_s"]),
                    )
                    for point in scaling["points"]
                ],
            )
        )
        fit = scaling.get("fit")
        if fit:
            parts.append(
                f"\nOne model, least squares over {fit['points']} runs: time to READY = "
                f"{fit['intercept_s']:.2f} s + {fit['per_sample_s'] * 1000:.2f} ms x samples "
                f"(R^2 {fit['r_squared']:.3f}).\n"
            )

    extras = results["extras"]
    if "parallel" in extras:
        parallel = extras["parallel"]
        parts.append("## Parallel loads\n")
        parts.append(
            f"Three models, same plan: one request (loads in parallel, `max_parallel_loads` 4, "
            f"which the benchmark sets; the helper's default is 1) "
            f"{parallel['one_request_s']:.2f} s; three requests one after another "
            f"{parallel['sequential_s']:.2f} s.\n"
        )
    if "instances" in extras:
        instances = extras["instances"]
        parts.append(
            f"One model with 1 instance: {instances['one_instance_s']:.2f} s to READY; the same "
            f"model with 2 instances: {instances['two_instances_s']:.2f} s.\n"
        )
    if "throughput" in extras:
        parts.append("## Batched execution in the pytorch stand-in (batch-1 requests from 8 clients)\n")
        parts.append(
            table(
                ("execution", "requests/s", "p50 ms", "p99 ms", "mean batch", "forwards per batch size"),
                [
                    (
                        name,
                        f"{row['requests_per_s']:.0f}",
                        f"{row['latency_p50_ms']:.2f}",
                        f"{row['latency_p99_ms']:.2f}",
                        f"{row['mean_batch']:.2f}" if row["mean_batch"] else "-",
                        ", ".join(f"{size}: {count}" for size, count in row["batch_sizes_run"].items()),
                    )
                    for name, row in extras["throughput"].items()
                ]
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
