"""Guards for writing into a model repository that others share.

* ``model_lock``: one writer per model at a time, across threads, helper
  instances and servers that mount the same repository (replicas on a shared
  volume). The lock is ``fcntl.lockf`` on ``<model>/.warmup_helper.lock``:
  POSIX record locks are the kind NFS forwards to its lock manager, where
  ``flock`` may stay local to one client.
* ``remove_stale_temp_files``: a writer killed between creating its temporary
  file and renaming it leaves ``.config.pbtxt.*.tmp`` behind; the next holder
  of the model's lock removes it.
* ``write_atomically``: a reader sees the old file or the new one, never half.
* ``backup_path`` and ``restore_interrupted_rewrite``: before a rewrite the
  writer saves the original config and removes that copy once the load has
  settled. A copy found by the next holder of the lock (or by the helper when
  it starts) means the writer died between the rewrite and the end of the
  load, for example when Triton crashed on a failing warmup sample; the
  original is put back, as a failed load would have. The copy is a hidden
  file in the repository folder, not in the model's folder: Triton takes a
  model whose folder lost a file since its last load as changed, and would
  reload it on the next request; and Triton lists hidden folders of the
  repository as models, but not files.
* ``unwritable_reason``: whether the helper may write a config at all. A file
  or folder without write permission bits is treated as read-only even when
  the server runs as root (who could write it anyway): someone made it
  read-only on purpose.

Pure Python (stdlib only), so the unit tests run without a server.
"""

import contextlib
import fcntl
import os
import pathlib
import shutil
import stat
import tempfile
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from triton_warmup.report import LockHold

CONFIG_FILENAME = "config.pbtxt"
LOCK_FILENAME = ".warmup_helper.lock"
TEMP_FILE_GLOB = ".config.pbtxt.*.tmp"
# ".<model>" + this, in the repository folder: the model's config as it was
# before the rewrite whose load has not settled yet.
BACKUP_SUFFIX = ".config.pbtxt.before-warmup"
# ".<model>" + these, in the repository folder too: the preflight record
# (``preflight_record``) and the parsed config (``config_cache``).
RECORD_SUFFIX = ".warmup-preflight.json"
PARSED_CONFIG_SUFFIX = ".config.binpb"
_BESIDE_MODEL_SUFFIXES = (BACKUP_SUFFIX, RECORD_SUFFIX, PARSED_CONFIG_SUFFIX)
# The preflight's scratch copy of model M is the hidden folder <repository>/<prefix>M.
SCRATCH_PREFIX = ".warmup_helper.preflight."
# A repository folder holding this file is read-only to the helper, for the
# reason the file holds: the helper's local copy of a bucket carries one
# (``repository.ObjectStoreRepository``).
READ_ONLY_MARKER = ".warmup_helper.read-only"

# A load holds the lock of its model; a second writer waits for it. Loads of
# big models can take minutes, so the default wait is long.
DEFAULT_LOCK_TIMEOUT_S = 600.0
_POLL_S = 0.05

_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


class ModelLockTimeout(TimeoutError):
    """Another writer held the model's lock for longer than the timeout."""


def fsync_folder(folder: pathlib.Path) -> None:
    """Make a rename or removal in ``folder`` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before
    # any thread of the helper runs.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# A new file gets the mode open() would give it: mkstemp's 0600 would hide a
# data file from a server that runs as another user.
_NEW_FILE_MODE = 0o666 & ~_read_umask()


def write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers never see a partial file.

    The new file keeps the old one's permission bits (and owner, where this
    process may set it), so a server running as another user can still read it.
    """
    try:
        old = path.stat()
    except FileNotFoundError:
        old = None
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        if old is not None:
            os.chmod(temp_name, old.st_mode & 0o7777)
            try:
                os.chown(temp_name, old.st_uid, old.st_gid)
            except PermissionError:
                pass
        else:
            os.chmod(temp_name, _NEW_FILE_MODE)
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    fsync_folder(path.parent)


def backup_path(model_dir: pathlib.Path) -> pathlib.Path:
    """Where the original config of ``model_dir`` waits while its load runs."""
    return model_dir.parent / f".{model_dir.name}{BACKUP_SUFFIX}"


def remove_backup(model_dir: pathlib.Path) -> None:
    """Drop the saved original: the load it guarded has settled."""
    path = backup_path(model_dir)
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_folder(path.parent)


def restore_interrupted_rewrite(model_dir: pathlib.Path) -> Optional[str]:
    """Put back the config saved before a rewrite whose load never settled.

    Call it while holding ``model_lock``: a live writer holds that lock from
    the rewrite to the end of its load, so a backup found then belongs to a
    writer that died. Returns the restored ``config.pbtxt``, or ``None``.
    """
    try:
        original = backup_path(model_dir).read_bytes()
    except FileNotFoundError:
        return None
    config = model_dir / CONFIG_FILENAME
    write_atomically(config, original)
    remove_backup(model_dir)
    return str(config)


# fcntl locks belong to a process: two threads of one process would both get
# them. A lock per path inside the process covers threads.
_thread_locks: Dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _thread_lock(path: pathlib.Path) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(str(path.resolve()), threading.Lock())


def _permission_reason(path: pathlib.Path, kind: str) -> Optional[str]:
    """Why ``path`` (a ``kind``: file or folder) may not be written, or ``None``."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"{kind} {path} cannot be inspected: {error}"
    if not mode & _WRITE_BITS:
        return f"{kind} {path} is read-only (mode {stat.S_IMODE(mode):04o})"
    if not os.access(path, os.W_OK):
        return f"no permission to write {kind} {path}"
    return None


def _declared_read_only(folder: pathlib.Path) -> Optional[str]:
    """The reason a ``READ_ONLY_MARKER`` in the repository folder gives, for
    the repository folder itself or a model folder in it."""
    for candidate in (folder, folder.parent):
        try:
            return (candidate / READ_ONLY_MARKER).read_text().strip() or "the repository is marked read-only"
        except OSError:
            continue
    return None


def folder_unwritable_reason(folder: pathlib.Path) -> Optional[str]:
    """Why nothing may be created in ``folder``, or ``None`` if it may."""
    declared = _declared_read_only(folder)
    if declared is not None:
        return declared
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"{folder} is on a read-only file system"
    except OSError as error:
        return f"folder {folder} cannot be inspected: {error}"
    return _permission_reason(folder, "folder")


def unwritable_reason(path: pathlib.Path) -> Optional[str]:
    """Why the helper must not replace the config ``path``, or ``None`` if it may.

    The repository folder counts too: the original is saved there while the
    load runs, and a config is never rewritten without a way back.
    """
    return (
        folder_unwritable_reason(path.parent)
        or _permission_reason(path, "file")
        or folder_unwritable_reason(backup_path(path.parent).parent)
    )


@contextlib.contextmanager
def model_lock(
    model_dir: pathlib.Path,
    timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    stopping: Optional[Callable[[], bool]] = None,
) -> Iterator[Optional[LockHold]]:
    """Hold the model's write lock for the ``with`` block.

    Yields a ``LockHold``, or ``None`` when the folder cannot hold a lock file
    (read-only, or the file cannot be created): then the config cannot be
    written either, and the caller falls back to not writing it.

    Raises:
        ModelLockTimeout: when the lock stays taken for ``timeout_s``, or
            ``stopping()`` turns true while it waits (the server shuts down:
            a wait of minutes would hold the helper's process, and with it
            Triton's exit).
    """
    if folder_unwritable_reason(model_dir) is not None:
        yield None
        return
    lock_path = model_dir / LOCK_FILENAME
    started = time.monotonic()
    deadline = started + timeout_s

    def give_up(whose: str) -> None:
        # whose: "" for another writer in this process, else who holds it.
        if stopping is not None and stopping():
            raise ModelLockTimeout(f"{lock_path}: the server began to stop while the lock was taken {whose or 'here'}")
        if time.monotonic() >= deadline:
            raise ModelLockTimeout(f"{lock_path} stayed locked{' by ' + whose if whose else ''} for {timeout_s:g} s")

    in_process = _thread_lock(lock_path)
    while not in_process.acquire(timeout=max(min(_POLL_S * 10, deadline - time.monotonic()), 0)):
        give_up("")
    try:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield None
            return
        try:
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except (BlockingIOError, PermissionError):
                    give_up("another process")
                    time.sleep(_POLL_S)
            hold = LockHold(waited_s=round(time.monotonic() - started, 3), held_from=time.time())
            try:
                yield hold
            finally:
                hold.held_until = time.time()
                fcntl.lockf(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        in_process.release()


def stale_temp_files(model_dir: pathlib.Path) -> List[pathlib.Path]:
    return sorted(model_dir.glob(TEMP_FILE_GLOB))


def _remove_files(paths: List[pathlib.Path]) -> List[str]:
    removed = []
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(str(path))
    return removed


def remove_stale_temp_files(model_dir: pathlib.Path) -> List[str]:
    """Remove temporary config files left by a killed writer.

    Call it while holding ``model_lock``: every live writer holds that lock,
    so a temporary file found then belongs to nobody.
    """
    return _remove_files(stale_temp_files(model_dir))


def scratch_folder(model_dir: pathlib.Path) -> pathlib.Path:
    """Where the preflight puts a model's scratch copy: a hidden folder of the
    repository, whose name is the scratch copy's model name."""
    return model_dir.parent / f"{SCRATCH_PREFIX}{model_dir.name}"


def remove_scratch_folder(folder: pathlib.Path) -> Optional[str]:
    """Remove a scratch copy's folder if it exists; return its path then.

    It holds a config and symbolic links to the model's own files: links are
    removed, never followed, so the model's files stay whatever happens.
    """
    if not folder.is_dir() or folder.is_symlink():
        return None
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    folder.rmdir()
    return str(folder)


def clean_repository(repository: pathlib.Path) -> Tuple[List[str], List[str]]:
    """Undo what dead writers left in every model folder whose lock is free.

    Run when the helper starts. Returns the stale temporary files removed
    (of configs, and of backups half-written in the repository folder) and
    the configs put back from a backup (``restore_interrupted_rewrite``).
    A model whose lock is held (a writer on another server is busy with it)
    is skipped: that writer cleans up itself. The repository folder is
    listed once here, not on every model's load.
    """
    entries = sorted(repository.iterdir())
    # What write_atomically leaves of a file beside a model when killed.
    backup_temps = [
        entry for entry in entries
        if entry.name.endswith(".tmp") and any(suffix in entry.name for suffix in _BESIDE_MODEL_SUFFIXES)
    ]
    removed, restored = [], []
    for model_dir in entries:
        if model_dir.name.startswith(".") or not model_dir.is_dir():
            continue
        own_backup_temps = [
            path for path in backup_temps
            if any(path.name.startswith(f"..{model_dir.name}{suffix}.") for suffix in _BESIDE_MODEL_SUFFIXES)
        ]
        scratch = scratch_folder(model_dir)
        if not (
            stale_temp_files(model_dir) or own_backup_temps or backup_path(model_dir).exists() or scratch.is_dir()
        ):
            continue
        try:
            with model_lock(model_dir, timeout_s=0) as hold:
                if hold is not None:
                    removed.extend(remove_stale_temp_files(model_dir) + _remove_files(own_backup_temps))
                    removed.extend(filter(None, [remove_scratch_folder(scratch)]))
                    restored_config = restore_interrupted_rewrite(model_dir)
                    if restored_config is not None:
                        restored.append(restored_config)
        except ModelLockTimeout:
            continue
    return removed, restored
