#!/usr/bin/env python3
"""Warm models up on a Triton server with ONE request to warmup_helper.

The helper writes a model_warmup sample for every group size x batch size into
each model's config.pbtxt and loads the model; Triton runs the samples on every
instance before it marks the model READY. This script sends that request,
shows each model's state live while it runs, and prints a table of the
results. Models come from --models, --all (every model in the repository) or
a plan file (--plan, YAML or JSON; see plans/example.yaml). --start-report
sends no warmup: it waits for the one the helper runs at server start
(its warm_on_start parameter) and prints that report. Give -u several
times to warm several servers (the replicas of one deployment) at once, one
thread per server; each server's results are printed under its URL.

Exit codes: 0 every model warmed (on every server), 1 a model failed (on
any server), 2 a bad request (bad usage, a bad plan file, or a request the
helper refused as bad), 3 a server unreachable (and nothing else failed).
"""

import argparse
import copy
import dataclasses
import io
import itertools
import json
import pathlib
import sys
import threading
import time
from typing import Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

import numpy as np
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from triton_warmup import HELPER_MODEL
from triton_warmup.client import flags as client_flags
from triton_warmup.client.live_view import StateWatcher
from triton_warmup.client.plan_file import PlanFileError, load_plan, locate_plan_error
from triton_warmup.client.text_table import text_table
from triton_warmup.helper.request import (
    DEFAULT_GROUP_SIZE_MAX,
    DEFAULT_GROUP_SIZE_MIN,
    WarmupRequestError,
    document_from_tensors,
    parse_request,
)
from triton_warmup.report import (
    COMPILE_REUSED,
    COMPILE_UNKNOWN,
    PREFLIGHT_RECORD,
    PREFLIGHT_SCRATCH,
    REWARM_IN_PLACE,
    REWARM_RELOADED,
    CompileRecord,
    ModelEntry,
    WarmupReport,
)
from triton_warmup.threads import SWITCHES_UP

DEFAULT_MODELS = ["model-v1", "model-v2", "model-v3"]
# The helper's input that asks for the report of its warmup at start; while
# that warmup runs, the helper answers UNAVAILABLE with these words and its progress.
START_REPORT = "START_REPORT"
WARMING_AT_START = "is warming at start"
# Between two asks while the helper warms at start: its answer is immediate.
START_POLL_INTERVAL_S = 1.0
# Several models, each loading its instances and running every sample count
# times: minutes on a small CPU machine, so the default is generous.
DEFAULT_TIMEOUT_S = 900.0


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[-1],
    )
    client_flags.add_common_flags(parser, several_urls=True)
    client_flags.add_helper_flag(parser)
    parser.add_argument(
        "--models",
        nargs="+",
        help=f"Models to warm up. Default is {' '.join(DEFAULT_MODELS)}.",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="Warm every model in the server's repository except the helper (the helper "
        "lists them). Each takes its feature dimension from its config. Default is off.",
    )
    parser.add_argument(
        "--plan",
        type=pathlib.Path,
        help="A plan file (YAML or JSON) with a plan per model: group sizes, batch sizes, "
        "count and data per input. Replaces --models, --all and the shape flags. "
        "See plans/example.yaml.",
    )
    parser.add_argument(
        "--start-report",
        action="store_true",
        help="Warm nothing: wait until the warmup the helper runs at server start "
        "(warm_on_start, docs/warm-on-start.md) is done, then print its report. Default is off.",
    )
    parser.add_argument(
        "--drop-learned",
        action="store_true",
        help="Remove the samples the helper learned from live traffic (adapt, docs/adapt.md) "
        "from the configs this warmup writes. Default is to keep them after the plan's own.",
    )
    parser.add_argument(
        "--mode",
        choices=("auto", "load", "requests"),
        help="load: rewrite configs and load through the Model Loading API (warm before "
        "READY; explicit mode only). requests: send inference requests to models that "
        "are already READY (any mode; they serve traffic while they warm). Default is "
        "auto: load in explicit mode, else requests (or the plan file's mode).",
    )
    parser.add_argument(
        "--feature-dims",
        nargs="+",
        type=int,
        help="One feature dimension per model (0 = take it from the model's config). "
        "Default is to take every one from the configs.",
    )
    parser.add_argument(
        "--group-size-min",
        type=int,
        help=f"Smallest group size to warm. Default is {DEFAULT_GROUP_SIZE_MIN}.",
    )
    parser.add_argument(
        "--group-size-max",
        type=int,
        help=f"Largest group size to warm. Default is {DEFAULT_GROUP_SIZE_MAX}.",
    )
    parser.add_argument(
        "--batch-sizes",
        nargs="+",
        type=int,
        help="Batch sizes to warm. Default is chosen by the helper from each model's "
        "config: powers of two up to max_batch_size, max_batch_size itself and the "
        "dynamic batcher's preferred sizes.",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"Seconds to wait for the whole warmup. Default is {DEFAULT_TIMEOUT_S:.0f}.",
    )
    parser.add_argument(
        "--json", action="store_true", help="Print the helper's full JSON report. Default is off."
    )
    args = parser.parse_args(argv)
    args.urls = args.url or [client_flags.DEFAULT_URLS[args.protocol]]
    repeated = sorted({url for url in args.urls if args.urls.count(url) > 1})
    if repeated:
        parser.error(f"-u {', '.join(repeated)} given more than once")
    # Each server is warmed with a copy of args whose url is its own.
    args.url = args.urls[0]
    # A bad -H exits here, not inside a server's thread.
    client_flags.request_headers(args)
    shape_flags = {
        "--group-size-min": args.group_size_min,
        "--group-size-max": args.group_size_max,
        "--batch-sizes": args.batch_sizes,
        "--feature-dims": args.feature_dims,
        "--models": args.models,
    }
    args.plan_document = None
    if args.start_report:
        given = [flag for flag, value in shape_flags.items() if value is not None] + [
            flag for flag, value in (("--all", args.all), ("--plan", args.plan), ("--mode", args.mode)) if value
        ]
        given += ["--drop-learned"] if args.drop_learned else []
        if given:
            parser.error(f"--start-report warms nothing; leave out {', '.join(given)}")
        args.watch_models = None
        return args
    if args.plan is not None:
        given = [flag for flag, value in shape_flags.items() if value is not None] + (
            ["--all"] if args.all else []
        )
        if given:
            parser.error(f"--plan holds the whole plan; leave out {', '.join(given)}")
        try:
            args.plan_document, plan = load_plan(args.plan, args.model_name)
        except PlanFileError as error:
            client_flags.usage_error(parser, str(error))
        if args.drop_learned:
            args.plan_document = _dropping_learned(args.plan_document)
        # Models the live view follows; None: every model of the repository.
        args.watch_models = None if plan.all_models else list(plan.models)
        return args
    if args.all and args.models is not None:
        parser.error("--all takes every model of the repository; leave out --models")
    if not args.all:
        args.models = args.models or DEFAULT_MODELS
    if args.group_size_min is None:
        args.group_size_min = DEFAULT_GROUP_SIZE_MIN
    if args.group_size_max is None:
        args.group_size_max = DEFAULT_GROUP_SIZE_MAX
    # The helper's own validator, so that a value it would refuse is refused
    # here with the same words and the same exit code as in a plan file.
    try:
        parse_request(request_arrays(args), args.model_name)
    except WarmupRequestError as error:
        client_flags.usage_error(parser, client_flags.in_flag_terms(error))
    if args.drop_learned:
        # Only a plan says what to do with learned samples: the flags' plan is sent as one.
        args.plan_document = _dropping_learned(document_from_tensors(request_arrays(args)))
        args.plan_document.pop("mode", None)
    args.watch_models = None if args.all else list(args.models)
    return args


def _dropping_learned(document: Dict) -> Dict:
    """``document`` with ``learned: drop`` for every model it warms."""
    document = json.loads(json.dumps(document))
    document.setdefault("defaults", {})["learned"] = "drop"
    for settings in (document.get("models") or {}).values():
        if isinstance(settings, dict):
            settings.pop("learned", None)
    return document


def _strings(*values: str) -> np.ndarray:
    return np.array([value.encode("utf-8") for value in values], dtype=np.object_)


def shape_arrays(
    models: Optional[Sequence[str]],
    group_size_min: int,
    group_size_max: int,
    feature_dims: Optional[Sequence[int]] = None,
    batch_sizes: Optional[Sequence[int]] = None,
    all_models: bool = False,
) -> Dict[str, np.ndarray]:
    """The seed's tensor inputs for one shape range: ``MODELS`` (or
    ``ALL_MODELS``), ``GROUP_SIZE_MIN``/``MAX`` and, when given,
    ``FEATURE_DIMS`` and ``BATCH_SIZES``."""
    arrays = {"ALL_MODELS": np.array([True])} if all_models else {"MODELS": _strings(*models)}
    arrays["GROUP_SIZE_MIN"] = np.array([group_size_min], dtype=np.int64)
    arrays["GROUP_SIZE_MAX"] = np.array([group_size_max], dtype=np.int64)
    if feature_dims is not None:
        arrays["FEATURE_DIMS"] = np.array(feature_dims, dtype=np.int64)
    if batch_sizes is not None:
        arrays["BATCH_SIZES"] = np.array(batch_sizes, dtype=np.int64)
    return arrays


def request_arrays(args: argparse.Namespace) -> Dict[str, np.ndarray]:
    """The warmup request's inputs: ``PLAN`` for a plan file, else the
    seed's tensors for the flags (the helper turns them into a plan);
    ``START_REPORT`` alone for ``--start-report``."""
    if args.start_report:
        return {START_REPORT: np.array([True])}
    arrays = {} if args.mode is None else {"MODE": _strings(args.mode)}
    if args.plan_document is not None:
        arrays["PLAN"] = _strings(json.dumps(args.plan_document))
        return arrays
    arrays.update(
        shape_arrays(
            args.models, args.group_size_min, args.group_size_max, args.feature_dims, args.batch_sizes, args.all
        )
    )
    return arrays


def infer_inputs(protocol: str, arrays: Dict[str, np.ndarray]) -> list:
    """``InferInput`` tensors for ``arrays``; each one's Triton datatype
    follows its numpy dtype."""
    module = client_flags.client_module(protocol)
    inputs = []
    for name, array in arrays.items():
        datatype = "BYTES" if array.dtype == np.object_ else np_to_triton_dtype(array.dtype)
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def request_warmup(
    client,
    protocol: str,
    arrays: Dict[str, np.ndarray],
    helper: str = HELPER_MODEL,
    headers: Optional[Dict[str, str]] = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Tuple[List[str], WarmupReport]:
    """Send one warmup request; return ``LOADED_MODELS`` and the report.

    Raises:
        InferenceServerException: the helper refused the request
            (``WarmupRequestError.from_message`` reads the error back).
    """
    inputs = infer_inputs(protocol, arrays)
    if protocol == "grpc":
        response = client.infer(helper, inputs, headers=headers, client_timeout=timeout_s)
    else:
        response = client.infer(helper, inputs, headers=headers)
    loaded = [name.decode("utf-8") for name in response.as_numpy("LOADED_MODELS").reshape(-1)]
    report = WarmupReport.from_dict(json.loads(response.as_numpy("REPORT").reshape(-1)[0]))
    return loaded, report


def config_cell(entry: ModelEntry) -> str:
    """What happened to the model's config.pbtxt."""
    if entry.mode == "requests":
        return "not used"
    if entry.kind == "ensemble":
        # Triton refuses model_warmup in an ensemble's config.
        return "-"
    if entry.fallback:
        return "not written"
    if entry.config_restored:
        return "restored"
    return "rewritten" if entry.config_written else "unchanged"


def preflight_cell(entry: ModelEntry) -> str:
    """How many samples the preflight ran, where, and for how long."""
    record = entry.preflight
    if record is None:
        return "-"
    if not record.passed:
        return "FAILED"
    if record.how == PREFLIGHT_RECORD:
        return f"{record.samples_known_good} recorded {record.seconds:.2f}s"
    where = "scratch" if record.how == PREFLIGHT_SCRATCH else "serving"
    return f"{record.samples_checked} {where} {record.seconds:.2f}s"


def notes_cell(entry: ModelEntry) -> str:
    """The error (one line: the helper puts Triton's whole text in
    ``detail``); else what the model is to an ensemble, or why the config
    went to the load API instead of the file."""
    if entry.error:
        return " ".join(entry.error.split())
    notes = []
    if entry.kind == "ensemble":
        notes.append(f"ensemble of {', '.join(entry.members)}")
    if entry.warmed_for:
        learned = f" ({entry.derived_samples} new shapes from it)" if entry.derived_samples else ""
        if entry.derived_samples and len(entry.warmed_for) > 1:
            learned = f" ({entry.derived_samples} new shapes from them)"
        notes.append(f"member of {', '.join(entry.warmed_for)}{learned}")
    if entry.kind in ("sequence", "decoupled", "sequence, decoupled"):
        notes.append(entry.kind)
    if entry.learned_samples:
        notes.append(f"+{entry.learned_samples} learned from traffic")
    if len(entry.versions) > 1:
        notes.append(f"versions {', '.join(entry.versions)}")
    if entry.fallback:
        # The reason comes before the first ';' of the helper's explanation.
        notes.append("loaded with the planned config: " + entry.fallback.split(";")[0])
    if entry.threads:
        # A model above OpenMP's count on purpose (the smallest-count policy) is informed, not warned.
        notes.append("switches its threads up (see NOTE)" if SWITCHES_UP in entry.threads
                     else "thread counts differ (see NOTE)")
    if entry.compile is not None:
        notes.append(compile_note(entry.compile))
    if entry.rewarm == REWARM_IN_PLACE:
        notes.append("warmed in place, not reloaded")
    elif entry.rewarm == REWARM_RELOADED:
        notes.append(f"reloaded: {entry.rewarm_reason}")
    return "; ".join(notes)


def compile_note(record: CompileRecord) -> str:
    """A PyTorch 2 model's compilation during its load, in a few words."""
    if record.verdict == COMPILE_UNKNOWN:
        return "torch.compile cache: unknown (TORCHINDUCTOR_CACHE_DIR)" if not record.cache_dir else (
            "torch.compile cache: unknown (no counts from the runtime)"
        )

    def counts(graphs: int, misses: int, hits: int) -> str:
        if not misses:
            return f"{graphs} graphs, all from the cache"
        return f"{graphs} graphs, {misses} compiled, {hits} from the cache"

    dynamo = f"{record.traced_from_cache} functions from Dynamo's cache"
    if record.traced_from_cache and not record.graphs:
        note = f"torch.compile: nothing traced, {dynamo}"
    else:
        note = f"torch.compile: {counts(record.graphs, record.cache_misses, record.cache_hits)}"
        if record.traced_from_cache:
            note += f", {dynamo}"
    if record.preflight_graphs:
        note += (
            " (preflight: "
            f"{counts(record.preflight_graphs, record.preflight_cache_misses, record.preflight_cache_hits)})"
        )
    return note


def split_cells(entry: ModelEntry) -> Tuple[str, str]:
    """Triton's load (its warmup included) and the helper's own time; the
    preflight's part is in its own cell. An ensemble's time to READY counts
    its members' warmups, so it has only its load."""
    timings = entry.timings
    if entry.mode != "load" or not timings.total_s:
        return "-", "-"
    if entry.kind == "ensemble":
        return f"{timings.load_s:.2f}", "-"
    if entry.rewarm == REWARM_IN_PLACE:
        # No load: the new samples ran on the serving instances instead.
        return f"in place {timings.in_place_s:.2f}", f"{timings.helper_s:.2f}"
    return f"{timings.load_s:.2f}", f"{timings.helper_s:.2f}"


def format_table(entries: List[ModelEntry]) -> str:
    header = (
        "model", "status", "samples", "runs", "instances", "preflight", "load", "helper", "seconds", "config", "notes"
    )
    rows = [header]
    for entry in entries:
        seconds = entry.seconds_to_ready if entry.seconds_to_ready is not None else entry.seconds_warming
        ensemble = entry.kind == "ensemble"
        rows.append(
            (
                entry.name,
                str(entry.status),
                str(entry.warmup_samples),
                "-" if ensemble else str(entry.count),
                "-" if ensemble else str(entry.instances),
                preflight_cell(entry),
                *split_cells(entry),
                "-" if seconds is None else f"{seconds:.2f}",
                config_cell(entry),
                notes_cell(entry),
            )
        )
    return text_table(rows)


def details(entries: List[ModelEntry]) -> str:
    """Triton's whole error text of each failed model (``--verbose``)."""
    return "\n".join(f"{entry.name}: {entry.detail}" for entry in entries if entry.detail)


@dataclasses.dataclass
class ServerResult:
    """How the warmup of one server ended."""

    url: str
    exit_code: int
    # The helper's report; None when the request did not get one.
    report: Optional[WarmupReport] = None
    seconds: Optional[float] = None
    # Why it failed, in one line; empty on success.
    reason: str = ""


def warm_server(
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    live: TextIO,
    label: str = "",
    positions: Optional[Iterator[int]] = None,
) -> ServerResult:
    """Send the warmup request to ``args.url`` and print its results.

    The live view goes to ``live``, the table and summary to ``out`` and the
    FAILED lines to ``err``.
    """
    url = client_flags.server_url(args)
    headers = client_flags.request_headers(args)
    client = client_flags.create_client(args, timeout_s=args.timeout)

    def failed(code: int, reason: str) -> ServerResult:
        print(f"FAILED: {reason}", file=err, flush=True)
        return ServerResult(url, code, reason=reason)

    if not client_flags.server_is_live(client, headers):
        client.close()
        return failed(client_flags.EXIT_UNREACHABLE, f"no Triton server answers at {url} ({args.protocol})")

    what = args.plan or ("every model in the repository" if args.all else args.models)
    # One write per line: with several -u, the servers' threads print at once
    # and print() writes the text and its newline separately.
    if args.start_report:
        live.write(f"waiting for the warmup at start of '{args.model_name}' at {url} ({args.protocol})\n")
    else:
        live.write(f"warming {what} through '{args.model_name}' at {url} ({args.protocol})\n")
    live.flush()
    watcher = StateWatcher(args, args.watch_models, live, label=label, positions=positions)
    watcher.start()
    started = time.monotonic()
    try:
        loaded, report = _send(client, args, headers, started)
    except InferenceServerException as error:
        watcher.close()
        if args.start_report and WARMING_AT_START in (error.message() or ""):
            return failed(
                client_flags.EXIT_FAILED,
                f"the warmup at start was not done within --timeout {args.timeout:.0f} s: {error.message()}",
            )
        refusal = WarmupRequestError.from_message(error.message())
        # An error about the plan names its line, as the local checks do.
        located = locate_plan_error(args.plan, refusal) if args.plan and refusal else None
        reason = located or (str(refusal) if refusal else error.message())
        return failed(refusal_exit_code(error, refusal), f"{args.model_name} refused the request: {reason}")
    except OSError as error:
        watcher.close()
        return failed(client_flags.EXIT_FAILED, f"the warmup request to {url} broke off: {error}")
    finally:
        client.close()
    elapsed = time.monotonic() - started

    watcher.finish(report.models)
    if report.mode == "requests":
        print(f"warmed with inference requests: {loaded}", file=out)
    else:
        print(f"model loaded: {loaded}", file=out)
    print(format_table(report.models), file=out)
    if args.verbose and details(report.models):
        print(details(report.models), file=out)
    print(f"mode {report.mode}: {report.mode_reason}", file=out)
    if report.limitation:
        print(f"NOTE: {report.limitation}", file=out)
    for entry in report.models:
        if entry.threads:
            print(f"NOTE: {entry.name}: {entry.threads}", file=out)
    # A start report may be read long after the warmup ended: its own span
    # says how long the warmup took, this wait does not.
    total = report.seconds_total if args.start_report and report.seconds_total is not None else elapsed
    print(f"total {total:.2f} s", file=out)
    if report.failed:
        failure = failed(client_flags.EXIT_FAILED, f"Warmup failed for models: {report.failed}")
        return dataclasses.replace(failure, report=report, seconds=elapsed)
    print(f"PASS: Warmup done for models: {loaded}", file=out)
    return ServerResult(url, client_flags.EXIT_OK, report=report, seconds=elapsed)


def _send(client, args: argparse.Namespace, headers, started: float) -> Tuple[List[str], WarmupReport]:
    """The warmup request; with ``--start-report``, asked again while the
    helper is still warming at start, until ``--timeout``."""
    while True:
        remaining = max(args.timeout - (time.monotonic() - started), 1.0)
        try:
            return request_warmup(client, args.protocol, request_arrays(args), args.model_name, headers, remaining)
        except InferenceServerException as error:
            waiting = args.start_report and WARMING_AT_START in (error.message() or "")
            if not waiting or time.monotonic() - started + START_POLL_INTERVAL_S > args.timeout:
                raise
            time.sleep(START_POLL_INTERVAL_S)


def refusal_exit_code(error: InferenceServerException, refusal: Optional[WarmupRequestError]) -> int:
    """2 when the helper refused the request as bad (its INVALID_ARG or
    NOT_FOUND: the same mistake as a bad flag or plan found here), 1 when
    it failed on its own."""
    if refusal is not None:
        return client_flags.EXIT_USAGE
    status = str(error.status() or "")
    # An older helper's refusal without the JSON detail line: HTTP 400 or
    # gRPC INVALID_ARGUMENT / NOT_FOUND.
    if status in ("400", "404") or "INVALID_ARGUMENT" in status or "NOT_FOUND" in status:
        return client_flags.EXIT_USAGE
    return client_flags.EXIT_FAILED


def overall_exit_code(results: List[ServerResult]) -> int:
    """0 when every server is warm; else 1 when a model failed anywhere, 2
    when a server refused the request as bad, 3 when the only failures are
    servers that did not answer."""
    codes = {result.exit_code for result in results} - {client_flags.EXIT_OK}
    for code in (client_flags.EXIT_FAILED, client_flags.EXIT_USAGE, client_flags.EXIT_UNREACHABLE):
        if code in codes:
            return code
    return client_flags.EXIT_OK


def warm_servers(args: argparse.Namespace, status: TextIO) -> List[ServerResult]:
    """Warm every ``-u`` server at once, one thread each.

    Live lines and bars carry the server's URL and go to ``status`` as they
    happen; each server's table and FAILED lines are held back and printed
    together under its URL once every server is done, so they do not
    interleave.
    """
    positions = itertools.count()
    outputs = {url: io.StringIO() for url in args.urls}
    results: Dict[str, ServerResult] = {}

    def warm(url: str) -> None:
        server_args = copy.copy(args)
        server_args.url = url
        output = outputs[url]
        try:
            results[url] = warm_server(server_args, output, output, status, label=url, positions=positions)
        except Exception as error:  # noqa: BLE001 - one server's surprise must not hide the others'
            print(f"FAILED: {type(error).__name__}: {error}", file=output)
            results[url] = ServerResult(url, client_flags.EXIT_FAILED, reason=f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=warm, args=(url,), name=f"warm {url}") for url in args.urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for url in args.urls:
        print(f"\n== {url} ==", file=status)
        print(outputs[url].getvalue().rstrip("\n"), file=status)
    return [results[url] for url in args.urls]


def format_servers(results: List[ServerResult]) -> str:
    """One line per server: its URL, PASS or FAILED, and models and seconds or the reason."""
    width = max(len(result.url) for result in results)
    lines = []
    for result in results:
        if result.exit_code == client_flags.EXIT_OK:
            models = len(result.report.models)
            lines.append(
                f"{result.url.ljust(width)}  PASS    {models} model{'' if models == 1 else 's'} in {result.seconds:.2f} s"
            )
        else:
            lines.append(f"{result.url.ljust(width)}  FAILED  {result.reason}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    # With --json, stdout carries the report alone, so that scripts can parse it.
    status = sys.stderr if args.json else sys.stdout
    if len(args.urls) == 1:
        result = warm_server(args, status, sys.stderr, status)
        if args.json and result.report is not None:
            print(json.dumps(result.report.to_dict(), indent=2))
        return result.exit_code

    started = time.monotonic()
    results = warm_servers(args, status)
    elapsed = time.monotonic() - started
    if args.json:
        servers = [
            {**dataclasses.asdict(result), "report": result.report.to_dict() if result.report else None}
            for result in results
        ]
        print(json.dumps({"servers": servers}, indent=2))
    print(f"\n{format_servers(results)}", file=status)
    failed = [result.url for result in results if result.exit_code != client_flags.EXIT_OK]
    if failed:
        print(f"FAILED: {len(failed)} of {len(results)} servers did not warm: {failed}", file=sys.stderr)
    else:
        print(f"PASS: {len(results)} servers warm in {elapsed:.2f} s", file=status)
    return overall_exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
