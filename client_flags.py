"""The flags and client set-up that every script of this project shares.

The flags are the ones Triton's own client examples use: ``-u/--url``,
``-i/--protocol``, ``-v/--verbose``. Exit codes are the same for every script.
"""

import argparse
from typing import Dict, List

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

DEFAULT_URLS = {"http": "localhost:8000", "grpc": "localhost:8001"}

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # argparse exits with 2 on bad usage too
EXIT_UNREACHABLE = 3


def add_common_flags(parser: argparse.ArgumentParser) -> None:
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


def repository_index(client, protocol: str) -> List[Dict]:
    """The repository index as a list of dicts, the same for both protocols.

    Each entry has ``name`` and, once Triton has tried to load the model,
    ``version``, ``state`` and (when it is not READY) ``reason``.
    """
    if protocol == "grpc":
        return list(client.get_model_repository_index(as_json=True).get("models", []))
    return list(client.get_model_repository_index())


def server_is_live(client) -> bool:
    """Whether a server answers at the client's URL.

    HTTP raises an ``OSError`` (connection refused) when nothing listens; gRPC
    raises ``InferenceServerException`` with status UNAVAILABLE.
    """
    try:
        return bool(client.is_server_live())
    except (OSError, InferenceServerException):
        return False
