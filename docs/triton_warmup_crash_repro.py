#!/usr/bin/env python3
"""Reproduce tritonserver's SIGSEGV when a model_warmup sample fails during a load.

The script writes a model repository with two TorchScript models:

* ``anchor``: loaded at start (the load API needs one model on the server);
* ``rejects-its-warmup``: ``Linear(4)``, whose config leaves the input's
  dimension variable and holds one ``model_warmup`` sample of 5 features,
  which ``forward`` rejects. Triton should fail the load and keep serving.

It starts tritonserver in explicit model-control mode, asks it to load
``rejects-its-warmup`` over HTTP ``--loads`` times, and counts how often the
server dies instead of answering with the load error; after a death it starts
the server again. ``--busy`` keeps every core busy with spinning shell loops
meanwhile (the crash is then more frequent).

The server command defaults to this project's embedded Triton
(``python -m triton_warmup.embedded``, run from the project root: the wheel's
tritonserver 2.51.0 with Triton's libtorch backend). Inside NVIDIA's container
pass ``--tritonserver tritonserver``; the script adds the repository, port and
model-control flags either way.

Needs ``torch`` (to write the models) and Python's standard library only.
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

import torch

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
FAILING_MODEL = "rejects-its-warmup"
CRASH_MARK = "Signal (11) received"


class Rejects5Features(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def write_repository(root: pathlib.Path, failure: str) -> pathlib.Path:
    """The two models; with ``failure`` "corrupt-file" the failing model has
    no warmup sample but a model.pt that is not TorchScript, so its instance
    fails in initialization instead."""
    repository = root / "model_repository"
    for name, warmup in (("anchor", ""), (FAILING_MODEL, """
            model_warmup [ {
              name: "five_features" batch_size: 1 count: 1
              inputs { key: "x" value { data_type: TYPE_FP32 dims: [ 5 ] zero_data: true } }
            } ]""")):
        (repository / name / "1").mkdir(parents=True)
        torch.jit.script(Rejects5Features()).save(str(repository / name / "1" / "model.pt"))
        if name == FAILING_MODEL and failure == "corrupt-file":
            (repository / name / "1" / "model.pt").write_bytes(b"not a TorchScript archive")
            warmup = ""
        (repository / name / "config.pbtxt").write_text(textwrap.dedent(f"""\
            name: "{name}"
            platform: "pytorch_libtorch"
            max_batch_size: 1
            input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }} ]
            output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }} ]
            instance_group [ {{ count: 1 kind: KIND_CPU }} ]""") + textwrap.dedent(warmup) + "\n")
    return repository


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, command, repository: pathlib.Path, log_path: pathlib.Path):
        self.port = free_port()
        self.argv = list(command) + [
            f"--model-repository={repository}",
            "--model-control-mode=explicit",
            "--load-model=anchor",
            f"--http-port={self.port}",
            f"--grpc-port={free_port()}",
            f"--metrics-port={free_port()}",
            "--exit-timeout-secs=5",
        ]
        self.log_path = log_path
        self.process = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited at start; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/health/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"tritonserver not ready after 120 s; see {self.log_path}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 2)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        # A crashed server's Python stubs (none here) would outlive it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 9)

    def load_failing_model(self) -> str:
        """'error' when Triton answered with the load's error ("failed to run warmup
        sample ...", "failed to load ..."), else what happened."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v2/repository/models/{FAILING_MODEL}/load", data=b"", method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=120):
                return "loaded"
        except urllib.error.HTTPError as error:
            message = json.loads(error.read() or b"{}").get("error", "")
            return "error" if "failed to" in message else f"other error: {message}"
        except OSError as error:
            return f"connection lost: {error}"


@contextlib.contextmanager
def busy_cores(enabled: bool):
    loops = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range((os.cpu_count() or 1) + 1)] if enabled else []
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=30, help="Failing loads to send. Default is 30.")
    parser.add_argument("--busy", action="store_true", help="Keep every core busy meanwhile.")
    parser.add_argument("--failure", choices=("warmup", "corrupt-file"), default="warmup",
                        help="What fails: the warmup sample (default), or the instance's initialization "
                             "(a model.pt that is not TorchScript, no warmup sample).")
    parser.add_argument("--tritonserver", default=f"{shlex.quote(sys.executable)} -m triton_warmup.embedded",
                        help="Command that starts tritonserver. Default: this project's embedded Triton.")
    args = parser.parse_args()

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="triton-warmup-crash-"))
    server = Server(shlex.split(args.tritonserver), write_repository(workdir, args.failure),
                    workdir / "tritonserver.log")
    crashes, answered, stack = 0, 0, None
    server.start()
    try:
        with busy_cores(args.busy):
            for attempt in range(1, args.loads + 1):
                outcome = server.load_failing_model()
                try:
                    code = server.process.wait(2)
                except subprocess.TimeoutExpired:
                    code = None
                if code is None:
                    answered += outcome == "error"
                    print(f"load {attempt}: {outcome}", flush=True)
                    continue
                crashes += 1
                log = server.log_path.read_text(errors="replace")
                if stack is None and CRASH_MARK in log:
                    stack = log[log.rindex(CRASH_MARK):].strip()
                print(f"load {attempt}: tritonserver died (exit {code}); restarting", flush=True)
                server.start()
    finally:
        server.stop()
    print(f"\n{args.loads} failing loads ({args.failure}){' with every core busy' if args.busy else ''}: "
          f"tritonserver died {crashes} times; {answered} loads were answered with the load's error. "
          f"Log: {server.log_path}")
    if stack:
        print(f"\nFirst crash, as tritonserver printed it:\n{stack}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
