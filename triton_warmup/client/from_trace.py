"""Make a warmup plan file from traffic that Triton recorded.

Record with tritonserver --trace-config triton,file=trace.json
--trace-config level=TIMESTAMPS --trace-config level=TENSORS
--trace-config rate=1 --trace-config count=-1 (rate=N records every Nth
request). Per model of the repository (-r FOLDER) or of a running server
(-u URL, for repositories in a bucket), the plan lists every shape the
traffic sent that the model's config can take, cut by --max-samples or
--cover to the most frequent ones, in the order Triton is to run them: the
most frequent last by default (--order; docs/traffic.md). Samples carry
shapes only and the helper's data policy; --data recorded writes the first
request recorded at each shape, what a user sent, to the model's
warmup/traffic/ folder. Shapes the config cannot take are reported and left
out. Then: triton-warmup --plan PLAN.

Exit codes: 0 the plan was written, 1 the trace holds nothing to plan,
2 bad usage or an unreadable trace.
"""

import argparse
import datetime
import json
import pathlib
import sys
from typing import List, Optional

from triton_warmup.client.flags import ServedConfigError, served_configs
from triton_warmup.client.plan_file import PlanFileError, load_plan
from triton_warmup.client.text_table import text_table
from triton_warmup.helper.request import WarmupRequestError
from triton_warmup.traffic.plan import (
    DATA_CHOICES,
    DEFAULT_MAX_DATA_BYTES,
    FREQUENT_LAST,
    ORDERS,
    TrafficPlanError,
    make_plan,
    named_data_files,
    prune_data_files,
    write_plan,
)
from triton_warmup.traffic.shapes import profile_traffic, repository_configs, with_members
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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "-r", "--model-repository", type=pathlib.Path,
        help="The model repository folder whose configs the shapes are checked against.",
    )
    source.add_argument(
        "-u", "--url",
        help="Check the shapes against the configs a running server serves (HTTP, host:port), for "
        "repositories that live in a bucket. Only READY models count.",
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
        "--data", choices=DATA_CHOICES, default="auto",
        help="Sample data: auto (shapes only: floats random, the rest zeros, as the helper does), random, "
        "zero, or recorded: the first request of each shape, written to the model's warmup/traffic/ "
        "folder; that is what users sent (docs/traffic.md). Default is auto.",
    )
    parser.add_argument(
        "--max-data-bytes", type=positive, default=DEFAULT_MAX_DATA_BYTES,
        help="With --data recorded: a recorded input larger than this keeps the default data instead. "
        f"Default is {DEFAULT_MAX_DATA_BYTES}.",
    )
    parser.add_argument(
        "--prune", action="store_true",
        help="Remove files of warmup/traffic/ that neither the new plan, the models' config.pbtxt nor a "
        "--keep plan names. Nothing outside warmup/traffic/ is touched.",
    )
    parser.add_argument(
        "--keep", type=pathlib.Path, action="append", default=[], metavar="PLAN",
        help="A plan file whose data files --prune keeps; give it once per plan.",
    )
    parser.add_argument(
        "--order", choices=ORDERS, default=FREQUENT_LAST,
        help="The order Triton runs the samples in. Default is frequent-last: the most frequent shape is "
        "warmed last, which kept the frequent shapes fast in bench/results/traffic_benchmark.md.",
    )
    parser.add_argument("--count", type=positive, default=None, help="Runs per sample. Default is the helper's.")
    args = parser.parse_args(argv)
    if args.url and (args.data == "recorded" or args.prune):
        parser.error("--data recorded and --prune write into model folders: use -r with the repository folder")
    return args


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


def model_configs(args: argparse.Namespace):
    """The configs the traffic is checked against: the repository folder's,
    or those the server at ``--url`` serves, with their ensembles' members."""
    if args.model_repository is not None:
        return repository_configs(args.model_repository, args.models)
    served = served_configs(args.url)
    if args.models is None:
        return served
    missing = [name for name in args.models if name not in served]
    if missing:
        raise ServedConfigError(f"{', '.join(missing)} not READY on {args.url} (READY: {sorted(served)})")
    return {name: served[name] for name in with_members(args.models, served)}


def recorded_data_lines(written: List[pathlib.Path], repository: pathlib.Path) -> List[str]:
    """What the user must know about the recorded data files just written."""
    if not written:
        return []
    folders = sorted({str(path.parent) for path in written})
    return [
        f"NOTE: wrote {len(written)} files of recorded request data to {', '.join(folders)}: they hold what "
        "users sent. Keep them out of images and git where that matters (docs/traffic.md, \"Recorded data "
        "is user data\")."
    ]


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        configs = model_configs(args)
        profile = profile_traffic(expand_paths(args.traces), configs, show_progress=args.progress)
        keep = {}
        for plan_path in args.keep:
            document, _ = load_plan(plan_path)
            for name, files in named_data_files(document, configs).items():
                keep.setdefault(name, set()).update(files)
    except (TraceError, WarmupRequestError, ServedConfigError, PlanFileError, OSError) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 2
    notes = reading_notes(profile)
    repository = args.model_repository or pathlib.Path(".")
    try:
        plan = make_plan(
            profile, configs, repository, args.max_samples, args.cover, args.data, args.count, args.order,
            args.max_data_bytes,
        )
        written = write_plan(plan, args.output, plan_header(args, profile, plan))
    except TrafficPlanError as error:
        print("\n".join(notes + [f"FAILED: {error}"]), file=sys.stderr)
        return 1
    pruned = []
    if args.prune:
        for name, files in named_data_files(plan.document, configs).items():
            keep.setdefault(name, set()).update(files)
        pruned = prune_data_files(args.model_repository, configs, keep)
    notes += recorded_data_lines(written, repository)
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
                    "data_files_pruned": [str(path) for path in pruned],
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
    for path in pruned:
        print(f"pruned {path}: no plan or config names it")
    print(f"wrote {args.output}: {plan.samples} samples, {len(written)} new data files")
    print(f"PASS: next, triton-warmup --plan {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
