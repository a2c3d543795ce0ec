#!/usr/bin/env python3
"""Reproduce: the PyTorch backend's PyTorch 2 runtime cannot run torch.compile
in the Python backend's isolated stub (UnicodeDecodeError: 'ascii').

The script writes a model repository with two PyTorch 2 models (a Python
class, ``backend: "pytorch"``, ``runtime: "model.py"``), both a
``Linear(8, 4)``:

* ``batching`` (``max_batch_size: 4``): the runtime compiles its gather and
  scatter helpers for it;
* ``unbatched`` (``max_batch_size: 0``).

It starts tritonserver in explicit model-control mode with ``LANG``,
``LC_ALL`` and ``PYTHONUTF8`` set to UTF-8 values, loads each model over
HTTP, sends one request, and prints what Triton answered and the lines of
its log that name the error.

The server command defaults to this project's embedded Triton without the
project's shim (``python -m triton_warmup.embedded --no-pytorch2-shim``, run
from the project root: the wheel's tritonserver 2.51.0 with pytorch_backend
r24.10's runtime). Inside NVIDIA's container pass ``--tritonserver
tritonserver`` (the runtime needs ``pip install torch`` there). ``--shim``
runs the embedded server with the shim, which makes both work.

Python's standard library only.
"""

import argparse
import contextlib
import json
import os
import pathlib
import shlex
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = {"batching": 4, "unbatched": 0}
ERROR_MARKS = ("UnicodeDecodeError", "codec can't decode")

MODEL_SOURCE = textwrap.dedent('''\
    import torch


    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.linear(x)
''')


def write_repository(root: pathlib.Path) -> pathlib.Path:
    for name, max_batch_size in MODELS.items():
        folder = root / name
        (folder / "1").mkdir(parents=True)
        (folder / "1" / "model.py").write_text(MODEL_SOURCE)
        dims = "[ 8 ]" if max_batch_size else "[ 1, 8 ]"
        (folder / "config.pbtxt").write_text(textwrap.dedent(f'''\
            name: "{name}"
            backend: "pytorch"
            runtime: "model.py"
            max_batch_size: {max_batch_size}
            input [ {{ name: "x" data_type: TYPE_FP32 dims: {dims} }} ]
            output [ {{ name: "y" data_type: TYPE_FP32 dims: {dims.replace("8", "4")} }} ]
            instance_group [ {{ count: 1 kind: KIND_CPU }} ]
        '''))
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict, timeout: float = 600) -> str:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return f"{response.status} {response.read().decode()[:200]}"
    except urllib.error.HTTPError as error:
        return f"{error.code} {error.read().decode()[:300]}"


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with {process.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2):
                return
        time.sleep(0.2)
    raise RuntimeError("tritonserver was not ready in time")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tritonserver", help="The server command. Default is this project's embedded Triton.")
    parser.add_argument("--shim", action="store_true", help="The embedded Triton with this project's shim.")
    args = parser.parse_args(argv)
    if args.tritonserver:
        command = shlex.split(args.tritonserver)
    else:
        command = [sys.executable, "-m", "triton_warmup.embedded"] + ([] if args.shim else ["--no-pytorch2-shim"])
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="pytorch2-locale-"))
    repository = write_repository(workdir / "models")
    port = free_port()
    environment = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONUTF8": "1",
                   "TORCHINDUCTOR_CACHE_DIR": str(workdir / "inductor-cache")}
    log_path = workdir / "tritonserver.log"
    argv = command + [f"--model-repository={repository}", "--model-control-mode=explicit",
                      f"--http-port={port}", f"--grpc-port={free_port()}", f"--metrics-port={free_port()}"]
    print("$ " + " ".join(shlex.quote(part) for part in argv))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                   cwd=PROJECT_ROOT, start_new_session=True)
    try:
        wait_ready(port, process)
        base = f"http://127.0.0.1:{port}/v2"
        for name in MODELS:
            print(f"{name}: load -> {post(f'{base}/repository/models/{name}/load', {})}")
            # One row: a batch of 1, or the unbatched model's own [1, 8].
            body = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]}
            print(f"{name}: infer -> {post(f'{base}/models/{name}/infer', body)}")
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        process.kill()
    errors = [line.strip()[:240] for line in log_path.read_text(errors="replace").splitlines()
              if any(mark in line for mark in ERROR_MARKS)]
    print(f"log lines naming the error ({log_path}):")
    print("\n".join(errors[:4]) or "(none)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
