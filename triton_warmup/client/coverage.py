"""Report which share of recorded requests hit a warmed shape.

The warmed shapes are those of a plan file (--plan; planned by the helper's
own code, with the hand-written samples the configs keep), or else those of
the model_warmup samples in the configs on disk (-r FOLDER), or in the
configs a running server serves (-u URL: what its loaded models ran). Per model it prints the
share of recorded requests whose shape (batch size and every input's dims) a
sample runs, and the shapes it misses, most frequent first. Requests that a
model's config cannot take count as uncovered and are listed apart. An
ensemble has no shapes of its own: Triton records the requests it sends its
composing models too, and an ensemble's request counts as covered when every
one of those hit a warmed shape.

Exit codes: 0 coverage reached --min-coverage for every model (or no
threshold was given), 1 a model fell below it, 2 bad usage, an unreadable
trace or plan.
"""

import argparse
import json
import pathlib
import sys
from typing import List, Optional

from triton_warmup.client.flags import ServedConfigError
from triton_warmup.client.from_trace import add_trace_flags, model_configs, reading_notes, share
from triton_warmup.client.plan_file import PlanFileError, load_plan
from triton_warmup.client.text_table import text_table
from triton_warmup.helper.request import WarmupRequestError
from triton_warmup.traffic.coverage import measure_coverage, overall_share, planned_configs
from triton_warmup.traffic.shapes import profile_traffic
from triton_warmup.traffic.trace import TraceError, expand_paths

# How many uncovered shapes a table lists per model; --json lists all.
DEFAULT_TOP = 10


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    add_trace_flags(parser)
    parser.add_argument(
        "--plan", type=pathlib.Path, default=None,
        help="A plan file whose samples count as warmed (with -r: its data files are checked in the "
        "model folders). Default is the configs' model_warmup.",
    )
    parser.add_argument(
        "--min-coverage", type=share, default=None,
        help="Exit 1 when a model's covered share of requests is below this (0.95 = 95%%). Default is no threshold.",
    )
    parser.add_argument(
        "--top", type=int, default=DEFAULT_TOP, help=f"Uncovered shapes listed per model. Default is {DEFAULT_TOP}."
    )
    args = parser.parse_args(argv)
    if args.url and args.plan:
        parser.error("--plan is planned against the model folders: use -r with the repository folder")
    return args


def format_report(results, top: int) -> str:
    rows = [("model", "warmed by", "requests", "covered", "share", "shapes seen", "warmed shapes")]
    for result in results:
        rows.append(
            (
                result.model,
                result.source,
                str(result.requests),
                str(result.covered),
                f"{result.share:.1%}",
                "-" if result.ensemble else str(result.shapes_seen),
                "-" if result.ensemble else str(result.warmed_shapes),
            )
        )
    lines = [text_table(rows)]
    for result in results:
        if result.uncovered:
            lines.append(f"{result.model}: uncovered shapes, most frequent first")
            for shape, count in result.uncovered[:top]:
                lines.append(f"  {count:>8}  {shape.describe()}")
            if len(result.uncovered) > top:
                rest = sum(count for _, count in result.uncovered[top:])
                lines.append(f"  {rest:>8}  in {len(result.uncovered) - top} more shapes (--top, --json)")
        for raw, reason, count in result.rejected:
            lines.append(f"{result.model}: {count} requests the config cannot take ({reason}): {raw}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        configs = model_configs(args)
        sources = {}
        if args.plan is not None:
            document, _ = load_plan(args.plan)
            planned = planned_configs(args.model_repository, document)
            planned = {name: config for name, config in planned.items() if name in configs}
            configs.update(planned)
            sources = {name: "plan" for name in planned}
        profile = profile_traffic(expand_paths(args.traces), configs, keep_data=False, show_progress=args.progress)
    except (TraceError, WarmupRequestError, PlanFileError, ServedConfigError, OSError) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 2
    results = measure_coverage(profile, configs, sources)
    below = [
        result for result in results if args.min_coverage is not None and result.share < args.min_coverage
    ]
    total = overall_share(results)
    if args.json:
        print(
            json.dumps(
                {
                    "requests": profile.requests,
                    "share": total,
                    "min_coverage": args.min_coverage,
                    "below": [result.model for result in below],
                    "notes": reading_notes(profile),
                    "models": [result.to_dict() for result in results],
                },
                indent=2,
            )
        )
    else:
        for note in reading_notes(profile):
            print(note)
        if results:
            print(format_report(results, args.top))
    if not results:
        print("FAILED: the trace holds no request to a model of the repository", file=sys.stderr)
        return 1
    if below:
        if not args.json:
            names = ", ".join(f"{result.model} {result.share:.1%}" for result in below)
            print(f"FAILED: below --min-coverage {args.min_coverage:.1%}: {names}")
        return 1
    if not args.json:
        print(f"PASS: {total:.1%} of {profile.requests} recorded requests hit a warmed shape")
    return 0


if __name__ == "__main__":
    sys.exit(main())
