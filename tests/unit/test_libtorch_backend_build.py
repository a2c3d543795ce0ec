"""The backend build's logic without compiling: where sources and their commits
come from, the cache key, cache reuse and rebuilds, and the one-line errors for
missing pieces. The real compile runs in `make backend` before the tests, and
every integration test serves models with its result."""

import dataclasses
import pathlib
import subprocess
import tarfile

import pytest

from triton_warmup.libtorch_backend import source_build as backend_build


def git(folder: pathlib.Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True, text=True, check=True,
    ).stdout.strip()


def make_archive(source_dir: pathlib.Path, name: str, content: str = "x") -> str:
    """A `git archive` tarball of a one-file repository, as upstream makes
    them; returns its commit."""
    repository = source_dir.parent / f"repo-{name}"
    repository.mkdir()
    git(repository, "init", "-q")
    (repository / "CMakeLists.txt").write_text(content)
    git(repository, "add", ".")
    git(repository, "commit", "-q", "-m", "m")
    git(repository, "archive", f"--prefix={name}/", "-o", str(source_dir / f"{name}-r24.10.tar.gz"), "HEAD")
    return git(repository, "rev-parse", "HEAD")


@pytest.fixture
def source_dir(tmp_path):
    folder = tmp_path / "triton-src"
    folder.mkdir()
    for name in backend_build.TRITON_REPOSITORIES:
        make_archive(folder, name, content=name)
    return folder


@pytest.fixture
def toolchain():
    return backend_build.Toolchain(
        compiler=pathlib.Path("/usr/bin/g++"),
        compiler_version="g++ 12.2.0",
        cmake=pathlib.Path("cmake"),
        ninja=pathlib.Path("ninja"),
        torch_dir=pathlib.Path("/torch"),
        torch_version="2.13.0+cpu",
        python_include=pathlib.Path("/include"),
    )


def test_commits_come_from_the_archives_headers(tmp_path):
    folder = tmp_path / "triton-src"
    folder.mkdir()
    expected = {name: make_archive(folder, name, content=name) for name in backend_build.TRITON_REPOSITORIES}
    expected["rapidjson"] = make_archive(folder, "rapidjson")
    assert backend_build.local_source_commits(folder) == expected


def test_a_missing_repository_archive_is_named_with_how_to_make_it(source_dir):
    (source_dir / "core-r24.10.tar.gz").unlink()
    with pytest.raises(backend_build.BuildError) as error:
        backend_build.local_source_commits(source_dir)
    assert str(error.value).startswith("core-r24.10.tar.gz not found in")
    assert "git archive" in str(error.value) and "/core" in str(error.value)


def test_an_archive_without_a_commit_is_refused(source_dir):
    (source_dir / "common-r24.10.tar.gz").unlink()
    with tarfile.open(source_dir / "common-r24.10.tar.gz", "w:gz") as tar:
        tar.add(source_dir.parent / "repo-common" / "CMakeLists.txt", arcname="common/CMakeLists.txt")
    with pytest.raises(backend_build.BuildError, match="no git commit in its header"):
        backend_build.local_source_commits(source_dir)


def test_cache_key_changes_with_each_input(toolchain):
    commits = {"pytorch_backend": "a" * 40, "core": "b" * 40}
    key = backend_build.cache_key(commits, toolchain)
    assert key == backend_build.cache_key(dict(commits), toolchain)
    changed = [
        backend_build.cache_key({**commits, "core": "c" * 40}, toolchain),
        backend_build.cache_key(commits, dataclasses.replace(toolchain, torch_version="2.14.1")),
        backend_build.cache_key(commits, dataclasses.replace(toolchain, compiler_version="clang 14")),
    ]
    assert key not in changed and len(set(changed)) == len(changed)


def test_a_cached_build_is_reused_and_a_changed_key_builds_again(source_dir, toolchain, tmp_path, monkeypatch):
    compiled = []

    def fake_compile(source, commits, chain, work, log_path, log):
        compiled.append(commits["core"])
        library = work / "libtriton_pytorch.so"
        library.write_bytes(commits["core"].encode())
        # The real build copies pytorch_backend's src/model.py beside it.
        (work / backend_build.RUNTIME_NAME).write_text("# the PyTorch 2 runtime\n")
        log_path.write_text("built\n")
        return library

    monkeypatch.setattr(backend_build, "find_toolchain", lambda: toolchain)
    monkeypatch.setattr(backend_build, "_compile", fake_compile)
    cache = tmp_path / "cache"
    first = backend_build.build(source_dir, cache_root=cache, log=lambda line: None)
    again = backend_build.build(source_dir, cache_root=cache, log=lambda line: None)
    assert len(compiled) == 1 and again.library == first.library
    assert first.runtime.read_text() == "# the PyTorch 2 runtime\n"
    assert first.info["sources"] == backend_build.local_source_commits(source_dir)
    assert first.info["torch"] == toolchain.torch_version and first.info["build_seconds"] >= 0

    # A new commit of core: a new key.
    (source_dir / "core-r24.10.tar.gz").unlink()
    repository = source_dir.parent / "repo-core"
    (repository / "CMakeLists.txt").write_text("changed")
    git(repository, "commit", "-q", "-am", "change")
    git(repository, "archive", "--prefix=core/", "-o", str(source_dir / "core-r24.10.tar.gz"), "HEAD")
    rebuilt = backend_build.build(source_dir, cache_root=cache, log=lambda line: None)
    assert len(compiled) == 2
    assert rebuilt.library != first.library and rebuilt.library.read_bytes() == compiled[-1].encode()
    # No temporary folders are left beside the entries.
    assert sorted(path.name for path in cache.iterdir() if not path.name.endswith(".lock")) == sorted(
        [first.library.parent.name, rebuilt.library.parent.name]
    )


def test_a_failed_build_leaves_no_cache_entry(source_dir, toolchain, tmp_path, monkeypatch):
    def failing_compile(*args):
        raise backend_build.BuildError("`ninja -C` failed (exit 1)")

    monkeypatch.setattr(backend_build, "find_toolchain", lambda: toolchain)
    monkeypatch.setattr(backend_build, "_compile", failing_compile)
    cache = tmp_path / "cache"
    with pytest.raises(backend_build.BuildError):
        backend_build.build(source_dir, cache_root=cache, log=lambda line: None)
    assert [path.name for path in cache.iterdir() if not path.name.endswith(".lock")] == []


def test_a_missing_compiler_is_named_with_how_to_install_it(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(backend_build.BuildError) as error:
        backend_build.find_toolchain()
    assert str(error.value) == (
        "no-such-compiler not found: install a C++17 compiler (apt-get install g++), or set CXX"
    )


def test_a_missing_build_tool_is_named_with_how_to_install_it():
    with pytest.raises(backend_build.BuildError) as error:
        backend_build._tool("no-such-tool", "pip install no-such-tool")
    assert str(error.value) == "no-such-tool not found: pip install no-such-tool"


def test_the_source_folder_comes_from_the_environment_first(monkeypatch, tmp_path):
    monkeypatch.setenv(backend_build.SOURCE_DIR_VARIABLE, str(tmp_path))
    assert backend_build.source_dir_from_environment() == tmp_path
    monkeypatch.delenv(backend_build.SOURCE_DIR_VARIABLE)
    expected = backend_build.DEFAULT_SOURCE_DIR if backend_build.DEFAULT_SOURCE_DIR.is_dir() else None
    assert backend_build.source_dir_from_environment() == expected
