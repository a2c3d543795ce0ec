"""``python -m triton_warmup.libtorch_backend``: build (or find in the cache) libtriton_pytorch.so.

Prints the library's path on stdout; progress and errors go to stderr. Exit 0
when the library is there, 1 when the build failed, 2 when a piece is missing.
"""

import argparse
import json
import pathlib
import sys

from triton_warmup.libtorch_backend.source_build import SOURCE_DIR_VARIABLE, BuildError, build, source_dir_from_environment


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source-dir",
        type=pathlib.Path,
        default=None,
        help=f"Folder of the source archives. Default is ${SOURCE_DIR_VARIABLE}, else "
        "../shared/triton-src when it exists, else the upstream repositories.",
    )
    parser.add_argument("--force", action="store_true", help="Build even if the cache has it. Default is off.")
    parser.add_argument("--json", action="store_true", help="Print the build's record as JSON. Default is the path.")
    args = parser.parse_args(argv)
    try:
        built = build(args.source_dir or source_dir_from_environment(), force=args.force)
    except BuildError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1 if "failed" in str(error).split(":")[0] else 2
    print(json.dumps({"library": str(built.library), **built.info}) if args.json else built.library)
    return 0


if __name__ == "__main__":
    sys.exit(main())
