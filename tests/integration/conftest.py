"""Fixtures shared by the integration tests; the server driving lives in live_server.py."""

import contextlib
import pathlib
import shutil
from typing import Optional

import pytest

from triton_warmup import example_models as gen_model
from triton_warmup.embedded import EmbeddedTriton
from live_server import PROJECT_REPOSITORY, client_for, running_server, serving


@pytest.fixture(scope="session")
def template_repository(tmp_path_factory) -> pathlib.Path:
    """The project's repository with freshly generated model.pt files,
    without the PyTorch 2 example: its compiles take tens of seconds per load
    on 2 CPUs, so only test_pytorch2.py serves it."""
    repository = tmp_path_factory.mktemp("template") / "model_repository"
    shutil.copytree(
        PROJECT_REPOSITORY,
        repository,
        ignore=shutil.ignore_patterns("model.pt", "__pycache__", ".*.tmp", ".warmup_helper.lock",
                                      ".*.warmup-preflight.json", gen_model.COMPILED_ENCODER),
    )
    gen_model.write_models(repository)
    return repository


@pytest.fixture(scope="module")
def start_server(template_repository, tmp_path_factory):
    """The one way the integration tests get a server for a module:
    ``start_server(name, template=None, shared=None, **options)`` starts a
    real embedded tritonserver and returns it, ready; every server it started
    stops when the module's tests are done.

    Args:
        name: names the server's folder (its log and repository live there).
        template: the repository to copy; default the project's, with models.
        shared: serve this repository folder itself instead of a copy
            (several servers on one volume).
        options: ``EmbeddedTriton`` options (``extra_args``, ``log_verbose``,
            ``model_control_mode``).
    """
    with contextlib.ExitStack() as stack:

        def start(name: str, template: Optional[pathlib.Path] = None, shared: Optional[pathlib.Path] = None,
                  **options) -> EmbeddedTriton:
            workdir = tmp_path_factory.mktemp(name)
            if shared is not None:
                return stack.enter_context(serving(shared, workdir, **options))
            return stack.enter_context(running_server(template or template_repository, workdir, **options))

        yield start


@pytest.fixture
def open_client():
    """Make clients for a test and close them after it: an open HTTP
    connection makes Triton wait its whole exit timeout at shutdown."""
    clients = []

    def make(server, protocol="http"):
        clients.append(client_for(server, protocol))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


# Figures a test measured on the real server and reports without asserting
# them (they vary from run to run); printed at the end of the session.
_MEASURED = []


@pytest.fixture
def measured():
    """``measured(line)`` adds a line to the session's "measured" summary."""
    return _MEASURED.append


def pytest_terminal_summary(terminalreporter):
    if _MEASURED:
        terminalreporter.section("measured on the real server")
        for line in _MEASURED:
            terminalreporter.write_line(line)
