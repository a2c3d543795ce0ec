#!/usr/bin/env python3
"""Print the state of every model in a Triton server's repository, or wait
until named models are READY (a readiness or startup probe).

Reads the repository index (the Model Repository extension), so models that
were never loaded are listed too, as UNAVAILABLE. ``--wait-ready --plan
FILE`` waits for the models of the plan file the warmup used, so that a probe
and the warmup share one list.

``--metrics`` also prints, per model, what the helper publishes on Triton's
metrics port: the shapes its warmup covers, its last warmup's seconds, and
how many of the observed requests since READY landed on a cold shape
(docs/metrics.md).

Exit codes: 0 the index was read (with --wait-ready: every named model is
READY), 1 a named model failed to load, was refused or is not READY within
--timeout, 2 bad usage or a bad plan file, 3 server unreachable.
"""

import argparse
import json
import pathlib
import sys
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tritonclient.utils import InferenceServerException

from triton_warmup import HELPER_MODEL
from triton_warmup.client import flags as client_flags
from triton_warmup.client import warm
from triton_warmup.client.plan_file import PlanFileError, load_plan
from triton_warmup.client.text_table import text_table
from triton_warmup.helper.metrics import (
    ADAPTED_NOT_KEPT,
    ADAPTED_SAMPLES,
    COLD_REQUESTS,
    COMPILES_AFTER_READY,
    LAST_WARMUP_SECONDS,
    LEARNED_SHAPES,
    REQUESTS_SEEN,
    WARMED_SHAPES,
)
from triton_warmup.report import one_line

DEFAULT_METRICS_PORT = 8002

# Connecting and reading the index is quick; a server this slow is unhealthy.
DEFAULT_TIMEOUT_S = 30.0
_POLL_INTERVAL_S = 0.25


def model_states(index: List[Dict]) -> List[Dict]:
    """``name``, ``version`` and ``state`` of each model, as Triton reports them.

    A model Triton never tried to load has no version or state in the index;
    it is shown with version '' and state UNAVAILABLE, which is what the
    per-model ready endpoint answers for it.
    """
    return [
        {
            "name": entry["name"],
            "version": entry.get("version", ""),
            "state": entry.get("state", "UNAVAILABLE"),
        }
        for entry in index
    ]


def load_failures(index: List[Dict], models: List[str]) -> Dict[str, str]:
    """Named models whose last load failed, with Triton's reason.

    A model that is UNAVAILABLE with a reason other than "unloaded" was tried
    and failed; one without a state was never tried and may still come.
    """
    failures = {}
    for entry in index:
        reason = entry.get("reason", "")
        if entry["name"] in models and entry.get("state") == "UNAVAILABLE" and reason and reason != "unloaded":
            failures[entry["name"]] = reason
    return failures


def waited_models(index: List[Dict], args: argparse.Namespace) -> List[str]:
    """The models ``--wait-ready`` waits for: those named, then, for a plan
    that warms all models, every other model of the index but the helper and
    hidden folders (as the helper's ``--all`` leaves them out; the helper's
    preflight loads its scratch copies from such folders)."""
    names = list(args.wait_ready)
    if args.wait_all:
        names += [
            entry["name"]
            for entry in index
            if entry["name"] not in names + [args.model_name] and not entry["name"].startswith(".")
        ]
    return names


def start_failures(client, args, headers, models: List[str]) -> Optional[Dict[str, str]]:
    """Models among ``models`` that the helper's warmup at start reported as
    not warmed, with why: it never loaded them, so Triton's index holds no
    reason for them. ``None`` while that warmup runs; none at all when the
    helper warms nothing at start (then only the index can tell)."""
    try:
        _, report = warm.request_warmup(client, args.protocol, {warm.START_REPORT: np.array([True])},
                                        args.model_name, headers, timeout_s=min(args.timeout, DEFAULT_TIMEOUT_S))
    except InferenceServerException as error:
        # Still warming: ask again. No warmup at start (or an older helper): nothing to learn, ever.
        return None if warm.WARMING_AT_START in (error.message() or "") else {}
    except OSError:
        return None
    return {entry.name: entry.error or "not warmed" for entry in report.models if not entry.ready and entry.name in models}


def wait_ready(client, args, headers) -> tuple:
    """Poll the index until every ``--wait-ready`` model is READY.

    A model the index shows as never loaded may be one the helper's warmup
    at start gave up on (a failed preflight): its report says so, and the
    probe fails at once instead of at ``--timeout``.

    Returns the exit code and the last index read (``None`` if none was).
    """
    url = client_flags.server_url(args)
    deadline = time.monotonic() + args.timeout
    index, last_error = None, None
    waited = list(args.wait_ready)
    # The start warmup's failures, once its report is there: it does not change.
    started: Optional[Dict[str, str]] = None
    while True:
        try:
            index = client_flags.repository_index(client, args.protocol, headers)
            last_error = None
        except (OSError, InferenceServerException) as error:
            if not client_flags.is_unreachable(error):
                print(f"FAILED: {url} refused the repository index: {error}", file=sys.stderr)
                return client_flags.EXIT_FAILED, None
            last_error = error
        if index is not None and last_error is None:
            waited = waited_models(index, args)
            states = {entry["name"]: entry.get("state", "UNAVAILABLE") for entry in index}
            missing = [name for name in waited if name not in states]
            if missing:
                print(f"FAILED: no model {missing} in the repository of {url}", file=sys.stderr)
                return client_flags.EXIT_FAILED, index
            failures = load_failures(index, waited)
            never_loaded = [name for name in waited if name not in failures and "state" not in _entry(index, name)]
            if never_loaded and not failures:
                if started is None:
                    started = start_failures(client, args, headers, waited)
                failures = {name: f"the warmup at start: {reason}"
                            for name, reason in (started or {}).items() if name in never_loaded}
            if failures:
                for name, reason in failures.items():
                    print(f"FAILED: {name} did not load: {one_line(reason)}", file=sys.stderr)
                    if args.verbose and one_line(reason) != reason.strip():
                        print(reason, file=sys.stderr)
                return client_flags.EXIT_FAILED, index
            if all(states[name] == "READY" for name in waited):
                print(f"READY: {waited}")
                return client_flags.EXIT_OK, index
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL_S)
    if index is None:
        print(f"FAILED: no Triton server answered at {url} ({args.protocol}) within "
              f"{args.timeout:g} s (a server busy loading can also keep its index from "
              f"answering): {last_error}", file=sys.stderr)
        return client_flags.EXIT_UNREACHABLE, None
    states = {entry["name"]: entry.get("state", "UNAVAILABLE") for entry in index}
    waiting = {name: states.get(name) for name in waited if states.get(name) != "READY"}
    print(f"FAILED: not READY within {args.timeout:g} s: {waiting}", file=sys.stderr)
    return client_flags.EXIT_FAILED, index


def _entry(index: List[Dict], name: str) -> Dict:
    return next((entry for entry in index if entry["name"] == name), {})


def readable_index(index: List[Dict]) -> List[Dict]:
    """The index with each ``reason`` in one line (``report.one_line``);
    Triton's whole text, a C++ stack for a corrupt model file, goes to
    ``detail``."""
    readable = []
    for entry in index:
        entry = dict(entry)
        reason = entry.get("reason")
        if reason and one_line(reason) != reason.strip():
            entry["reason"], entry["detail"] = one_line(reason), reason
        readable.append(entry)
    return readable


def warmth(text: str) -> Dict[tuple, Dict[str, float]]:
    """The helper's figures in a metrics page (Prometheus text), per (model, version)."""
    figures: Dict[tuple, Dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("triton_warmup_") and "model" in sample.labels:
                key = (sample.labels["model"], sample.labels.get("version", ""))
                figures.setdefault(key, {})[sample.name] = sample.value
    return figures


def format_warmth(figures: Dict[tuple, Dict[str, float]]) -> str:
    """One line per model and version: warmed shapes, last warmup, the
    observed requests and the cold share of them, compiles after READY, and
    the shapes learned from traffic (of the warmed ones; learned by this
    server; of those, warmed in place only)."""
    def number(values, name, pattern="{:.0f}"):
        return pattern.format(values[name]) if name in values else "-"

    rows = [["model", "version", "warmed shapes", "last warmup s", "requests seen", "cold", "cold share",
             "compiles after READY", "learned", "learned here", "not kept"]]
    for (model, version), values in sorted(figures.items()):
        seen, cold = values.get(REQUESTS_SEEN), values.get(COLD_REQUESTS)
        share = f"{cold / seen:.1%}" if seen else "-"
        rows.append([model, version, number(values, WARMED_SHAPES), number(values, LAST_WARMUP_SECONDS, "{:.2f}"),
                     number(values, REQUESTS_SEEN), number(values, COLD_REQUESTS), share,
                     number(values, COMPILES_AFTER_READY), number(values, LEARNED_SHAPES),
                     number(values, ADAPTED_SAMPLES), number(values, ADAPTED_NOT_KEPT)])
    return text_table(rows)


def metrics_url(args: argparse.Namespace) -> str:
    """``--metrics-url``, or the host of ``-u`` on Triton's default metrics port."""
    if args.metrics_url:
        return args.metrics_url
    host = client_flags.server_url(args).rsplit(":", 1)[0]
    return f"{host}:{DEFAULT_METRICS_PORT}"


def read_warmth(url: str) -> Dict[tuple, Dict[str, float]]:
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=10) as response:
        return warmth(response.read().decode("utf-8", "replace"))


# The helper publishes a model's warmed shapes within two cycles (1 s each)
# of its READY; --metrics waits that long for a model just loaded.
METRICS_SETTLE_S = 3.0


def _watched_models(client, args: argparse.Namespace, index: List[Dict], headers) -> List[str]:
    """The READY models whose warmed shapes the helper publishes: all but
    ensembles (counted at their members) and the helper itself."""
    helper = getattr(args, "model_name", None) or HELPER_MODEL
    as_json = {"as_json": True} if args.protocol == "grpc" else {}
    names = []
    for entry in index:
        if entry.get("state") != "READY" or entry["name"] == helper:
            continue
        try:
            config = client.get_model_config(entry["name"], headers=headers, **as_json)
        except InferenceServerException:
            continue
        config = config.get("config", config) if isinstance(config, dict) else {}
        if config.get("platform") != "ensemble":
            names.append(entry["name"])
    return names


def _settled_warmth(url: str, watched: List[str]) -> Dict[tuple, Dict[str, float]]:
    """The helper's figures, once each of ``watched`` has its warmed shapes
    (or after ``METRICS_SETTLE_S``); at once where the page has none."""
    deadline = time.monotonic() + METRICS_SETTLE_S
    while True:
        figures = read_warmth(url)
        published = {model for (model, _), values in figures.items() if WARMED_SHAPES in values}
        if not figures or set(watched) <= published or time.monotonic() >= deadline:
            return figures
        time.sleep(_POLL_INTERVAL_S)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1]
    )
    client_flags.add_common_flags(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="Print the full repository index as JSON, with each model's reason "
        "when it is not READY (one line; Triton's whole text in detail). Default is off.",
    )
    parser.add_argument(
        "--wait-ready",
        nargs="*",
        metavar="MODEL",
        help="Wait until these models (and those of --plan) are READY, then exit 0; exit 1 "
        "if one fails to load or --timeout passes first. For Kubernetes readiness and "
        "startup probes.",
    )
    parser.add_argument(
        "--plan",
        type=pathlib.Path,
        help="With --wait-ready: also wait for the models of this warmup plan file; for a "
        "plan with all_models, for every model of the repository but the helper.",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="With --wait-ready: wait for every model of the repository but the helper (the "
        "probe for a helper whose warm_on_start is 'all'). Default is off.",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="Also print the helper's figures from Triton's metrics port per model: warmed shapes, "
        "last warmup, requests seen since READY and the cold share (docs/metrics.md). Default is off.",
    )
    parser.add_argument(
        "--metrics-url",
        help=f"host:port of Triton's metrics endpoint. Default is -u's host, port {DEFAULT_METRICS_PORT}.",
    )
    client_flags.add_helper_flag(parser)
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"Seconds --wait-ready waits. Default is {DEFAULT_TIMEOUT_S:g}.",
    )
    args = parser.parse_args(argv)
    args.wait_all = args.all
    if args.all and args.wait_ready is None:
        parser.error("--all goes with --wait-ready")
    if args.plan is not None:
        if args.wait_ready is None:
            parser.error("--plan goes with --wait-ready")
        try:
            _, plan = load_plan(args.plan, args.model_name)
        except PlanFileError as error:
            client_flags.usage_error(parser, str(error))
        args.wait_ready += [name for name in plan.models if name not in args.wait_ready]
        args.wait_all = args.wait_all or plan.all_models
    elif args.wait_ready == [] and not args.all:
        parser.error("--wait-ready needs model names, --plan or --all")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)

    headers = client_flags.request_headers(args)
    # A probe's --timeout bounds each call too: Triton's index call can wait
    # while a model loads, and a probe must answer within its own period.
    timeout_s = min(args.timeout, DEFAULT_TIMEOUT_S) if args.wait_ready is not None else DEFAULT_TIMEOUT_S
    client = client_flags.create_client(args, timeout_s=max(timeout_s, 1.0))
    url = client_flags.server_url(args)
    try:
        if args.wait_ready is not None:
            code, index = wait_ready(client, args, headers)
            if args.json and index is not None:
                print(json.dumps(readable_index(index), indent=2))
            return code
        index = client_flags.repository_index(client, args.protocol, headers)
        watched = _watched_models(client, args, index, headers) if args.metrics else []
    except (OSError, InferenceServerException) as error:
        if client_flags.is_unreachable(error):
            print(f"FAILED: no Triton server answers at {url} ({args.protocol}): {error}", file=sys.stderr)
            return client_flags.EXIT_UNREACHABLE
        print(f"FAILED: {url} refused the repository index: {error}", file=sys.stderr)
        return client_flags.EXIT_FAILED
    finally:
        client.close()
    if args.json:
        print(json.dumps(readable_index(index), indent=2))
    else:
        print(model_states(index))
    if args.metrics:
        url = metrics_url(args)
        try:
            figures = _settled_warmth(url, watched)
        except (OSError, urllib.error.URLError) as error:
            print(f"FAILED: no metrics endpoint answers at {url}: {error}", file=sys.stderr)
            return client_flags.EXIT_FAILED
        if not figures:
            print(f"NOTE: {url} shows no triton_warmup_ metric: is warmup_helper loaded?")
        else:
            print(format_warmth(figures))
    return client_flags.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
