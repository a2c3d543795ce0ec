#!/usr/bin/env python3
"""Print the state of every model in a Triton server's repository.

Reads the repository index (the Model Repository extension), so models that
were never loaded are listed too, as UNAVAILABLE.

Exit codes: 0 the index was read, 3 server unreachable.
"""

import argparse
import json
import sys
from typing import Dict, List, Optional

from tritonclient.utils import InferenceServerException

import client_flags

# Connecting and reading the index is quick; a server this slow is unhealthy.
DEFAULT_TIMEOUT_S = 30.0


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


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1]
    )
    client_flags.add_common_flags(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="Print the full repository index as JSON, with each model's reason "
        "when it is not READY. Default is off.",
    )
    args = parser.parse_args(argv)

    headers = client_flags.request_headers(args)
    client = client_flags.create_client(args, timeout_s=DEFAULT_TIMEOUT_S)
    url = client_flags.server_url(args)
    try:
        index = client_flags.repository_index(client, args.protocol, headers)
    except (OSError, InferenceServerException) as error:
        if client_flags.is_unreachable(error):
            print(f"FAILED: no Triton server answers at {url} ({args.protocol}): {error}", file=sys.stderr)
            return client_flags.EXIT_UNREACHABLE
        print(f"FAILED: {url} refused the repository index: {error}", file=sys.stderr)
        return client_flags.EXIT_FAILED
    finally:
        client.close()
    if args.json:
        print(json.dumps(index, indent=2))
    else:
        print(model_states(index))
    return client_flags.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
