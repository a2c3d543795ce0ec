"""Fixtures shared by the integration tests; the server driving lives in live_server.py."""

import pathlib
import shutil

import pytest

from triton_warmup import example_models as gen_model
from live_server import PROJECT_REPOSITORY, client_for


@pytest.fixture(scope="session")
def template_repository(tmp_path_factory) -> pathlib.Path:
    """The project's repository with freshly generated model.pt files."""
    repository = tmp_path_factory.mktemp("template") / "model_repository"
    shutil.copytree(
        PROJECT_REPOSITORY,
        repository,
        ignore=shutil.ignore_patterns("model.pt", "__pycache__", ".*.tmp", ".warmup_helper.lock"),
    )
    gen_model.write_models(repository)
    return repository


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
