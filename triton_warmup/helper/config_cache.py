"""Parsed configs kept beside the repository's models, so that a restart
does not parse every config's text again.

protobuf's text parser is pure Python: a config holding 32 warmup samples
took about 15 ms to parse here, so a restart on a repository of 96 rewritten
models spent 1.5 s parsing before its first load. The binary form of the
same config parses in C in well under a millisecond.

After a load succeeds, the helper keeps the config it loaded, in binary, in
``<repository>/.<model>.config.binpb`` (a hidden file of the repository
folder, like the preflight record: a file added to the model's folder would
make Triton take the model as modified). The file holds:

* the digest of the config's text, together with the ``ModelConfig``
  schema it was parsed with: it serves that exact text only, so an edited
  config.pbtxt, or another tritonclient, parses its text again;
* the digest of the binary, which catches a damaged file;
* the binary.

It is a cache of a pure function, written atomically under the model's lock
and only after a load, never for a request that was refused. Anything that
does not check out is ignored and the text is parsed; the file is never
needed. Like the preflight record, its digests catch damage, not forgery:
whoever may write the repository folder may write config.pbtxt too.
"""

import hashlib
import pathlib
from typing import Optional

from tritonclient.grpc import model_config_pb2

from triton_warmup.helper.repository_guard import PARSED_CONFIG_SUFFIX, folder_unwritable_reason, write_atomically

_MAGIC = b"triton-warmup parsed config 1\n"
_DIGEST_BYTES = 32
# The schema the binary was made with: a text parses differently under another.
_SCHEMA = hashlib.sha256(model_config_pb2.DESCRIPTOR.serialized_pb).digest()


def cache_path(model_dir: pathlib.Path) -> pathlib.Path:
    return model_dir.parent / f".{model_dir.name}{PARSED_CONFIG_SUFFIX}"


def _text_digest(text: bytes) -> bytes:
    return hashlib.sha256(_SCHEMA + text).digest()


def _read(model_dir: pathlib.Path, text: bytes) -> Optional[bytes]:
    """The binary kept for exactly ``text``; ``None`` when there is none or it does not check out."""
    try:
        content = cache_path(model_dir).read_bytes()
    except OSError:
        return None
    header = len(_MAGIC) + 2 * _DIGEST_BYTES
    if len(content) < header or not content.startswith(_MAGIC):
        return None
    text_digest = content[len(_MAGIC):len(_MAGIC) + _DIGEST_BYTES]
    binary_digest = content[len(_MAGIC) + _DIGEST_BYTES:header]
    binary = content[header:]
    if text_digest != _text_digest(text) or binary_digest != hashlib.sha256(binary).digest():
        return None
    return binary


def cached_config(model_dir: pathlib.Path, text: bytes) -> Optional[model_config_pb2.ModelConfig]:
    """The config ``text`` holds, from the kept binary; ``None`` when it must be parsed."""
    binary = _read(model_dir, text)
    if binary is None:
        return None
    config = model_config_pb2.ModelConfig()
    try:
        config.ParseFromString(binary)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError, among others: parse the text instead
        return None
    return config


def keep_config(model_dir: pathlib.Path, text: bytes, config: model_config_pb2.ModelConfig) -> None:
    """Keep ``config``, parsed from ``text``, for the next reader; call it
    under the model's lock. Does nothing when the file already holds it or
    the repository folder may not be written.

    Raises:
        OSError: the write failed (the old file, if any, stays whole).
    """
    if _read(model_dir, text) is not None or folder_unwritable_reason(model_dir.parent) is not None:
        return
    binary = config.SerializeToString()
    write_atomically(cache_path(model_dir), _MAGIC + _text_digest(text) + hashlib.sha256(binary).digest() + binary)
