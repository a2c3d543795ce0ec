"""A preflight verdict that outlasts the server: samples that passed, and
what they passed against.

A restart, or a new replica on the same repository, would otherwise run
every sample of an unloaded model on a scratch copy again: one more load of
every model, though nothing changed. The record says: these samples passed
against *these* model files, *this* config (``model_warmup`` aside) and
*this* server and backend. A sample it holds is not run again while all
three are the same.

What it trusts:

* the model's files, its ``warmup/`` data files and the loaded versions, by
  path, size and modification time (what Triton's own model polling
  compares), not by content;
* the config, by the hash of its deterministic serialization with
  ``model_warmup`` and the name cleared;
* the server and backends, by ``server_identity``: the tritonserver binary
  by path, size and modification time, and every file of the backend
  folders, once when the helper starts: small files by their contents
  (launchers copy backends into place at every start, which changes their
  times), files over ``DIGEST_MAX_BYTES`` by size and time (NVIDIA's
  container ships gigabytes of libtorch there, installed once with the
  image: hashing them would delay the helper's READY, and with it the
  server's, by seconds).

Where it lives: ``<repository>/.<model>.warmup-preflight.json``, a hidden
file of the repository folder (a file added to a model's folder makes Triton
take the model as modified; Triton lists hidden folders as models, not
files). It is written atomically under the model's lock, like configs, so
replicas on one volume leave one whole record. A record that does not parse,
names another model, fails its checksum or carries another fingerprint is
ignored, never trusted; a helper that cannot tell its server's identity
neither reads nor writes records.
"""

import hashlib
import json
import os
import pathlib
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from tritonclient.grpc import model_config_pb2

from triton_warmup.helper.config_rewrite import WARMUP_DATA_FOLDER
from triton_warmup.helper.repository_guard import RECORD_SUFFIX, unwritable_reason, write_atomically

FORMAT = 1


def record_path(model_dir: pathlib.Path) -> pathlib.Path:
    return model_dir.parent / f".{model_dir.name}{RECORD_SUFFIX}"


def _stat_entry(path: pathlib.Path, relative_to: pathlib.Path) -> List:
    stat = path.stat()
    return [path.relative_to(relative_to).as_posix(), stat.st_size, stat.st_mtime_ns]


def _content_digest(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Backend files up to this size are hashed; larger ones are taken by size and time.
DIGEST_MAX_BYTES = 16 * 1024 * 1024


def _backend_entry(path: pathlib.Path, root: pathlib.Path) -> List:
    stat = path.stat()
    if stat.st_size > DIGEST_MAX_BYTES:
        return [path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns]
    return [path.relative_to(root).as_posix(), _content_digest(path)]


def server_identity(binary: Optional[str], backend_directory: Optional[str]) -> Optional[str]:
    """A digest of the tritonserver binary and of every file of the backend
    folders (see the module's docstring); ``None`` when either cannot be read."""
    if not binary or not backend_directory:
        return None
    try:
        # The binary by place, size and time (it is large, and installed
        # once); the backends, which launchers copy at every start, by content.
        binary_stat = pathlib.Path(binary).stat()
        entries = [[os.path.realpath(binary), binary_stat.st_size, binary_stat.st_mtime_ns]]
        root = pathlib.Path(backend_directory)
        for backend in sorted(root.iterdir()):
            if backend.is_dir():
                entries.extend(_backend_entry(path, root) for path in sorted(backend.iterdir()) if path.is_file())
    except OSError:
        return None
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


# tritonserver's default when --backend-directory is not given.
DEFAULT_BACKEND_DIRECTORY = "/opt/tritonserver/backends"


def identity_from_argv(argv: Optional[Sequence[str]]) -> Optional[str]:
    """``server_identity`` of the server whose command line is ``argv``."""
    if not argv:
        return None
    directory = DEFAULT_BACKEND_DIRECTORY
    for index, argument in enumerate(argv):
        if argument.startswith("--backend-directory="):
            directory = argument.split("=", 1)[1]
        elif argument == "--backend-directory" and index + 1 < len(argv):
            directory = argv[index + 1]
    return server_identity(argv[0], directory)


def fingerprint(
    model_dir: pathlib.Path,
    files: Sequence[pathlib.Path],
    versions: Sequence[str],
    config: model_config_pb2.ModelConfig,
    identity: str,
) -> Dict:
    """What a verdict holds against: any change here voids the record.

    Raises:
        OSError: a file cannot be read.
    """
    bare = model_config_pb2.ModelConfig()
    bare.CopyFrom(config)
    del bare.model_warmup[:]
    bare.name = ""
    data_folder = model_dir / WARMUP_DATA_FOLDER
    data_files = sorted(path for path in data_folder.rglob("*") if path.is_file()) if data_folder.is_dir() else []
    return {
        "files": [_stat_entry(path, model_dir) for path in list(files) + data_files],
        "versions": list(versions),
        "config": hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest(),
        "server": identity,
    }


def sample_digest(sample: model_config_pb2.ModelWarmup) -> str:
    """A sample, by what it runs (its name and run count aside)."""
    bare = model_config_pb2.ModelWarmup()
    bare.CopyFrom(sample)
    bare.name = ""
    bare.count = 0
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()


def _checksum(body: Mapping) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def passed_samples(model_dir: pathlib.Path, model: str, current: Mapping) -> frozenset:
    """The digests of the samples a valid record says passed against
    ``current``; empty for a missing, corrupt, foreign or outdated record."""
    try:
        document = json.loads(record_path(model_dir).read_text())
        body, checksum = document["record"], document["checksum"]
        if (
            checksum != _checksum(body)
            or body.get("format") != FORMAT
            or body.get("model") != model
            or body.get("fingerprint") != json.loads(json.dumps(current))
        ):
            return frozenset()
        return frozenset(str(digest) for digest in body["samples"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return frozenset()


def known_good(
    model_dir: pathlib.Path,
    model: str,
    current: Mapping,
    config: model_config_pb2.ModelConfig,
    passed: Optional[frozenset] = None,
) -> List[model_config_pb2.ModelWarmup]:
    """The samples of ``config`` that a valid record says passed
    (``passed``: what ``passed_samples`` read, when the caller has it)."""
    if passed is None:
        passed = passed_samples(model_dir, model, current)
    return [sample for sample in config.model_warmup if sample_digest(sample) in passed]


def write_record(
    model_dir: pathlib.Path,
    model: str,
    current: Mapping,
    samples: Iterable[model_config_pb2.ModelWarmup],
    held: Optional[frozenset] = None,
) -> Optional[pathlib.Path]:
    """Record that ``samples`` passed against ``current``, keeping what a
    valid record already holds (``held``: what ``passed_samples`` read under
    the same lock, when the caller has it); call it under the model's lock.
    Returns the file, or ``None`` where the repository folder may not be written."""
    path = record_path(model_dir)
    if held is None:
        held = passed_samples(model_dir, model, current)
    digests = set(held) | {sample_digest(sample) for sample in samples}
    if digests == held:
        return path  # a restart's record already says it all: no rewrite, no fsync
    if unwritable_reason(path) is not None:
        return None
    body = {"format": FORMAT, "model": model, "fingerprint": current, "samples": sorted(digests)}
    body = json.loads(json.dumps(body))
    write_atomically(path, json.dumps({"record": body, "checksum": _checksum(body)}, indent=1).encode())
    return path
