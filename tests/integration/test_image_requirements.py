"""The image's pins resolve on PyPI for NVIDIA's image (metadata only, no
install). It needs the package index, so it lives with the tests that need
more than this process; the unit tests touch no network."""

import json
import pathlib
import subprocess
import sys

import pytest

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = PROJECT_ROOT / "deploy"
# NVIDIA's Triton 24.10 image: Ubuntu 22.04 (glibc 2.35) with Python 3.10.
IMAGE_PYTHON = "3.10"
IMAGE_GLIBC_PLATFORMS = ["manylinux_2_35_x86_64", "manylinux_2_28_x86_64", "manylinux2014_x86_64"]
# Resolving against PyPI (metadata only) takes a few seconds.
PIP_TIMEOUT_S = 180


@pytest.mark.timeout(PIP_TIMEOUT_S)
def test_deploy_requirements_resolve_for_the_image_python(tmp_path):
    """pip resolves the pins as binary wheels for the image's Python (PyPI metadata, no install)."""
    platforms = [flag for platform in IMAGE_GLIBC_PLATFORMS for flag in ("--platform", platform)]
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
         "--only-binary=:all:", "--python-version", IMAGE_PYTHON, "--implementation", "cp", *platforms,
         "--target", str(tmp_path / "target"), "--report", str(report), "-r", str(DEPLOY / "requirements.txt")],
        capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"tritonclient", "numpy", "grpcio", "protobuf", "pyyaml", "tqdm"} <= resolved
