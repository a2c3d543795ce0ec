"""Put the warmup_helper model into a Triton model repository.

The helper's folder (config.pbtxt and 1/model.py) ships inside this package;
its model.py imports ``triton_warmup``, so the package must also be installed
into the Python that the server's Python backend runs (in NVIDIA's image:
``pip install triton-warmup``, or ``pip install .`` from this repository, as
deploy/Dockerfile does).

The copy is written beside the destination and renamed into place, so a
repository never holds half a helper. An existing helper is replaced only with
``--force``; a folder of that name that is not a helper is never replaced.

Exit codes: 0 the helper is in place, 1 it could not be written, 2 bad usage.
"""

import argparse
import importlib.resources
import os
import pathlib
import shutil
import sys
import tempfile
from typing import List, Optional

from triton_warmup import HELPER_MODEL

# What a helper folder holds; only these are copied. A folder whose model.py
# imports this package counts as a helper that --force may replace.
HELPER_FILES = ("config.pbtxt", "1/model.py")


def helper_source() -> pathlib.Path:
    """The folder of the helper shipped in the package."""
    return pathlib.Path(str(importlib.resources.files("triton_warmup.helper_model")))


def _is_helper(folder: pathlib.Path) -> bool:
    model = folder / "1" / "model.py"
    return model.is_file() and "triton_warmup" in model.read_text(errors="replace")


def install_helper(repository: pathlib.Path, force: bool = False) -> pathlib.Path:
    """Copy the helper into ``repository/warmup_helper``; return that folder.

    Raises:
        FileNotFoundError: ``repository`` is not a folder.
        FileExistsError: the folder exists and ``force`` is off, or it is not a helper.
    """
    if not repository.is_dir():
        raise FileNotFoundError(f"{repository} is not a folder")
    name = HELPER_MODEL
    destination = repository / name
    if destination.exists() or destination.is_symlink():
        if not _is_helper(destination):
            raise FileExistsError(f"{destination} exists and is not a warmup helper; move it away first")
        if not force:
            raise FileExistsError(f"{destination} exists; pass --force to replace it with this version")
    source = helper_source()
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.install.", dir=repository))
    try:
        for relative in HELPER_FILES:
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / relative, target)
        os.chmod(staging, 0o755)
        if destination.exists():
            old = destination.with_name(f".{name}.replaced")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(destination, old)
            os.rename(staging, destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1])
    parser.add_argument("repository", type=pathlib.Path, help="The model repository to put the helper in.")
    parser.add_argument("--force", action="store_true", help="Replace a helper already there. Default is off.")
    args = parser.parse_args(argv)
    try:
        folder = install_helper(args.repository, args.force)
    except (OSError, ValueError) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    print(f"PASS: {folder} holds {HELPER_MODEL}; start tritonserver with --model-control-mode=explicit "
          f"--load-model={HELPER_MODEL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
