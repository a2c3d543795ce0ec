"""Make a warmup plan file from traffic that Triton recorded.

Record with tritonserver --trace-config triton,file=trace.json
--trace-config level=TIMESTAMPS --trace-config level=TENSORS
--trace-config rate=1 --trace-config count=-1 (rate=N records every Nth
request). Per model of the repository, the plan lists every shape the traffic
sent that the model's config can take, cut by --max-samples or --cover to
the most frequent ones, in the order Triton is to run them: the most
frequent last by default, because TorchScript kept the shapes warmed last
fast (--order; docs/traffic.md). Each sample carries
the data of the first request recorded at its shape, written to the model's
warmup/traffic/ folder, unless --data says otherwise. Shapes the config
cannot take are reported and left out. Then: triton-warmup --plan PLAN.

Exit codes: 0 the plan was written, 1 the trace holds nothing to plan,
2 bad usage or an unreadable trace.
"""

import argparse
import datetime
import json
import pathlib
import sys
from typing import List, Optional

from triton_warmup.client.text_table import text_table
from triton_warmup.helper.request import WarmupRequestError
from triton_warmup.traffic.plan import DATA_CHOICES, FREQUENT_LAST, ORDERS, TrafficPlanError, make_plan, write_plan
from triton_warmup.traffic.shapes import profile_traffic, repository_configs
from triton_warmup.traffic.trace import TraceError, expand_paths


def share(value: str) -> float:
    number = float(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return number


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def add_trace_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that both traffic commands take: traces, repository, models."""
    parser.add_argument(
        "traces", nargs="+", metavar="TRACE",
        help="Triton trace files; a path with numbered parts (PATH.0, PATH.1, ...) stands for all of them.",
    )
    parser.add_argument(
        "-r", "--model-repository", type=pathlib.Path, required=True,
        help="The model repository whose configs the shapes are checked against.",
    )
    parser.add_argument(
        "-m", "--models", nargs="+", default=None,
        help="Only these models. Default is every model of the repository that the trace holds.",
    )
    parser.add_argument("--json", action="store_true", help="Print the result as JSON instead of tables.")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="Show a progress bar while the trace is read. Default is on a terminal only.",
    )


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    add_trace_flags(parser)
    parser.add_argument("-o", "--output", type=pathlib.Path, required=True, help="The plan file to write (YAML).")
    parser.add_argument(
        "--max-samples", type=positive, default=None,
        help="At most this many samples per model, the most frequent shapes. Default is every shape.",
    )
    parser.add_argument(
        "--cover", type=share, default=None,
        help="Only the most frequent shapes that together reach this share of a model's requests "
        "(0.99 = 99%%). Default is every shape.",
    )
    parser.add_argument(
        "--data", choices=DATA_CHOICES, default="recorded",
        help="Sample data: recorded (the first request of each shape, written to warmup/traffic/), auto "
        "(floats random, the rest zeros), random or zero. Default is recorded.",
    )
    parser.add_argument(
        "--order", choices=ORDERS, default=FREQUENT_LAST,
        help="The order Triton runs the samples in. Default is frequent-last: the most frequent shape is "
        "warmed last, which kept the frequent shapes fast in bench/results/traffic_benchmark.md.",
    )
    parser.add_argument("--count", type=positive, default=None, help="Runs per sample. Default is the helper's.")
    return parser.parse_args(argv)


def plan_header(args: argparse.Namespace, profile, plan) -> List[str]:
    traces = ", ".join(profile.summary.files)
    lines = [
        f"Made by triton-warmup-from-trace on {datetime.date.today()} from {traces}:",
        f"{profile.requests} recorded requests of {len(profile.models)} models.",
    ]
    for selection in plan.selections:
        lines.append(
            f"{selection.model}: {len(selection.shapes)} samples cover {selection.covered} of "
            f"{selection.requests} requests ({selection.share:.1%})"
        )
    where = "last" if args.order == FREQUENT_LAST else "first"
    lines.append(
        f"Triton runs the samples in this order, the most frequent {where} (--order {args.order}; docs/traffic.md)."
    )
    return lines


def summary_table(plan) -> str:
    rows = [("model", "requests", "shapes", "samples", "covered", "rejected", "notes")]
    for selection in plan.selections:
        shapes = len(selection.shapes) + len(selection.left_out)
        rejected = sum(count for _, _, count in selection.rejected)
        notes = "; ".join(f"{name}: {note}" for name, note in selection.data_notes.items())
        rows.append(
            (
                selection.model,
                str(selection.requests),
                str(shapes),
                str(len(selection.shapes)),
                f"{selection.share:.1%}",
                str(rejected),
                notes,
            )
        )
    return text_table(rows)


def reading_notes(profile) -> List[str]:
    """What the reader found besides requests, and what to do about it."""
    summary = profile.summary
    notes = [f"NOTE: {path} {reason}; the requests before that point count" for path, reason in summary.truncated.items()]
    if summary.tensors_without_model:
        notes.append(
            f"NOTE: {summary.tensors_without_model} traced requests name no model: record with "
            "--trace-config level=TIMESTAMPS as well as level=TENSORS"
        )
    if summary.requests_without_tensors:
        notes.append(
            f"NOTE: {summary.requests_without_tensors} traced requests have no input tensors: record with "
            "--trace-config level=TENSORS"
        )
    for name, traffic in sorted(profile.ensembles.items()):
        notes.append(
            f"NOTE: {name} is an ensemble ({traffic.requests} requests): it is never planned; its composing "
            f"models {', '.join(traffic.members)} are, from the requests Triton recorded for them"
        )
    if profile.other_models:
        notes.append(f"NOTE: not counted (not in the repository, or not asked for): {dict(profile.other_models)}")
    return notes


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        configs = repository_configs(args.model_repository, args.models)
        profile = profile_traffic(expand_paths(args.traces), configs, show_progress=args.progress)
    except (TraceError, WarmupRequestError, OSError) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 2
    notes = reading_notes(profile)
    try:
        plan = make_plan(
            profile, configs, args.model_repository, args.max_samples, args.cover, args.data, args.count, args.order
        )
        written = write_plan(plan, args.output, plan_header(args, profile, plan))
    except TrafficPlanError as error:
        print("\n".join(notes + [f"FAILED: {error}"]), file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {
                    "plan": str(args.output),
                    "requests": profile.requests,
                    "seconds_reading": profile.seconds,
                    "bytes_read": profile.summary.bytes_read,
                    "notes": notes,
                    "data_files_written": [str(path) for path in written],
                    "models": [selection.to_dict() for selection in plan.selections],
                },
                indent=2,
            )
        )
        return 0
    mib = profile.summary.bytes_read / 2**20
    print(f"read {profile.requests} requests ({mib:.1f} MiB) in {profile.seconds:.2f} s")
    for note in notes:
        print(note)
    print(summary_table(plan))
    for selection in plan.selections:
        for raw, reason, count in selection.rejected:
            print(f"left out of {selection.model}: {count} requests with {raw}: {reason}")
    print(f"wrote {args.output}: {plan.samples} samples, {len(written)} new data files")
    print(f"PASS: next, triton-warmup --plan {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
