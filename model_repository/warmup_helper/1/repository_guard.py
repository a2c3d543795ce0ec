"""Guards for writing into a model repository that others share.

* ``model_lock``: one writer per model at a time, across threads, helper
  instances and servers that mount the same repository (replicas on a shared
  volume). The lock is ``fcntl.lockf`` on ``<model>/.warmup_helper.lock``:
  POSIX record locks are the kind NFS forwards to its lock manager, where
  ``flock`` may stay local to one client.
* ``remove_stale_temp_files``: a writer killed between creating its temporary
  file and renaming it leaves ``.config.pbtxt.*.tmp`` behind; the next holder
  of the model's lock removes it.
* ``unwritable_reason``: whether the helper may write a config at all. A file
  or folder without write permission bits is treated as read-only even when
  the server runs as root (who could write it anyway): someone made it
  read-only on purpose.

Pure Python (stdlib only), so the unit tests run without a server.
"""

import contextlib
import dataclasses
import fcntl
import os
import pathlib
import stat
import threading
import time
from typing import Dict, Iterator, List, Optional

LOCK_FILENAME = ".warmup_helper.lock"
TEMP_FILE_GLOB = ".config.pbtxt.*.tmp"

# A load holds the lock of its model; a second writer waits for it. Loads of
# big models can take minutes, so the default wait is long.
DEFAULT_LOCK_TIMEOUT_S = 600.0
_POLL_S = 0.05

_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


class ModelLockTimeout(TimeoutError):
    """Another writer held the model's lock for longer than the timeout."""


@dataclasses.dataclass
class LockHold:
    """When this process held a model's lock (epoch seconds, for reports)."""

    waited_s: float
    held_from: float
    held_until: Optional[float] = None

    def as_dict(self) -> Dict:
        return {
            "waited_s": round(self.waited_s, 3),
            "held_from": self.held_from,
            "held_until": self.held_until,
        }


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


def folder_unwritable_reason(folder: pathlib.Path) -> Optional[str]:
    """Why nothing may be created in ``folder``, or ``None`` if it may."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"{folder} is on a read-only file system"
    except OSError as error:
        return f"folder {folder} cannot be inspected: {error}"
    return _permission_reason(folder, "folder")


def unwritable_reason(path: pathlib.Path) -> Optional[str]:
    """Why the helper must not replace the file ``path``, or ``None`` if it may."""
    return folder_unwritable_reason(path.parent) or _permission_reason(path, "file")


@contextlib.contextmanager
def model_lock(model_dir: pathlib.Path, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Iterator[Optional[LockHold]]:
    """Hold the model's write lock for the ``with`` block.

    Yields a ``LockHold``, or ``None`` when the folder cannot hold a lock file
    (read-only, or the file cannot be created): then the config cannot be
    written either, and the caller falls back to not writing it.

    Raises:
        ModelLockTimeout: when the lock stays taken for ``timeout_s``.
    """
    if folder_unwritable_reason(model_dir) is not None:
        yield None
        return
    lock_path = model_dir / LOCK_FILENAME
    started = time.monotonic()
    deadline = started + timeout_s
    in_process = _thread_lock(lock_path)
    if not in_process.acquire(timeout=max(timeout_s, 0)):
        raise ModelLockTimeout(f"{lock_path} stayed locked for {timeout_s:g} s")
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
                    if time.monotonic() >= deadline:
                        raise ModelLockTimeout(
                            f"{lock_path} stayed locked by another process for {timeout_s:g} s"
                        ) from None
                    time.sleep(_POLL_S)
            hold = LockHold(waited_s=time.monotonic() - started, held_from=time.time())
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


def remove_stale_temp_files(model_dir: pathlib.Path) -> List[str]:
    """Remove temporary config files left by a killed writer.

    Call it while holding ``model_lock``: every live writer holds that lock,
    so a temporary file found then belongs to nobody.
    """
    removed = []
    for path in stale_temp_files(model_dir):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(str(path))
    return removed


def clean_repository(repository: pathlib.Path) -> List[str]:
    """Remove stale temporary configs from every model folder whose lock is free.

    Run when the helper starts. A model whose lock is held (a writer on
    another server is busy with it) is skipped: that writer cleans up itself.
    """
    removed = []
    for model_dir in sorted(repository.iterdir()):
        if model_dir.name.startswith(".") or not model_dir.is_dir():
            continue
        if not stale_temp_files(model_dir):
            continue
        try:
            with model_lock(model_dir, timeout_s=0) as hold:
                if hold is not None:
                    removed.extend(remove_stale_temp_files(model_dir))
        except ModelLockTimeout:
            continue
    return removed
