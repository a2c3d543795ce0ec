"""Put the warmup_helper model into a Triton model repository.

The helper's folder (config.pbtxt and 1/model.py) ships inside this package;
its model.py imports ``triton_warmup``, so the package must also be installed
into the Python that the server's Python backend runs (in NVIDIA's image:
``pip install triton-warmup``, or ``pip install .`` from this repository, as
deploy/Dockerfile does).

The copy is written beside the destination and renamed into place, so a
repository never holds half a helper. An existing helper is replaced only with
``--force``; a folder of that name that is not a helper is never replaced.
``--warm-on-start all`` or ``--warm-on-start PLAN`` makes the server warm at
start with nothing but its command line (docs/warm-on-start.md): the helper's
config gets the ``warm_on_start`` parameter, and a plan file is checked and
copied into the helper's folder.

Exit codes: 0 the helper is in place, 1 it could not be written, 2 bad usage.
"""

import argparse
import importlib.resources
import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import List, Optional

from triton_warmup import HELPER_MODEL

# The helper's parameter and its value that warms every model (as in
# helper.start_warmup, which this module imports only to check a plan: the
# plain copy of the helper runs with no dependency installed).
WARM_ON_START = "warm_on_start"
WARM_ALL = "all"

# What a helper folder holds; only these are copied. A folder whose model.py
# imports this package counts as a helper that --force may replace.
HELPER_FILES = ("config.pbtxt", "1/model.py")


def helper_source() -> pathlib.Path:
    """The folder of the helper shipped in the package."""
    return pathlib.Path(str(importlib.resources.files("triton_warmup.helper_model")))


def _is_helper(folder: pathlib.Path) -> bool:
    model = folder / "1" / "model.py"
    return model.is_file() and "triton_warmup" in model.read_text(errors="replace")


def install_helper(repository: pathlib.Path, force: bool = False, warm_on_start: Optional[str] = None) -> pathlib.Path:
    """Copy the helper into ``repository/warmup_helper``; return that folder.

    ``warm_on_start`` (``all`` or a plan file) is set in the copy before it
    is renamed into place (``set_warm_on_start``), so the repository holds
    the old helper or the whole new one.

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
        if warm_on_start is not None:
            set_warm_on_start(staging, warm_on_start)
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


def set_parameters(helper: pathlib.Path, values: dict, why: str) -> None:
    """Set config parameters of the helper in folder ``helper``, atomically.
    The config is written back through protobuf's text format, which keeps
    no comments: a header says who wrote it (``why``) and where the
    commented original is."""
    from google.protobuf import text_format  # noqa: PLC0415 - see WARM_ON_START
    from tritonclient.grpc import model_config_pb2  # noqa: PLC0415

    from triton_warmup.helper.repository_guard import write_atomically  # noqa: PLC0415

    config_path = helper / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    for key, value in values.items():
        config.parameters[key].string_value = value
    header = (
        f"# warmup_helper, written by {why}.\n"
        "# Every field is explained in the package's copy (triton_warmup/helper_model/config.pbtxt)\n"
        "# and in docs/request.md.\n"
    )
    write_atomically(config_path, (header + text_format.MessageToString(config)).encode("utf-8"))


def set_warm_on_start(helper: pathlib.Path, value: str) -> str:
    """Set the ``warm_on_start`` parameter of the helper in folder ``helper``.

    ``value`` is ``all``, or a plan file anywhere: it is checked, then
    copied into the helper's folder, and the parameter names the copy
    (``set_parameters``).

    Returns the parameter's value.

    Raises:
        helper.plan_file.PlanFileError: the plan file is bad (naming its line).
        OSError: a file could not be read or written.
    """
    if value != WARM_ALL:
        from triton_warmup.helper.plan_file import load_plan  # noqa: PLC0415 - see WARM_ON_START
        from triton_warmup.helper.repository_guard import write_atomically  # noqa: PLC0415

        plan = pathlib.Path(value)
        load_plan(plan)
        write_atomically(helper / plan.name, plan.read_bytes())
        value = plan.name
    set_parameters(helper, {WARM_ON_START: value}, f"--warm-on-start {json.dumps(value)}")
    return value


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1])
    parser.add_argument("repository", type=pathlib.Path, help="The model repository to put the helper in.")
    parser.add_argument("--force", action="store_true", help="Replace a helper already there. Default is off.")
    parser.add_argument(
        "--warm-on-start",
        metavar="all|PLAN",
        help="Warm at server start with no client: 'all' (every model, group sizes 1..4) or a plan "
        "file, checked and copied into the helper's folder (--force drops an earlier one: give it "
        "again). Default is no warmup at start.",
    )
    args = parser.parse_args(argv)
    if args.warm_on_start is not None and args.warm_on_start != WARM_ALL:
        from triton_warmup.helper.plan_file import load_plan  # noqa: PLC0415 - see WARM_ON_START

        try:
            load_plan(pathlib.Path(args.warm_on_start))
        except ValueError as error:
            print(f"FAILED: {error}", file=sys.stderr)
            return 2
    try:
        folder = install_helper(args.repository, args.force, args.warm_on_start)
    except (OSError, ValueError) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    if args.warm_on_start is None:
        when = ""
    elif args.warm_on_start == WARM_ALL:
        when = "; it warms every model at start"
    else:
        when = f"; it warms the plan {pathlib.Path(args.warm_on_start).name} at start"
    print(f"PASS: {folder} holds {HELPER_MODEL}{when}; start tritonserver with --model-control-mode=explicit "
          f"--load-model={HELPER_MODEL}{_auto_complete_hint(folder.parent)}")
    return 0


def _auto_complete_hint(repository: pathlib.Path) -> str:
    """The flag that skips Triton's auto-complete, where no model of
    ``repository`` needs it: the helper is a Python model, which then loads
    a second sooner, and on a restart every model waits for it
    (triton_warmup/auto_complete.py)."""
    try:
        from triton_warmup.client.auto_complete_flag import repository_setting  # noqa: PLC0415
    except ImportError:
        # The plain copy needs no dependency; reading the configs does.
        return ""
    flags = repository_setting(repository).flags
    return f" {' '.join(flags)} (no model here needs Triton's auto-complete)" if flags else ""



if __name__ == "__main__":
    sys.exit(main())
