"""Fixtures shared by the unit and the integration tests."""

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
