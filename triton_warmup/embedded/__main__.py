"""``python -m triton_warmup.embedded [--workdir DIR] [tritonserver flags]``: become tritonserver.

Scripts written for NVIDIA's Triton image call ``tritonserver`` from PATH
(deploy/entrypoint.sh does). On this machine that command is this module:
it assembles the backend folder in ``--workdir``, sets the environment the
Python stubs need and then *execs* the wheel's binary with the flags given,
so the calling script's signals and ``wait`` reach tritonserver itself.
"""

import argparse
import os
import pathlib
import sys
import tempfile

from triton_warmup import libtorch_backend
from triton_warmup.embedded.server import (
    TritonInstall,
    TritonNotFoundError,
    assemble_backend_directory,
    server_environment,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m triton_warmup.embedded",
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s [--workdir DIR] [--no-pytorch2-shim] [tritonserver flags]",
    )
    parser.add_argument(
        "--workdir",
        type=pathlib.Path,
        help="Folder for the assembled backends. Default is a new temporary folder.",
    )
    parser.add_argument(
        "--no-pytorch2-shim",
        action="store_true",
        help="Install Triton's PyTorch 2 runtime without this project's shim in front, as NVIDIA's image has "
        "it (docs/pytorch2-locale-issue.md reproduces what then fails).",
    )
    args, server_flags = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        install = TritonInstall.find()
        pytorch_backend = libtorch_backend.build(libtorch_backend.source_dir_from_environment())
    except (TritonNotFoundError, libtorch_backend.BuildError) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="embedded-triton-"))
    backends = assemble_backend_directory(
        workdir / "backends", install, pytorch_backend, pytorch2_shim=not args.no_pytorch2_shim
    )
    argv = [str(install.binary), f"--backend-directory={backends}", *server_flags]
    sys.stdout.flush()
    os.execve(install.binary, argv, server_environment(install))
    return 1  # not reached: execve replaces this process


if __name__ == "__main__":
    sys.exit(main())
