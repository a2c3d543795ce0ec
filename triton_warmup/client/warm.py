#!/usr/bin/env python3
"""Warm models up on a Triton server with ONE request to warmup_helper.

The helper writes a model_warmup sample for every group size x batch size into
each model's config.pbtxt and loads the model; Triton runs the samples on every
instance before it marks the model READY. This script sends that request,
shows each model's state live while it runs, and prints a table of the
results. Models come from --models, --all (every model in the repository) or
a plan file (--plan, YAML or JSON; see plans/example.yaml). Give -u several
times to warm several servers (the replicas of one deployment) at once, one
thread per server; each server's results are printed under its URL.

Exit codes: 0 every model warmed (on every server), 1 a model or a request
failed (on any server), 2 bad usage, 3 a server unreachable (and nothing
else failed).
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
from typing import Dict, Iterator, List, Optional, TextIO

import numpy as np
from tqdm import tqdm
from tritonclient.utils import InferenceServerException

from triton_warmup.client import flags as client_flags
from triton_warmup.client.plan_file import PlanFileError, load_plan, locate_server_error

DEFAULT_MODELS = ["model-v1", "model-v2", "model-v3"]
DEFAULT_GROUP_SIZE_MIN = 1
DEFAULT_GROUP_SIZE_MAX = 4
# Several models, each loading its instances and running every sample count
# times: minutes on a small CPU machine, so the default is generous.
DEFAULT_TIMEOUT_S = 900.0
_POLL_INTERVAL_S = 0.5
_DRAW_INTERVAL_S = 0.2


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
    if args.plan is not None:
        given = [flag for flag, value in shape_flags.items() if value is not None] + (
            ["--all"] if args.all else []
        )
        if given:
            parser.error(f"--plan holds the whole plan; leave out {', '.join(given)}")
        try:
            args.plan_document, plan = load_plan(args.plan, args.model_name)
        except PlanFileError as error:
            parser.error(str(error))
        # Models the live view follows; None: every model of the repository.
        args.watch_models = None if plan.all_models else list(plan.models)
        return args
    if args.all:
        given = [flag for flag in ("--models", "--feature-dims") if shape_flags[flag] is not None]
        if given:
            parser.error(f"--all takes every model of the repository; leave out {', '.join(given)}")
    else:
        args.models = args.models or DEFAULT_MODELS
    if args.group_size_min is None:
        args.group_size_min = DEFAULT_GROUP_SIZE_MIN
    if args.group_size_max is None:
        args.group_size_max = DEFAULT_GROUP_SIZE_MAX
    if args.feature_dims is not None and len(args.feature_dims) != len(args.models):
        parser.error(
            f"--feature-dims has {len(args.feature_dims)} values for {len(args.models)} models"
        )
    args.watch_models = None if args.all else list(args.models)
    return args


def _strings(*values: str) -> np.ndarray:
    return np.array([value.encode("utf-8") for value in values], dtype=np.object_)


def build_inputs(args: argparse.Namespace) -> list:
    module = client_flags.client_module(args.protocol)
    tensors = []
    if args.mode is not None:
        tensors.append(("MODE", _strings(args.mode), "BYTES"))
    if args.plan_document is not None:
        tensors.append(("PLAN", _strings(json.dumps(args.plan_document)), "BYTES"))
        return _tensors(module, tensors)
    if args.all:
        tensors.append(("ALL_MODELS", np.array([True]), "BOOL"))
    else:
        tensors.append(("MODELS", _strings(*args.models), "BYTES"))
    tensors += [
        ("GROUP_SIZE_MIN", np.array([args.group_size_min], dtype=np.int64), "INT64"),
        ("GROUP_SIZE_MAX", np.array([args.group_size_max], dtype=np.int64), "INT64"),
    ]
    if args.feature_dims is not None:
        tensors.append(("FEATURE_DIMS", np.array(args.feature_dims, dtype=np.int64), "INT64"))
    if args.batch_sizes is not None:
        tensors.append(("BATCH_SIZES", np.array(args.batch_sizes, dtype=np.int64), "INT64"))
    return _tensors(module, tensors)


def _tensors(module, tensors: list) -> list:
    inputs = []
    for name, array, datatype in tensors:
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


# Where a model's bar stands in its load: UNAVAILABLE, LOADING, then READY.
_STAGES = {"UNAVAILABLE": 0, "UNLOADING": 0, "LOADING": 1, "READY": 2}


def live_state(entry: Dict, seen_loading: bool) -> str:
    """A model's state for the live view: Triton's, or FAILED for a model
    that went back to UNAVAILABLE with a reason after it was seen LOADING."""
    state = entry.get("state", "UNAVAILABLE")
    if state == "UNAVAILABLE" and seen_loading and entry.get("reason") not in (None, "", "unloaded"):
        return "FAILED"
    return state


class StateWatcher:
    """Shows each model's state while the blocking warmup request runs.

    One thread polls the repository index; another redraws. On a terminal
    each model has a progress bar (UNAVAILABLE, LOADING, READY or FAILED)
    with the seconds since the request went out; elsewhere (CI logs) a plain
    line is printed whenever a model's state changes.

    Triton's index is a coarse view of a warmup: the call often waits while
    Triton loads a model, and during a reload it keeps saying READY because
    the old version serves. So a poll that has waited longer than the
    interval shows the models not yet settled as LOADING, and so does a
    model that was READY before the warmup (unless ``--mode requests``). A
    model settles when it fails, or turns READY after it was not. When the
    request ends, ``finish`` sets every model from the helper's report, which
    is the authority on what happened and when.

    Args:
        models: the models to follow; ``None`` follows every model of the
            index except the helper (``--all``, or a plan with all_models).
        label: put in front of every line and bar (the server's URL when
            several servers are warmed at once).
        positions: where the next bar goes on the terminal; shared by the
            watchers of several servers so that their bars do not overlap.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        models: Optional[List[str]],
        stream,
        label: str = "",
        positions: Optional[Iterator[int]] = None,
    ):
        self.stream = stream
        self.label = f"{label} " if label else ""
        self.positions = positions if positions is not None else itertools.count()
        self.models = models
        self.helper = args.model_name
        self.protocol = args.protocol
        # Its own client: the request's client is busy in the main thread.
        self.client = client_flags.create_client(args, timeout_s=args.timeout)
        self.headers = client_flags.request_headers(args)
        self.refusal = None
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.index_states: Dict[str, str] = {}
        self.poll_since: Optional[float] = None
        self.shown: Dict[str, str] = {}
        self.settled = set()
        # Models READY at the first answer; whether this warmup reloads them
        # (not with --mode requests; with auto, only the report can tell).
        self.ready_before: Optional[set] = None
        self.expect_loads = args.mode != "requests"
        self.bars: Dict[str, tqdm] = {}
        self.seen_loading = set()
        # Bars on a terminal only: CI logs get one plain line per change.
        self.plain = not (hasattr(stream, "isatty") and stream.isatty())
        self.threads = [
            threading.Thread(target=self._poll, daemon=True),
            threading.Thread(target=self._draw, daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _read_index(self) -> Optional[Dict[str, str]]:
        try:
            index = client_flags.repository_index(self.client, self.protocol, self.headers)
        except InferenceServerException as error:
            if not client_flags.is_unreachable(error) and self.refusal is None:
                # A server that restricts its repository endpoints: the warmup
                # still runs, only the live states are missing.
                self.refusal = error.message()
                print(f"({self.label}no live states: the server refused the repository index: "
                      f"{self.refusal}; pass -H KEY=VALUE)", file=self.stream, flush=True)
            return None
        except OSError:
            return None
        entries = {entry["name"]: entry for entry in index}
        names = self.models if self.models is not None else sorted(n for n in entries if n != self.helper)
        states = {}
        for name in names:
            entry = entries.get(name, {"state": "?"})
            if entry.get("state") == "LOADING":
                self.seen_loading.add(name)
            states[name] = live_state(entry, name in self.seen_loading)
        return states

    def _poll(self) -> None:
        while not self.done.is_set():
            with self.lock:
                self.poll_since = time.monotonic()
            states = self._read_index()
            with self.lock:
                self.poll_since = None
                if states is not None:
                    self.index_states = states
                    if self.ready_before is None:
                        self.ready_before = {name for name, state in states.items() if state == "READY"}
            if self.done.wait(_POLL_INTERVAL_S):
                return

    def _current(self) -> Dict[str, str]:
        with self.lock:
            states = dict(self.index_states)
            waiting = self.poll_since is not None and time.monotonic() - self.poll_since > _POLL_INTERVAL_S
        for name, state in states.items():
            if name in self.settled:
                continue
            # While Triton loads, the query may wait: the models this warmup
            # has not settled are loading or next in line. During a reload the
            # index keeps saying READY (the old version serves), so a model
            # that was READY before shows LOADING until the report settles it.
            if waiting or (state == "READY" and name in (self.ready_before or ()) and self.expect_loads):
                states[name] = "LOADING"
        return states

    def _draw(self) -> None:
        while not self.done.wait(_DRAW_INTERVAL_S):
            elapsed = time.monotonic() - self.started
            for name, state in self._current().items():
                self._show(name, state, elapsed)

    def _show(self, name: str, state: str, elapsed: float, final: bool = False) -> None:
        changed = self.shown.get(name) != state
        # FAILED, or READY for a model that was not READY before: this warmup
        # is done with it. The report settles the rest.
        if state == "FAILED" or (state == "READY" and name not in (self.ready_before or ())):
            self.settled.add(name)
        self.shown[name] = state
        if self.plain:
            if changed:
                print(f"[{elapsed:6.1f}s] {self.label}{name} {state}", file=self.stream, flush=True)
            return
        bar = self.bars.get(name)
        if bar is None:
            width = max(len(model) for model in (self.models or [name]))
            bar = tqdm(
                total=2,
                desc=self.label + name.ljust(width),
                # A list postfix is shown as it is (a string would get ", ").
                bar_format="{desc} |{bar:12}| {postfix[0]}",
                postfix=[""],
                file=self.stream,
                position=next(self.positions),
                leave=True,
            )
            self.bars[name] = bar
        if state in _STAGES:
            bar.n = _STAGES[state]
        # The clock keeps running until the report settles the model.
        if changed or final or name not in self.settled:
            bar.postfix[0] = f"{state:<11} {elapsed:6.1f}s"
            bar.refresh()

    def stop(self) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(timeout=1)

    def finish(self, entries: List[Dict]) -> None:
        """Settle every model from the helper's report, then close."""
        self.stop()
        # Plain lines in the order the models settled, so that their times
        # rise; bars in the request's order.
        ended = time.monotonic() - self.started
        # The helper counts from its first load; planning before it takes
        # milliseconds, so the client's clock and the helper's agree closely.
        def settled(entry):
            seconds = entry.get("finished_s")
            return ended if seconds is None else min(seconds, ended)

        if self.plain:
            entries = sorted(entries, key=settled)
        for entry in entries:
            self._show(entry["name"], entry["status"], settled(entry), final=True)
        self.close()

    def close(self) -> None:
        self.stop()
        for bar in self.bars.values():
            bar.close()
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - the poll thread may still hold it
            pass


def config_cell(entry: Dict) -> str:
    """What happened to the model's config.pbtxt."""
    if entry.get("mode") == "requests":
        return "not used"
    if entry.get("fallback"):
        return "not written"
    if entry.get("config_restored"):
        return "restored"
    return "rewritten" if entry.get("config_written", entry["config_changed"]) else "unchanged"


def preflight_cell(entry: Dict) -> str:
    """How many samples the preflight ran, where, and for how long."""
    record = entry.get("preflight")
    if not record:
        return "-"
    if record["error"]:
        return "FAILED"
    where = "scratch" if record["how"] == "scratch copy" else "serving"
    return f"{record['samples_checked']} {where} {record['seconds']:.2f}s"


def notes_cell(entry: Dict) -> str:
    """The error, or why the config went to the load API instead of the file.

    A TorchScript error spans many lines; the table keeps its first line and
    the last two (the exception, and what the helper did about it)."""
    if entry.get("error"):
        lines = [line.strip() for line in entry["error"].splitlines() if line.strip()]
        return " ... ".join([lines[0], " ".join(lines[-2:])]) if len(lines) > 3 else " ".join(lines)
    if entry.get("fallback"):
        # The reason comes before the first ';' of the helper's explanation.
        return "loaded with the planned config: " + entry["fallback"].split(";")[0]
    return ""


def format_table(entries: List[Dict]) -> str:
    header = ("model", "status", "samples", "runs", "instances", "preflight", "seconds", "config", "error")
    rows = [header]
    for entry in entries:
        seconds = entry.get("seconds_to_ready")
        if seconds is None:
            seconds = entry.get("seconds_warming")
        rows.append(
            (
                entry["name"],
                entry["status"],
                str(entry["warmup_samples"]),
                str(entry["count"]),
                str(entry["instances"]),
                preflight_cell(entry),
                "-" if seconds is None else f"{seconds:.2f}",
                config_cell(entry),
                notes_cell(entry),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * width for width in widths) + "  -----")
    return "\n".join(lines)


@dataclasses.dataclass
class ServerResult:
    """How the warmup of one server ended."""

    url: str
    exit_code: int
    # The helper's report; None when the request did not get one.
    report: Optional[Dict] = None
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
    live.write(f"warming {what} through '{args.model_name}' at {url} ({args.protocol})\n")
    live.flush()
    watcher = StateWatcher(args, args.watch_models, live, label=label, positions=positions)
    watcher.start()
    started = time.monotonic()
    try:
        if args.protocol == "grpc":
            response = client.infer(
                args.model_name, build_inputs(args), headers=headers, client_timeout=args.timeout
            )
        else:
            response = client.infer(args.model_name, build_inputs(args), headers=headers)
    except InferenceServerException as error:
        watcher.close()
        message = error.message()
        # An error about the plan names its line, as the local checks do.
        located = locate_server_error(args.plan, message) if args.plan else None
        return failed(client_flags.EXIT_FAILED, f"{args.model_name} refused the request: {located or message}")
    except OSError as error:
        watcher.close()
        return failed(client_flags.EXIT_FAILED, f"the warmup request to {url} broke off: {error}")
    finally:
        client.close()
    elapsed = time.monotonic() - started

    loaded = [name.decode("utf-8") for name in response.as_numpy("LOADED_MODELS").reshape(-1)]
    report = json.loads(response.as_numpy("REPORT").reshape(-1)[0])
    watcher.finish(report["models"])
    if report.get("mode") == "requests":
        print(f"warmed with inference requests: {loaded}", file=out)
    else:
        print(f"model loaded: {loaded}", file=out)
    print(format_table(report["models"]), file=out)
    print(f"mode {report.get('mode')}: {report.get('mode_reason')}", file=out)
    if report.get("limitation"):
        print(f"NOTE: {report['limitation']}", file=out)
    print(f"total {elapsed:.2f} s", file=out)
    if report["failed"]:
        failure = failed(client_flags.EXIT_FAILED, f"Warmup failed for models: {report['failed']}")
        return dataclasses.replace(failure, report=report, seconds=elapsed)
    print(f"PASS: Warmup done for models: {loaded}", file=out)
    return ServerResult(url, client_flags.EXIT_OK, report=report, seconds=elapsed)


def overall_exit_code(results: List[ServerResult]) -> int:
    """0 when every server is warm; 3 when the only failures are servers that
    did not answer; 1 otherwise."""
    codes = {result.exit_code for result in results} - {client_flags.EXIT_OK}
    if not codes:
        return client_flags.EXIT_OK
    if codes == {client_flags.EXIT_UNREACHABLE}:
        return client_flags.EXIT_UNREACHABLE
    return client_flags.EXIT_FAILED


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
            models = len(result.report["models"])
            lines.append(f"{result.url.ljust(width)}  PASS    {models} models in {result.seconds:.2f} s")
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
            print(json.dumps(result.report, indent=2))
        return result.exit_code

    started = time.monotonic()
    results = warm_servers(args, status)
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({"servers": [dataclasses.asdict(result) for result in results]}, indent=2))
    print(f"\n{format_servers(results)}", file=status)
    failed = [result.url for result in results if result.exit_code != client_flags.EXIT_OK]
    if failed:
        print(f"FAILED: {len(failed)} of {len(results)} servers did not warm: {failed}", file=sys.stderr)
    else:
        print(f"PASS: {len(results)} servers warm in {elapsed:.2f} s", file=status)
    return overall_exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
