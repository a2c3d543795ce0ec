"""Fixtures shared by the integration tests; the server driving lives in live_server.py."""

import pathlib
import shutil

import pytest

import gen_model
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
