"""Fixtures shared by the unit tests."""

import pytest

from repository_fixtures import copy_configs


@pytest.fixture
def repository(tmp_path):
    """A copy of the project's configs in a temporary folder."""
    return copy_configs(tmp_path)
