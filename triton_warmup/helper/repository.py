"""Where the helper finds the models it warms: a local folder or a bucket.

Triton serves repositories from a local folder and from object storage
(``s3://``, ``gs://``, ``as://``). For a bucket, Triton downloads each model
into a temporary folder of its own, so the helper's own folder says nothing
about where the other models are; ``choose_repository`` takes the location
from the server's ``--model-repository`` flags (or the helper's
``model_repository`` parameter).

* ``LocalRepository``: the folder itself; the helper rewrites configs in
  place under the guards of ``repository_guard``.
* ``ObjectStoreRepository``: read through fsspec into a private local copy
  (``mirror``) for the length of one request. The copy is marked read-only
  (``repository_guard.READ_ONLY_MARKER``), so every write the helper would
  make falls back to what it does for a read-only folder: the planned config
  travels in the load request (Triton then loads the model's files from the
  bucket, with that config), and a scratch copy's files travel as ``file:``
  overrides. Nothing is ever written into the bucket.

Credentials come from where Triton takes them: ``TRITON_CLOUD_CREDENTIAL_PATH``
(longest matching prefix, as core's ``FileSystemManager`` does), else the
environment (``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``,
``AZURE_STORAGE_ACCOUNT``/``AZURE_STORAGE_KEY``). The fsspec drivers are the
optional extras ``triton-warmup[s3]``, ``[gcs]`` and ``[azure]``.

Messages name the URL, never the local copy: ``public`` rewrites a text that
mentions the copy's folder.
"""

import dataclasses
import datetime
import json
import os
import pathlib
import re
import shutil
import stat
import tempfile
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from triton_warmup.helper.config_rewrite import CONFIG_FILENAME, WARMUP_DATA_FOLDER
from triton_warmup.helper.kept_errors import without_frames
from triton_warmup.helper.repository_guard import READ_ONLY_MARKER

CLOUD_SCHEMES = ("s3://", "gs://", "as://")
# The fsspec driver and the extra that installs it, per scheme.
_DRIVERS = {"s3://": ("s3fs", "s3"), "gs://": ("gcsfs", "gcs"), "as://": ("adlfs", "azure")}
# Triton's S3 forms: s3://bucket/path, s3://host:port/bucket/path and
# s3://http(s)://host:port/bucket/path (core's s3.h).
_S3_WITH_HOST = re.compile(r"s3://(http://|https://|)([0-9a-zA-Z\-.]+):([0-9]+)/(.*)")
_AS_URL = re.compile(r"as://([^/]+)/([^/?]+)(?:/([^?]*))?")


class RepositoryError(Exception):
    """The repository cannot be read; the message names its URL."""


def is_cloud(location) -> bool:
    return str(location).startswith(CLOUD_SCHEMES)


@dataclasses.dataclass(frozen=True)
class StoreAddress:
    """A bucket location as fsspec takes it."""

    protocol: str  # fsspec's: "s3", "gcs" or "abfs"
    root: str  # "bucket/path", without a trailing slash
    options: Dict[str, Any]


def _credential_entry(url: str, scheme: str, environ: Mapping[str, str]) -> Tuple[bool, Any]:
    """(found, entry) from ``TRITON_CLOUD_CREDENTIAL_PATH`` for ``url``: the
    entry whose name is the longest prefix of the URL."""
    path = environ.get("TRITON_CLOUD_CREDENTIAL_PATH")
    if not path:
        return False, None
    try:
        document = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as error:
        raise RepositoryError(f"TRITON_CLOUD_CREDENTIAL_PATH {path} cannot be read: {error}") from None
    entries = document.get(scheme.rstrip(":/"), {}) if isinstance(document, dict) else {}
    matching = [name for name in entries if url.startswith(name)]
    if not matching:
        raise RepositoryError(f"TRITON_CLOUD_CREDENTIAL_PATH {path} has no credential for {url}")
    return True, entries[max(matching, key=len)]


def store_address(url: str, environ: Mapping[str, str] = os.environ) -> StoreAddress:
    """Parse a Triton repository URL and find its credentials as Triton does.

    Raises:
        RepositoryError: a URL Triton would not take, or an unreadable
            credential file.
    """
    url = url.rstrip("/")
    if url.startswith("s3://"):
        found, credential = _credential_entry(url, "s3://", environ)
        credential = credential if found else {
            "key_id": environ.get("AWS_ACCESS_KEY_ID", ""),
            "secret_key": environ.get("AWS_SECRET_ACCESS_KEY", ""),
            "session_token": environ.get("AWS_SESSION_TOKEN", ""),
            "region": environ.get("AWS_DEFAULT_REGION", ""),
            "profile": environ.get("AWS_PROFILE", ""),
        }
        options: Dict[str, Any] = {"client_kwargs": {}, "config_kwargs": {"s3": {"addressing_style": "path"}}}
        if credential.get("key_id") and credential.get("secret_key"):
            options.update(key=credential["key_id"], secret=credential["secret_key"])
            if credential.get("session_token"):
                options["token"] = credential["session_token"]
        elif credential.get("profile"):
            options["profile"] = credential["profile"]
        if credential.get("region"):
            options["client_kwargs"]["region_name"] = credential["region"]
        with_host = _S3_WITH_HOST.fullmatch(url)
        if with_host:
            protocol, host, port, root = with_host.groups()
            scheme = "https" if protocol == "https://" else "http"
            options["client_kwargs"]["endpoint_url"] = f"{scheme}://{host}:{port}"
        else:
            root = url[len("s3://"):]
        if not root:
            raise RepositoryError(f"{url} names no bucket")
        return StoreAddress("s3", root, options)
    if url.startswith("gs://"):
        found, credential = _credential_entry(url, "gs://", environ)
        token = credential if found else environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        root = url[len("gs://"):]
        if not root:
            raise RepositoryError(f"{url} names no bucket")
        return StoreAddress("gcs", root, {"token": token} if token else {})
    if url.startswith("as://"):
        match = _AS_URL.fullmatch(url)
        if not match:
            raise RepositoryError(f"{url} is not as://ACCOUNT/CONTAINER[/PATH]")
        host, container, path = match.groups()
        found, credential = _credential_entry(url, "as://", environ)
        credential = credential if found else {
            "account_str": environ.get("AZURE_STORAGE_ACCOUNT", ""),
            "account_key": environ.get("AZURE_STORAGE_KEY", ""),
        }
        account = credential.get("account_str") or host.removesuffix(".blob.core.windows.net")
        options = {"account_name": account}
        if credential.get("account_key"):
            options["account_key"] = credential["account_key"]
        return StoreAddress("abfs", "/".join(part for part in (container, path) if part), options)
    raise RepositoryError(f"{url} is not a repository URL Triton takes (s3://, gs:// or as://)")


def _modified(info: Mapping[str, Any]) -> Optional[float]:
    """An object's modification time (epoch seconds) from fsspec's listing;
    each driver names it differently."""
    for key in ("LastModified", "last_modified", "updated", "mtime"):
        value = info.get(key)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _no_credentials(error: BaseException) -> bool:
    return type(error).__name__ == "NoCredentialsError" or "Unable to locate credentials" in str(error)


def _explain(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        return (
            f"access refused ({text}); the helper reads the bucket with the credentials "
            "tritonserver has (TRITON_CLOUD_CREDENTIAL_PATH, else the environment)"
        )
    if isinstance(error, FileNotFoundError):
        return f"no such bucket or path ({text})"
    return text


class LocalRepository:
    """A repository folder on this machine; the helper writes configs in place."""

    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root).resolve()
        self.location = str(self.root)

    def mirror(self) -> "LocalRepository":
        """What a request plans in: the folder itself."""
        return self

    def fetch_model_files(self, models: Iterable[str]) -> None:
        """Nothing to fetch: the files are here."""

    def public(self, text: str) -> str:
        return text

    def close(self) -> None:
        """Nothing to clean up."""


class ObjectStoreRepository:
    """A repository in a bucket. Each request plans in a ``BucketCopy`` of it."""

    def __init__(self, url: str, environ: Mapping[str, str] = os.environ, filesystem=None):
        self.location = url.rstrip("/")
        self.address = store_address(self.location, environ)
        self._filesystem = filesystem

    def filesystem(self):
        """The fsspec filesystem of the bucket, made on first use."""
        if self._filesystem is None:
            scheme = self.location[: self.location.index("://") + 3]
            driver, extra = _DRIVERS[scheme]
            try:
                import fsspec

                self._filesystem = fsspec.filesystem(
                    self.address.protocol, skip_instance_cache=True, use_listings_cache=False, **self.address.options
                )
            except ImportError:
                raise RepositoryError(
                    f"reading {self.location} needs {driver}: pip install 'triton-warmup[{extra}]' "
                    "into the Python that runs tritonserver's Python backend"
                ) from None
        return self._filesystem

    def unreadable(self, error: BaseException) -> RepositoryError:
        """The error to raise for a driver's ``error``, whose frames it drops:
        fsspec runs the driver on an event loop of its own, where a failed
        call's error sits in a reference cycle with its traceback, and those
        frames hold their callers up to the helper's ``execute`` and its
        request; such a cycle is freed only at the stub's exit, which then
        crashed (docs/safety.md). The message keeps what it says."""
        explained = _explain(error)
        without_frames(error)
        return RepositoryError(f"cannot read the model repository {self.location}: {explained}")

    def _find(self) -> Dict[str, Dict[str, Any]]:
        try:
            return self.filesystem().find(self.address.root, detail=True)
        except RepositoryError:
            raise
        except Exception as error:  # noqa: BLE001 - every driver raises its own kinds
            if self.address.protocol == "s3" and _no_credentials(error) and not self.address.options.get("anon"):
                # Triton's AWS SDK sends unsigned requests when it finds no
                # credentials (a public bucket works); so does the helper.
                self.address = dataclasses.replace(self.address, options={**self.address.options, "anon": True})
                self._filesystem = None
                return self._find()
            raise self.unreadable(error) from None

    def mirror(self) -> "BucketCopy":
        """A private read-only copy of the repository's layout, configs and warmup data."""
        listing = self._find()
        if not listing:
            raise RepositoryError(f"cannot read the model repository {self.location}: it holds no objects")
        copy = BucketCopy(self)
        try:
            copy.lay_out(listing)
        except BaseException:
            copy.close()
            raise
        return copy


class BucketCopy:
    """One request's local copy of a bucket repository.

    ``lay_out`` makes every model's folders and downloads each model's
    ``config.pbtxt`` and ``warmup/`` data; planning reads them here.
    ``fetch_model_files`` downloads the other files of the planned models
    (the preflight's scratch copy sends them to Triton). Files keep the
    objects' modification times, which the preflight compares with the
    server's start. The copy carries ``READ_ONLY_MARKER`` and no write bits,
    so the helper's guards take it as read-only. ``close`` removes it.
    """

    def __init__(self, repository: ObjectStoreRepository):
        self.repository = repository
        self.location = repository.location
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="warmup_helper.repository.")).resolve()
        self._pending: Dict[str, List[Tuple[str, pathlib.Path, Optional[float]]]] = {}

    def lay_out(self, listing: Mapping[str, Mapping[str, Any]]) -> None:
        prefix = self.repository.address.root + "/"
        downloads: List[Tuple[str, pathlib.Path, Optional[float]]] = []
        for key, info in sorted(listing.items()):
            if info.get("type", "file") != "file" or not key.startswith(prefix):
                continue
            relative = pathlib.PurePosixPath(key[len(prefix):])
            if len(relative.parts) < 2 or any(part in ("", ".", "..") for part in relative.parts):
                continue
            local = self.root.joinpath(*relative.parts)
            local.parent.mkdir(parents=True, exist_ok=True)
            item = (key, local, _modified(info))
            if relative.parts[1:] == (CONFIG_FILENAME,) or relative.parts[1] == WARMUP_DATA_FOLDER:
                downloads.append(item)
            else:
                self._pending.setdefault(relative.parts[0], []).append(item)
        self._download(downloads)
        (self.root / READ_ONLY_MARKER).write_text(
            f"the repository {self.location} is in object storage, which the helper does not write into"
        )
        self._seal()

    def fetch_model_files(self, models: Iterable[str]) -> None:
        """Download the version folders and other files of ``models``."""
        items = [item for name in models for item in self._pending.pop(name, [])]
        if not items:
            return
        self._unseal()
        try:
            self._download(items)
        finally:
            self._seal()

    def _download(self, items: Sequence[Tuple[str, pathlib.Path, Optional[float]]]) -> None:
        if not items:
            return
        try:
            self.repository.filesystem().get([key for key, _, _ in items], [str(local) for _, local, _ in items])
        except Exception as error:  # noqa: BLE001 - every driver raises its own kinds
            raise self.repository.unreadable(error) from None
        for _, local, modified in items:
            if modified is not None:
                os.utime(local, (modified, modified))

    def _seal(self) -> None:
        for folder, _, files in os.walk(self.root):
            for name in files:
                path = os.path.join(folder, name)
                os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) & ~0o222)
            os.chmod(folder, 0o555)

    def _unseal(self) -> None:
        for folder, _, _ in os.walk(self.root):
            os.chmod(folder, 0o755)

    def public(self, text: str) -> str:
        """``text`` with the local copy's folder replaced by the URL."""
        return text.replace(str(self.root), self.location)

    def close(self) -> None:
        """Remove the local copy."""
        if self.root.exists():
            self._unseal()
            shutil.rmtree(self.root, ignore_errors=True)


def repository_flags(argv: Sequence[str]) -> List[str]:
    """The ``--model-repository`` (or ``--model-store``) values of a
    tritonserver command line, in order."""
    values = []
    for index, argument in enumerate(argv):
        for flag in ("--model-repository", "--model-store"):
            if argument == flag and index + 1 < len(argv):
                values.append(argv[index + 1])
            elif argument.startswith(flag + "="):
                values.append(argument[len(flag) + 1:])
    return values


def choose_repository(
    own_folder: pathlib.Path, argv: Optional[Sequence[str]], configured: str = "", server_cwd: Optional[pathlib.Path] = None
):
    """The repository a helper loaded from ``own_folder`` warms models of.

    ``configured`` (the helper's ``model_repository`` parameter) wins. Else a
    local ``--model-repository`` that holds the helper's folder; else the one
    cloud repository of the command line; else the helper's parent folder.

    Raises:
        RepositoryError: several cloud repositories and no parameter to choose.
    """
    if configured:
        return ObjectStoreRepository(configured) if is_cloud(configured) else LocalRepository(pathlib.Path(configured))
    parent = pathlib.Path(own_folder).resolve().parent
    flags = repository_flags(argv or [])
    for flag in flags:
        if not is_cloud(flag) and (pathlib.Path(server_cwd or ".") / flag).resolve() == parent:
            return LocalRepository(parent)
    cloud = [flag for flag in flags if is_cloud(flag)]
    if len(cloud) == 1:
        return ObjectStoreRepository(cloud[0])
    if len(cloud) > 1:
        raise RepositoryError(
            f"the server serves several cloud repositories ({', '.join(cloud)}): set the helper's "
            "model_repository parameter to the one it warms"
        )
    return LocalRepository(parent)
