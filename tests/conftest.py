"""Fixtures shared by the unit and the integration tests, and the order files run in."""

import contextlib
import io
import subprocess
from typing import Callable, List

import pytest


def _run_cli(main: Callable[[List[str]], int], *args: str) -> subprocess.CompletedProcess:
    """Run a command's ``main(argv)`` in this process, as its console script
    would; return its exit code and what it printed, as a CompletedProcess."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse's usage errors
            code = exit.code if isinstance(exit.code, int) else 1
    return subprocess.CompletedProcess([main.__module__, *args], code, out.getvalue(), err.getvalue())


def pytest_addoption(parser):
    parser.addoption(
        "--write-docs", action="store_true",
        help="test_docs.py: write what the commands printed into the docs instead of comparing (make docs).",
    )


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(module.main, *argv)``: a command run in-process (the clients'
    own code, as its console script runs it) with its output captured."""
    return _run_cli


# The test files that take longest on 2 CPUs (seconds of one worker, from
# `pytest --durations=0`), started first: make test's workers each take whole
# files (--dist loadfile) in collection order, so a long file collected late
# would run alone at the end while the other worker sits idle.
LONGEST_FILES = (
    "test_pytorch2.py",  # about 170 s
    "test_docs.py",  # about 150 s
    "test_more_benchmarks_smoke.py",  # about 140 s
    "test_benchmark_smoke.py",  # about 80 s
    "test_sigkill.py",  # about 60 s
    "test_object_storage.py",  # about 60 s
    "test_replica_benchmark_smoke.py",  # about 50 s
)


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)

    # sort is stable: every file keeps its tests in their order.
    items.sort(key=rank)
