"""Run deploy/entrypoint.sh on this machine the way the container runs it.

The image's ``tritonserver`` becomes ``python -m triton_warmup.embedded`` and the
image's paths become this checkout's; everything else (the entrypoint, the
plan, the clients it calls, the real tritonserver binary) is what a pod runs.
The container's output is kept with the time each line arrived, so the
tests can check what happened in which order and the benchmark can time a
replica from its start to ready. The Kubernetes manifests are read here too,
so that their probe commands run on this machine as the kubelet runs them.
"""

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from triton_warmup.embedded.server import free_port
from triton_warmup.libtorch_backend.source_build import PROJECT_ROOT

ENTRYPOINT = PROJECT_ROOT / "deploy" / "entrypoint.sh"
KUBERNETES = PROJECT_ROOT / "deploy" / "kubernetes"
# The folder of this interpreter's commands (the package's console scripts),
# which the image has on PATH; and the port the manifests use.
COMMANDS_DIR = pathlib.Path(sys.executable).parent
IMAGE_HTTP_URL = "localhost:8000"
# Triton unloads its models on SIGTERM and the stubs exit; then SIGKILL.
DEFAULT_STOP_TIMEOUT_S = 60.0


def manifests() -> Dict[str, dict]:
    """Every document of deploy/kubernetes/, by kind."""
    documents = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            documents[document["kind"]] = document
    return documents


def deployment_container() -> dict:
    """The one container of the Deployment's pod template."""
    (container,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def configmap_plan() -> Tuple[str, str]:
    """The ConfigMap's plan file: its name (the key) and its text."""
    ((name, text),) = manifests()["ConfigMap"]["data"].items()
    return name, text


def probe_command(probe: str, plan: pathlib.Path, http_port: int) -> List[str]:
    """The Deployment's ``probe`` exec command mapped to this checkout: the
    image's command, plan path and HTTP port become this venv's command,
    ``plan`` and ``http_port``."""
    container = deployment_container()
    image_plan = {item["name"]: item["value"] for item in container["env"]}["WARMUP_PLAN"]
    mapped = []
    for word in container[probe]["exec"]["command"]:
        word = str(COMMANDS_DIR / word) if (COMMANDS_DIR / word).is_file() and not mapped else word
        word = word.replace(image_plan, str(plan))
        mapped.append(word.replace(IMAGE_HTTP_URL, f"localhost:{http_port}"))
    return mapped


class LocalContainer:
    """One run of the entrypoint on ``repository`` with the plan file ``plan``.

    Args:
        server_flags: passed to the entrypoint, which hands them to tritonserver.
        extra_env: more environment (STARTUP_TIMEOUT_S, WARMUP_ARGS, ...).
    """

    def __init__(
        self,
        repository: pathlib.Path,
        plan: pathlib.Path,
        workdir: pathlib.Path,
        server_flags: Sequence[str] = (),
        extra_env: Optional[Dict[str, str]] = None,
    ):
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.repository = pathlib.Path(repository)
        self.log_path = pathlib.Path(workdir) / "container.log"
        self.env = {
            **os.environ,
            "MODEL_REPOSITORY": str(repository),
            "WARMUP_PLAN": str(plan),
            "HTTP_PORT": str(self.http_port),
            "GRPC_PORT": str(self.grpc_port),
            "METRICS_PORT": str(self.metrics_port),
            "TRITONSERVER": f"{sys.executable} -m triton_warmup.embedded --workdir {pathlib.Path(workdir) / 'server'}",
            # The image has the package's commands on PATH; here they are in this venv.
            "PATH": f"{COMMANDS_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
            **(extra_env or {}),
        }
        self.argv = [str(ENTRYPOINT), *server_flags]
        self.process: Optional[subprocess.Popen] = None
        self.started: Optional[float] = None
        # (seconds since start, line) for every line of output.
        self.lines: List[Tuple[float, str]] = []
        self._reader: Optional[threading.Thread] = None

    @property
    def http_url(self) -> str:
        return f"localhost:{self.http_port}"

    def start(self) -> "LocalContainer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        # A session of its own, as a container has: the last resort kill
        # reaches the server and its stubs.
        self.process = subprocess.Popen(
            self.argv, env=self.env, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        with open(self.log_path, "w", encoding="utf-8") as log:
            for raw in self.process.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                self.lines.append((time.monotonic() - self.started, line))
                log.write(line + "\n")
                log.flush()

    def output(self) -> str:
        return "\n".join(line for _, line in list(self.lines))

    def seconds_until(self, text: str) -> Optional[float]:
        """Seconds from the start to the first line that holds ``text``."""
        return next((at for at, line in list(self.lines) if text in line), None)

    def wait_for_line(self, text: str, timeout: float) -> float:
        """Wait for a line that holds ``text``; its time since the start.

        Raises:
            RuntimeError: the entrypoint exited first, or ``timeout`` passed.
        """
        deadline = time.monotonic() + timeout
        while True:
            at = self.seconds_until(text)
            if at is not None:
                return at
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                at = self.seconds_until(text)
                if at is not None:
                    return at
                raise RuntimeError(f"the entrypoint exited ({self.process.returncode}) before "
                                   f"{text!r}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {text!r} within {timeout:.0f} s:\n{self.output()[-3000:]}")
            time.sleep(0.05)

    def wait(self, timeout: Optional[float] = None) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout=5)
        return code

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send a signal to the entrypoint only, as the kubelet does to PID 1."""
        self.process.send_signal(signum)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> Optional[int]:
        """SIGTERM the entrypoint, wait, then SIGKILL whatever is left of it."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.wait()

    def __enter__(self) -> "LocalContainer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
