"""Run deploy/entrypoint.sh on this machine the way the container runs it.

The image's ``tritonserver`` becomes ``python -m triton_warmup.embedded`` and the
image's paths become this checkout's; everything else (the entrypoint, the
helper with its start plan, the commands it runs, the real tritonserver
binary) is what a pod runs. The repository is made what the image and the
pod make it: the helper installed with ``warm_on_start`` naming the image's
start plan (deploy/Dockerfile), and the ConfigMap's plan written over that
file (the Deployment's subPath mount). The container's output is kept with
the time each line arrived, so the tests can check what happened in which
order and the benchmark can time a replica from its start to ready. The
Kubernetes manifests are read here too, so that their probe commands run on
this machine as the kubelet runs them.
"""

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from triton_warmup.embedded.server import free_port
from triton_warmup.client.install_helper import install_helper
from triton_warmup.libtorch_backend.source_build import PROJECT_ROOT

ENTRYPOINT = PROJECT_ROOT / "deploy" / "entrypoint.sh"
KUBERNETES = PROJECT_ROOT / "deploy" / "kubernetes"
# The folder of this interpreter's commands (the package's console scripts),
# which the image has on PATH; and the port the manifests use.
COMMANDS_DIR = pathlib.Path(sys.executable).parent
IMAGE_HTTP_URL = "localhost:8000"
# The image's repository (the Dockerfile's MODEL_REPOSITORY), and the plan the
# Dockerfile installs the helper with, under the start plan's file name.
IMAGE_MODEL_REPOSITORY = "/opt/warmup/model_repository"
IMAGE_START_PLAN_SOURCE = PROJECT_ROOT / "plans" / "example.yaml"
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


def start_plan_mount() -> dict:
    """The Deployment's volume mount that puts the ConfigMap's plan into the
    helper's folder, over the image's start plan."""
    documents = manifests()
    volumes = {volume["name"]: volume for volume in documents["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [mount for mount in deployment_container()["volumeMounts"] if "configMap" in volumes[mount["name"]]]
    return mount


def image_start_plan() -> pathlib.PurePosixPath:
    """Where the helper's start plan is in the image (the mount's path)."""
    return pathlib.PurePosixPath(start_plan_mount()["mountPath"])


def probe_command(probe: str, repository: pathlib.Path, http_port: int) -> List[str]:
    """The Deployment's ``probe`` exec command mapped to this checkout: the
    image's command, repository (and so the start plan in its helper's
    folder) and HTTP port become this venv's command, ``repository`` and
    ``http_port``."""
    mapped = []
    for word in deployment_container()[probe]["exec"]["command"]:
        word = str(COMMANDS_DIR / word) if (COMMANDS_DIR / word).is_file() and not mapped else word
        word = word.replace(IMAGE_MODEL_REPOSITORY, str(repository))
        mapped.append(word.replace(IMAGE_HTTP_URL, f"localhost:{http_port}"))
    return mapped


def install_image_helper(repository: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
    """What deploy/Dockerfile does to the repository: the helper, installed
    by ``triton-warmup-install-helper --warm-on-start`` with the example
    plan under the start plan's file name. Returns the start plan's path."""
    source = pathlib.Path(workdir) / "image-plans" / image_start_plan().name
    source.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(IMAGE_START_PLAN_SOURCE, source)
    return install_helper(pathlib.Path(repository), force=True, warm_on_start=str(source)) / source.name


def mount_start_plan(start_plan: pathlib.Path, plan: pathlib.Path) -> None:
    """What the Deployment's subPath mount does: ``plan`` (the ConfigMap's)
    in place of the image's start plan, read-only and unchecked."""
    start_plan.unlink()
    shutil.copyfile(plan, start_plan)
    start_plan.chmod(0o444)


class LocalContainer:
    """One run of the entrypoint on ``repository``, which it changes as the
    image and the pod do (``install_image_helper``, ``mount_start_plan``).

    Args:
        workdir: for the container's log, the server's files and the image's plan.
        plan: the ConfigMap's plan, mounted over the image's start plan;
            ``None`` leaves the image's (a ``docker run`` without Kubernetes).
        server_flags: passed to the entrypoint, which hands them to tritonserver.
        extra_env: more environment (OMP_NUM_THREADS, TZ, ...).
    """

    def __init__(
        self,
        repository: pathlib.Path,
        workdir: pathlib.Path,
        plan: Optional[pathlib.Path] = None,
        server_flags: Sequence[str] = (),
        extra_env: Optional[Dict[str, str]] = None,
    ):
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.repository = pathlib.Path(repository)
        self.start_plan = install_image_helper(self.repository, workdir)
        if plan is not None:
            mount_start_plan(self.start_plan, pathlib.Path(plan))
        self.log_path = pathlib.Path(workdir) / "container.log"
        self.env = {
            **os.environ,
            "MODEL_REPOSITORY": str(repository),
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
        """Send a signal to the container's first process only, as the
        kubelet does to PID 1 (tritonserver, once the entrypoint has exec'd it)."""
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
