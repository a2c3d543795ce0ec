"""PyTorch 2 models (``torch.compile``) on Triton's PyTorch backend.

The backend serves them with its PyTorch 2 runtime, a Python file that runs
in the Python backend's stub (``backend: "pytorch"``, ``runtime:
"model.py"``). ``runtime.py`` here is the shim this project puts in front of
Triton's runtime; ``install_runtime`` installs it into a backend folder, the
embedded server's or NVIDIA's image's (``triton-warmup-install-runtime``).
The shim is never imported by this package: it runs only inside
tritonserver, where ``triton_python_backend_utils`` exists.
"""

import argparse
import importlib.resources
import os
import pathlib
import shutil
import sys
from typing import List, Optional

# The file name Triton looks for in backends/pytorch/ (the config's runtime).
RUNTIME_FILE = "model.py"
# Triton's runtime, renamed; the shim loads it from beside itself.
UPSTREAM_RUNTIME_FILE = "triton_pytorch_runtime.py"
# What the shim writes under $TORCHINDUCTOR_CACHE_DIR (see runtime.py).
STATUS_FOLDER = "triton_warmup_loads"
# The config parameter that makes the shim run a scratch copy as Triton's
# warmup will run the real model (see runtime.py); the preflight sets it.
PREFLIGHT_PARAMETER = "TRITON_WARMUP_PREFLIGHT"
# What the shim logs when an instance that will compile starts Inductor's
# checks of the CPU's vector instruction sets early.
ISA_CHECKS_STARTED = "will compile: Inductor's checks of the CPU's vector instruction sets started early"
# A line of the shim's docstring that tells it from Triton's runtime.
SHIM_MARKER = "The PyTorch backend's PyTorch 2 runtime, made to run in Triton's Python stub."
# Where NVIDIA's image keeps the PyTorch backend.
DEFAULT_BACKEND_FOLDER = pathlib.Path("/opt/tritonserver/backends/pytorch")


# Inductor's cache folder, torch's own variable (FX graph and AOTAutograd
# caches, compiled kernels); the shim also keeps its counts and Dynamo's
# packages under it.
CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"


def default_cache_dir() -> pathlib.Path:
    """Where the embedded server keeps Inductor's cache unless told: a user
    cache folder that outlives the server, unlike torch's default in /tmp."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "triton-warmup" / "torch-compile"


def shim_source() -> pathlib.Path:
    return pathlib.Path(str(importlib.resources.files(__package__) / "runtime.py"))


def is_shim(path: pathlib.Path) -> bool:
    try:
        return SHIM_MARKER in path.read_text(errors="replace")
    except OSError:
        return False


def _copy_atomically(source: pathlib.Path, destination: pathlib.Path) -> None:
    # A stub starting meanwhile reads the old file or the new one, never half.
    temporary = destination.with_name(f".{destination.name}.new")
    shutil.copy2(source, temporary)
    os.replace(temporary, destination)


def install_runtime(backend_folder: pathlib.Path, upstream: Optional[pathlib.Path] = None) -> List[str]:
    """Put the shim in front of Triton's PyTorch 2 runtime in ``backend_folder``.

    Triton's runtime is ``upstream`` when given (the embedded server's, built
    from source), else the folder's own ``model.py``, which is moved aside to
    ``triton_pytorch_runtime.py``. Installing again only replaces the shim.
    Returns what was done, a line each.

    Raises:
        FileNotFoundError: the folder holds no runtime of Triton's to put the
            shim in front of.
    """
    model, renamed = backend_folder / RUNTIME_FILE, backend_folder / UPSTREAM_RUNTIME_FILE
    done = []
    if not backend_folder.is_dir():
        raise FileNotFoundError(f"{backend_folder} is not a folder")
    if upstream is not None:
        _copy_atomically(upstream, renamed)
        done.append(f"Triton's runtime {upstream} -> {renamed}")
    elif not renamed.exists():
        if not model.exists() or is_shim(model):
            raise FileNotFoundError(
                f"{backend_folder} holds no PyTorch 2 runtime of Triton's ({RUNTIME_FILE} from pytorch_backend's "
                "src/model.py, shipped since release 23.xx); this is not a PyTorch backend folder"
            )
        _copy_atomically(model, renamed)
        done.append(f"Triton's runtime {model} -> {renamed}")
    _copy_atomically(shim_source(), model)
    done.append(f"the shim -> {model}")
    return done


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Install triton-warmup's PyTorch 2 runtime shim (a UTF-8 locale for torch.compile, and "
        "compile counts for the warmup helper) in front of Triton's runtime in a PyTorch backend folder."
    )
    parser.add_argument(
        "backend_folder",
        nargs="?",
        type=pathlib.Path,
        default=DEFAULT_BACKEND_FOLDER,
        help=f"the PyTorch backend's folder. Default is {DEFAULT_BACKEND_FOLDER} (NVIDIA's image).",
    )
    args = parser.parse_args(argv)
    try:
        for line in install_runtime(args.backend_folder):
            print(line)
    except OSError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    return 0
