"""The flags and client set-up that every script of this project shares.

The flags are the ones Triton's own client examples use: ``-u/--url``,
``-i/--protocol``, ``-v/--verbose``, plus ``-H/--header`` for servers that
restrict their endpoints to clients sending a header. Exit codes are the same
for every script.
"""

import argparse
import re
import sys
import time
from typing import Dict, List, NoReturn, Optional

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from triton_warmup import HELPER_MODEL

DEFAULT_URLS = {"http": "localhost:8000", "grpc": "localhost:8001"}

# One contract for every command: 0 done; 1 a model failed (or a named model
# is not READY); 2 a bad request: bad usage, a bad plan or a value the helper
# refused (its INVALID_ARG or NOT_FOUND), whoever found it; 3 no server
# answered.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # argparse exits with 2 on bad usage too
EXIT_UNREACHABLE = 3

# The request tensor each flag of triton-warmup fills: an error the helper's
# validator names by its input is shown with the flag the user typed.
FLAG_OF_INPUT = {
    "MODELS": "--models",
    "ALL_MODELS": "--all",
    "GROUP_SIZE_MIN": "--group-size-min",
    "GROUP_SIZE_MAX": "--group-size-max",
    "FEATURE_DIMS": "--feature-dims",
    "BATCH_SIZES": "--batch-sizes",
    "MODE": "--mode",
}


def in_flag_terms(error) -> str:
    """A request error from the helper's validator, in the words of
    triton-warmup's flags (``BATCH_SIZES`` -> ``--batch-sizes``)."""
    message = error.message
    for name, flag in FLAG_OF_INPUT.items():
        message = re.sub(rf"\b{name}\b", flag, message)
    return f"{FLAG_OF_INPUT.get(error.field, error.field)}: {message}"


def usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Exit 2 with one line: a bad value or a bad plan needs its reason, not
    the whole usage text that argparse's ``error`` prints first."""
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)

# Triton checks a restricted gRPC protocol's header under this prefix
# (--grpc-restricted-protocol=<protocols>:<key>=<value> expects
# "triton-grpc-protocol-<key>"); over HTTP the key itself is the header.
GRPC_RESTRICTED_HEADER_PREFIX = "triton-grpc-protocol-"


def add_common_flags(parser: argparse.ArgumentParser, several_urls: bool = False) -> None:
    """Add ``-u``, ``-i``, ``-v`` and ``-H`` to ``parser``.

    With ``several_urls``, ``-u`` may be repeated and ``args.url`` is a list
    (``None`` when no ``-u`` was given).
    """
    if several_urls:
        parser.add_argument(
            "-u",
            "--url",
            action="append",
            help="Inference server URL; repeat it to work on several servers at once, one "
            "thread each. Default is localhost:8000 for HTTP and localhost:8001 for gRPC.",
        )
    else:
        parser.add_argument(
            "-u",
            "--url",
            help="Inference server URL. Default is localhost:8000 for HTTP and "
            "localhost:8001 for gRPC.",
        )
    parser.add_argument(
        "-i",
        "--protocol",
        choices=("http", "grpc"),
        default="http",
        type=str.lower,
        help="Protocol used to talk to the server. Default is http.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="Print the client's requests. Default is off."
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Send this header with every request; repeatable. For a server started with "
        "--http-restricted-api / --grpc-restricted-protocol=<apis>:KEY=VALUE, give the same "
        "KEY=VALUE: over gRPC it is sent as triton-grpc-protocol-KEY, as Triton expects.",
    )


def add_helper_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``-m/--model-name``: the helper model's name (a plan may not warm
    it, and a probe does not wait for it)."""
    parser.add_argument(
        "-m",
        "--model-name",
        default=HELPER_MODEL,
        help=f"Name of the warmup helper model. Default is {HELPER_MODEL}.",
    )


def request_headers(args: argparse.Namespace) -> Optional[Dict[str, str]]:
    """The ``-H`` headers for ``args.protocol``, or ``None`` when there are none.

    Raises:
        SystemExit: with the usage exit code for a header without ``=``.
    """
    headers = {}
    for item in args.header:
        key, separator, value = item.partition("=")
        if not separator or not key:
            # SystemExit with a message would exit 1; bad usage is 2.
            print(f"error: --header needs KEY=VALUE, got {item!r}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE)
        if args.protocol == "grpc" and not key.startswith(GRPC_RESTRICTED_HEADER_PREFIX):
            key = GRPC_RESTRICTED_HEADER_PREFIX + key
        headers[key] = value
    return headers or None


def server_url(args: argparse.Namespace) -> str:
    return args.url or DEFAULT_URLS[args.protocol]


def create_client(args: argparse.Namespace, timeout_s: float):
    """An HTTP or gRPC ``InferenceServerClient`` for ``args``.

    For HTTP the timeout goes on the connection: tritonclient's default of
    60 s is too short for a warmup that loads several models. For gRPC it is
    passed per call (``client_timeout``).
    """
    url = server_url(args)
    if args.protocol == "grpc":
        return grpcclient.InferenceServerClient(url=url, verbose=args.verbose)
    return httpclient.InferenceServerClient(
        url=url, verbose=args.verbose, connection_timeout=timeout_s, network_timeout=timeout_s
    )


def client_module(protocol: str):
    return grpcclient if protocol == "grpc" else httpclient


# Triton lists the repository folder and then stats each entry; an entry
# removed in between fails the whole index call with "failed to stat file
# <path>" (docs/safety.md, "Known Triton issues"). A warmup adds and removes
# hidden entries there, so an index read during one is asked again.
_VANISHED_ENTRY = "failed to stat file"
# How long an index read keeps asking while entries keep vanishing. With the
# churn of tests/integration/test_using_it.py, far busier than a warmup's,
# 1000 reads per protocol needed at most 11 extra calls each.
INDEX_RETRY_BUDGET_S = 5.0
_INDEX_RETRY_PAUSE_S = 0.01


def is_vanished_entry(error: Exception) -> bool:
    """Whether ``error`` is Triton's index failing on an entry removed while it listed."""
    return isinstance(error, InferenceServerException) and _VANISHED_ENTRY in (error.message() or "")


def _index_once(client, protocol: str, headers: Optional[Dict[str, str]]) -> List[Dict]:
    if protocol == "grpc":
        index = client.get_model_repository_index(headers=headers, as_json=True)
        return list(index.get("models", []))
    return list(client.get_model_repository_index(headers=headers))


def repository_index(client, protocol: str, headers: Optional[Dict[str, str]] = None) -> List[Dict]:
    """The repository index as a list of dicts, the same for both protocols.

    Each entry has ``name`` and, once Triton has tried to load the model,
    ``version``, ``state`` and (when it is not READY) ``reason``. A call that
    failed only because an entry of the repository folder vanished while
    Triton listed it is made again, for up to ``INDEX_RETRY_BUDGET_S``.
    """
    deadline = time.monotonic() + INDEX_RETRY_BUDGET_S
    while True:
        try:
            return _index_once(client, protocol, headers)
        except InferenceServerException as error:
            if not is_vanished_entry(error) or time.monotonic() > deadline:
                raise
        time.sleep(_INDEX_RETRY_PAUSE_S)


def is_unreachable(error: Exception) -> bool:
    """Whether ``error`` means no server answered (rather than a refusal).

    HTTP raises an ``OSError`` (connection refused) when nothing listens; gRPC
    raises ``InferenceServerException`` with status UNAVAILABLE. Triton also
    answers a gRPC call that lacks a restricted protocol's header with
    UNAVAILABLE ("This protocol is restricted, expecting header ..."): that
    server is there, so it counts as a refusal.
    """
    if isinstance(error, OSError):
        return True
    if not isinstance(error, InferenceServerException):
        return False
    return "UNAVAILABLE" in str(error.status()) and "restricted" not in (error.message() or "")


def server_is_live(client, headers: Optional[Dict[str, str]] = None) -> bool:
    """Whether a server answers at the client's URL."""
    try:
        return bool(client.is_server_live(headers=headers))
    except (OSError, InferenceServerException):
        return False


class ServedConfigError(Exception):
    """The server's configs could not be read; the message says why."""


def served_configs(url: str, names: Optional[List[str]] = None, timeout_s: float = 60.0) -> Dict[str, object]:
    """The config Triton serves for each READY model (or for ``names``) at
    the HTTP ``url``, keyed by name; the helper is left out. For a repository
    in a bucket, the server is where the configs are read from.

    Raises:
        ServedConfigError: no server answers, or a named model is not READY.
    """
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    try:
        with httpclient.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s) as client:
            index = repository_index(client, "http")
            ready = sorted({entry["name"] for entry in index if entry.get("state") == "READY"} - {HELPER_MODEL})
            missing = [name for name in names or [] if name not in ready]
            if missing:
                raise ServedConfigError(
                    f"{', '.join(missing)} not READY on {url}: its served config is what is read (READY: {ready})"
                )
            configs = {}
            for name in names or ready:
                config = model_config_pb2.ModelConfig()
                json_format.ParseDict(client.get_model_config(name), config, ignore_unknown_fields=True)
                configs[name] = config
            return configs
    except (OSError, InferenceServerException) as error:
        raise ServedConfigError(f"reading the served configs from {url} failed: {error}") from None
