#!/usr/bin/env python3
"""Warm models up on a Triton server with ONE request to warmup_helper.

The helper writes a model_warmup sample for every group size x batch size into
each model's config.pbtxt and loads the model; Triton runs the samples on every
instance before it marks the model READY. This script sends that request,
shows the models' states while it runs, and prints a table of the results.

Exit codes: 0 every model warmed, 1 a model or the request failed, 2 bad
usage, 3 server unreachable.
"""

import argparse
import json
import sys
import threading
import time
from typing import Dict, List, Optional

import numpy as np
from tqdm import tqdm
from tritonclient.utils import InferenceServerException

import client_flags

DEFAULT_MODELS = ["model-v1", "model-v2", "model-v3"]
DEFAULT_GROUP_SIZE_MIN = 1
DEFAULT_GROUP_SIZE_MAX = 4
# Several models, each loading its instances and running every sample count
# times: minutes on a small CPU machine, so the default is generous.
DEFAULT_TIMEOUT_S = 900.0
_POLL_INTERVAL_S = 0.5


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[-1],
    )
    client_flags.add_common_flags(parser)
    parser.add_argument(
        "-m",
        "--model-name",
        default="warmup_helper",
        help="Name of the helper model. Default is warmup_helper.",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=DEFAULT_MODELS,
        help=f"Models to warm up. Default is {' '.join(DEFAULT_MODELS)}.",
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
        default=DEFAULT_GROUP_SIZE_MIN,
        help=f"Smallest group size to warm. Default is {DEFAULT_GROUP_SIZE_MIN}.",
    )
    parser.add_argument(
        "--group-size-max",
        type=int,
        default=DEFAULT_GROUP_SIZE_MAX,
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
    if args.feature_dims is not None and len(args.feature_dims) != len(args.models):
        parser.error(
            f"--feature-dims has {len(args.feature_dims)} values for {len(args.models)} models"
        )
    return args


def build_inputs(args: argparse.Namespace) -> list:
    module = client_flags.client_module(args.protocol)
    tensors = [
        ("MODELS", np.array([name.encode("utf-8") for name in args.models], dtype=np.object_), "BYTES"),
        ("GROUP_SIZE_MIN", np.array([args.group_size_min], dtype=np.int64), "INT64"),
        ("GROUP_SIZE_MAX", np.array([args.group_size_max], dtype=np.int64), "INT64"),
    ]
    if args.feature_dims is not None:
        tensors.append(("FEATURE_DIMS", np.array(args.feature_dims, dtype=np.int64), "INT64"))
    if args.batch_sizes is not None:
        tensors.append(("BATCH_SIZES", np.array(args.batch_sizes, dtype=np.int64), "INT64"))
    inputs = []
    for name, array, datatype in tensors:
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


class StateWatcher(threading.Thread):
    """Polls the repository index while the blocking warmup request runs.

    On a terminal it keeps one live line of states and elapsed time; elsewhere
    (CI logs) it prints a plain line whenever a state changes.
    """

    def __init__(self, args: argparse.Namespace, models: List[str], stream):
        super().__init__(daemon=True)
        self.stream = stream
        self.models = models
        self.client = client_flags.create_client(args, timeout_s=10)
        self.protocol = args.protocol
        self.headers = client_flags.request_headers(args)
        self.refusal = None
        self.done = threading.Event()
        self.started = time.monotonic()
        self.bar = tqdm(
            total=len(models), bar_format="{desc} [{elapsed}]", file=stream, disable=None
        )
        self.plain = self.bar.disable

    def states(self) -> Dict[str, str]:
        try:
            index = client_flags.repository_index(self.client, self.protocol, self.headers)
        except InferenceServerException as error:
            if not client_flags.is_unreachable(error) and self.refusal is None:
                # A server that restricts its repository endpoints: the warmup
                # still runs, only the live states are missing.
                self.refusal = error.message()
                print(f"(no live states: the server refused the repository index: "
                      f"{self.refusal}; pass -H KEY=VALUE)", file=self.stream, flush=True)
            return {}
        except OSError:
            return {}
        found = {entry["name"]: entry.get("state", "UNAVAILABLE") for entry in index}
        return {name: found.get(name, "?") for name in self.models}

    def run(self) -> None:
        last = None
        # Poll at once, then every interval until stopped.
        while True:
            states = self.states()
            if states:
                text = ", ".join(f"{name} {state}" for name, state in states.items())
                if self.plain:
                    if text != last:
                        elapsed = time.monotonic() - self.started
                        print(f"[{elapsed:6.1f}s] {text}", file=self.stream, flush=True)
                else:
                    self.bar.set_description_str(text)
                last = text
            if self.done.wait(_POLL_INTERVAL_S):
                return

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)
        self.bar.close()
        self.client.close()


def config_cell(entry: Dict) -> str:
    """What happened to the model's config.pbtxt."""
    if entry.get("fallback"):
        return "not written"
    if entry.get("config_restored"):
        return "restored"
    return "rewritten" if entry.get("config_written", entry["config_changed"]) else "unchanged"


def notes_cell(entry: Dict) -> str:
    """The error, or why the config went to the load API instead of the file."""
    if entry.get("error"):
        return entry["error"]
    if entry.get("fallback"):
        # The reason comes before the first ';' of the helper's explanation.
        return "loaded with the planned config: " + entry["fallback"].split(";")[0]
    return ""


def format_table(entries: List[Dict]) -> str:
    header = ("model", "status", "samples", "runs", "instances", "seconds", "config", "error")
    rows = [header]
    for entry in entries:
        seconds = entry.get("seconds_to_ready")
        rows.append(
            (
                entry["name"],
                entry["status"],
                str(entry["warmup_samples"]),
                str(entry["count"]),
                str(entry["instances"]),
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


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    url = client_flags.server_url(args)
    headers = client_flags.request_headers(args)
    client = client_flags.create_client(args, timeout_s=args.timeout)
    if not client_flags.server_is_live(client, headers):
        print(f"FAILED: no Triton server answers at {url} ({args.protocol})", file=sys.stderr)
        return client_flags.EXIT_UNREACHABLE

    # With --json, stdout carries the report alone, so that scripts can parse it.
    status = sys.stderr if args.json else sys.stdout
    print(f"warming {args.models} through '{args.model_name}' at {url} ({args.protocol})",
          file=status, flush=True)
    watcher = StateWatcher(args, args.models, status)
    watcher.start()
    started = time.monotonic()
    try:
        if args.protocol == "grpc":
            result = client.infer(
                args.model_name, build_inputs(args), headers=headers, client_timeout=args.timeout
            )
        else:
            result = client.infer(args.model_name, build_inputs(args), headers=headers)
    except InferenceServerException as error:
        watcher.stop()
        print(f"FAILED: {args.model_name} refused the request: {error.message()}", file=sys.stderr)
        return client_flags.EXIT_FAILED
    except OSError as error:
        watcher.stop()
        print(f"FAILED: the warmup request to {url} broke off: {error}", file=sys.stderr)
        return client_flags.EXIT_FAILED
    watcher.stop()
    elapsed = time.monotonic() - started

    loaded = [name.decode("utf-8") for name in result.as_numpy("LOADED_MODELS").reshape(-1)]
    report = json.loads(result.as_numpy("REPORT").reshape(-1)[0])
    if args.json:
        print(json.dumps(report, indent=2))
    print(f"model loaded: {loaded}", file=status)
    print(format_table(report["models"]), file=status)
    print(f"total {elapsed:.2f} s", file=status)
    if report["failed"]:
        print(f"FAILED: Warmup failed for models: {report['failed']}", file=sys.stderr)
        return client_flags.EXIT_FAILED
    print(f"PASS: Warmup done for models: {loaded}", file=status)
    return client_flags.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
