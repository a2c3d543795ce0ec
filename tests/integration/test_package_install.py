"""``pip install .`` into a fresh venv gives the commands and the helper.

A wheel is built from this checkout as a user's ``pip install`` builds it (it
fetches the build backend from the package index), so what ships is checked,
not the editable install the other tests run. The dependencies are left out
(``--no-deps``): the command that copies the helper needs none of them.
"""

import pathlib
import subprocess
import sys
import tomllib

import pytest

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
# Creating a venv and building a wheel: seconds; the index can be slow.
INSTALL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=INSTALL_TIMEOUT_S)
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "--no-deps", str(PROJECT_ROOT)],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv


@pytest.mark.timeout(INSTALL_TIMEOUT_S * 2)
def test_every_console_script_is_installed(fresh_venv):
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts and all((fresh_venv / "bin" / name).is_file() for name in scripts), sorted(scripts)


@pytest.mark.timeout(INSTALL_TIMEOUT_S * 2)
def test_the_installed_package_puts_the_shipped_helper_into_a_repository(fresh_venv, tmp_path):
    result = subprocess.run(
        [str(fresh_venv / "bin" / "triton-warmup-install-helper"), str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    shipped = PROJECT_ROOT / "model_repository" / "warmup_helper"
    for name in ("config.pbtxt", "1/model.py"):
        assert (tmp_path / "warmup_helper" / name).read_bytes() == (shipped / name).read_bytes(), name
    # It came from the wheel in the fresh venv, not from this checkout.
    located = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-c", "import triton_warmup; print(triton_warmup.__file__)"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert str(fresh_venv) in located.stdout, located.stdout
