"""Read, merge and atomically rewrite a model's ``config.pbtxt``.

Configs are parsed into the ``ModelConfig`` protobuf and written back with
``text_format``; the file text is never edited as a string. A rewrite is:

* atomic: the new text goes to a temporary file in the model's folder, is
  flushed to disk and renamed over ``config.pbtxt``, so a reader sees the old
  file or the new one, never half of one;
* idempotent: samples this helper generated earlier are replaced, samples a
  person wrote are kept, samples learned from traffic are kept after the
  plan's own (unless the plan drops them, or its own samples now cover
  their shape), and a config that would not change is not written;
* reversible: ``restore`` puts the original bytes back when the load fails,
  and a copy of them waits in the repository folder until the load has
  settled, so that a crash in between is undone too (``repository_guard``).
"""

import functools
import pathlib
from typing import Dict, Iterable, List, Optional, Tuple

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from triton_warmup.helper.config_cache import cached_config, keep_config
from triton_warmup.helper.repository_guard import CONFIG_FILENAME, backup_path, remove_backup, write_atomically
from triton_warmup.helper.warmup_plan import GENERATED_PREFIX, LEARNED_PREFIX, sample_dims_key
from triton_warmup.helper.request import NOT_FOUND, WarmupRequestError

# Triton reads a sample's input_data_file from this folder of the model.
WARMUP_DATA_FOLDER = "warmup"


def find_model_dir(repository: pathlib.Path, name: str) -> pathlib.Path:
    """Return the folder of model ``name``, which must lie inside ``repository``.

    ``name`` has already passed ``check_model_name``; this also refuses a folder
    that is a symlink leading out of the repository.
    """
    model_dir = repository / name
    if not model_dir.is_dir():
        raise WarmupRequestError(
            "MODELS", f"no model '{name}' in the model repository {repository}", NOT_FOUND
        )
    resolved = model_dir.resolve()
    if resolved.parent != repository.resolve():
        raise WarmupRequestError("MODELS", f"'{name}' leads outside the model repository")
    return model_dir


# Configs parsed lately, by their exact bytes. protobuf's text parser is pure
# Python: a config holding 32 samples took about 15 ms to parse here, and a
# request reads each config twice (the plan, then again under the model's
# lock), every time the helper is asked. The binary form parses in C.
# Bounded, so that warming hundreds of models keeps memory flat.
PARSED_CONFIGS_KEPT = 1024


@functools.lru_cache(maxsize=PARSED_CONFIGS_KEPT)
def _parsed_binary(text: bytes) -> bytes:
    return text_format.Parse(text.decode("utf-8"), model_config_pb2.ModelConfig()).SerializeToString()


def parse_config(text: bytes, source: str) -> model_config_pb2.ModelConfig:
    """Parse config text; raise ``WarmupRequestError`` naming ``source`` if it is not valid.

    Every call returns a new message, which the caller may change.
    """
    try:
        binary = _parsed_binary(text)
    except (text_format.ParseError, UnicodeDecodeError) as error:
        raise WarmupRequestError("MODELS", f"{source} cannot be parsed: {error}") from None
    config = model_config_pb2.ModelConfig()
    config.ParseFromString(binary)
    return config


def render_config(config: model_config_pb2.ModelConfig) -> bytes:
    return text_format.MessageToString(config).encode("utf-8")


def config_json(config: model_config_pb2.ModelConfig) -> str:
    """The config as the JSON string the Model Loading API takes as ``config``."""
    return json_format.MessageToJson(config, preserving_proto_field_name=True, indent=None)


def is_learned(sample: model_config_pb2.ModelWarmup) -> bool:
    """A sample the helper learned from live traffic (``helper/adapt.py``)."""
    return sample.name.startswith(LEARNED_PREFIX)


def merge_warmup(
    config: model_config_pb2.ModelConfig,
    samples: Iterable[model_config_pb2.ModelWarmup],
    learned: Iterable[model_config_pb2.ModelWarmup] = (),
    drop_learned: bool = False,
) -> model_config_pb2.ModelConfig:
    """Return a copy of ``config`` whose generated samples are ``samples``.

    Hand-written samples stay first, in their order; earlier generated ones
    go. Samples learned from traffic come last (Triton runs the samples in
    order, and TorchScript keeps the shapes warmed last fastest: these are
    the shapes live traffic sent): those the config holds, unless
    ``drop_learned`` or a sample before them runs the same shape, then
    ``learned``.
    """
    samples = list(samples)
    merged = model_config_pb2.ModelConfig()
    merged.CopyFrom(config)
    kept = [
        sample
        for sample in config.model_warmup
        if not sample.name.startswith(GENERATED_PREFIX) and not is_learned(sample)
    ]
    covered = {sample_dims_key(sample) for sample in kept + samples}
    old_learned = [] if drop_learned else [sample for sample in config.model_warmup if is_learned(sample)]
    tail = []
    for sample in old_learned + list(learned):
        if sample_dims_key(sample) not in covered:
            covered.add(sample_dims_key(sample))
            tail.append(sample)
    del merged.model_warmup[:]
    merged.model_warmup.extend(kept)
    merged.model_warmup.extend(samples)
    merged.model_warmup.extend(tail)
    return merged


def read_config(model_dir: pathlib.Path) -> Tuple[bytes, model_config_pb2.ModelConfig]:
    """Return the bytes of ``<model_dir>/config.pbtxt`` and their parsed config."""
    path = model_dir / CONFIG_FILENAME
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise WarmupRequestError(
            "MODELS", f"'{model_dir.name}' has no {CONFIG_FILENAME}", NOT_FOUND
        ) from None
    # A restart finds the binary its last load kept (config_cache).
    config = cached_config(model_dir, text)
    return text, config if config is not None else parse_config(text, str(path))


class ConfigRewrite:
    """One planned rewrite of a model's ``config.pbtxt``, with its undo.

    Attributes:
        path: the ``config.pbtxt`` file.
        original: its bytes before the rewrite.
        current: the config those bytes hold.
        config: the merged config that ``apply`` writes.
        data_files: files the samples read that the helper writes (a
            sequence model's control values): path under ``warmup/`` to bytes.
        changed: whether the merged config differs from the file's content,
            or a data file is missing or different.
    """

    def __init__(
        self,
        path: pathlib.Path,
        original: bytes,
        current: model_config_pb2.ModelConfig,
        samples: Iterable[model_config_pb2.ModelWarmup],
        data_files: Optional[Dict[str, bytes]] = None,
        learned: Iterable[model_config_pb2.ModelWarmup] = (),
        drop_learned: bool = False,
    ):
        self.path = path
        self.original = original
        self.current = current
        self.config = merge_warmup(current, samples, learned, drop_learned)
        self.data_files = dict(data_files or {})
        self._settle()

    @classmethod
    def appending(
        cls,
        path: pathlib.Path,
        original: bytes,
        current: model_config_pb2.ModelConfig,
        samples: Iterable[model_config_pb2.ModelWarmup],
        data_files: Optional[Dict[str, bytes]] = None,
    ) -> "ConfigRewrite":
        """The rewrite that adds ``samples`` after every sample the config
        holds, which stay as they are, in their order (a learned shape)."""
        rewrite = cls.__new__(cls)
        rewrite.path, rewrite.original, rewrite.current = path, original, current
        rewrite.config = model_config_pb2.ModelConfig()
        rewrite.config.CopyFrom(current)
        rewrite.config.model_warmup.extend(samples)
        rewrite.data_files = dict(data_files or {})
        rewrite._settle()
        return rewrite

    def _settle(self) -> None:
        # Compare parsed configs, not text: a hand-formatted file that already
        # holds this plan keeps its bytes (and its comments).
        self.changed = self.config != self.current or bool(self.missing_data_files())
        self._applied = False
        self._written: Optional[bytes] = None
        self._created: List[pathlib.Path] = []

    @property
    def backup_path(self) -> pathlib.Path:
        return backup_path(self.path.parent)

    def _data_path(self, name: str) -> pathlib.Path:
        return self.path.parent / WARMUP_DATA_FOLDER / name

    def missing_data_files(self) -> List[str]:
        """The data files that are not on disk with the content planned."""
        missing = []
        for name, content in self.data_files.items():
            path = self._data_path(name)
            try:
                if path.read_bytes() == content:
                    continue
            except OSError:
                pass
            missing.append(name)
        return missing

    def apply(self) -> None:
        """Write the data files the samples need, then the merged config,
        unless it equals what is on disk.

        The original goes to ``backup_path`` first; ``restore`` or ``commit``
        removes it once the load has settled.
        """
        if not self.changed:
            return
        write_atomically(self.backup_path, self.original)
        try:
            for name in self.missing_data_files():
                self._write_data_file(self._data_path(name), self.data_files[name])
            self._written = render_config(self.config)
            write_atomically(self.path, self._written)
        except BaseException:
            self._remove_created()
            remove_backup(self.path.parent)
            raise
        self._applied = True

    def _write_data_file(self, path: pathlib.Path, content: bytes) -> None:
        for folder in reversed(path.parents):
            if not folder.exists():
                folder.mkdir()
                self._created.append(folder)
        existed = path.exists()
        write_atomically(path, content)
        if not existed:
            self._created.append(path)

    def _remove_created(self) -> None:
        """Remove the files and folders ``apply`` created, newest first."""
        for path in reversed(self._created):
            try:
                path.rmdir() if path.is_dir() else path.unlink()
            except OSError:
                pass  # a folder someone else also wrote into stays
        self._created = []

    def restore(self) -> None:
        """Put the original bytes back, if ``apply`` changed the file, and
        remove the data files it created."""
        if self._applied:
            write_atomically(self.path, self.original)
            self._remove_created()
            remove_backup(self.path.parent)
            self._applied = False

    def commit(self) -> None:
        """The load succeeded: keep the new config and drop the backup."""
        # Kept only where the file holds what Triton loaded: not after a
        # load that took the planned config through the load API instead.
        if self._applied:
            kept = (self._written, self.config)
        elif not self.changed:
            kept = (self.original, self.current)
        else:
            kept = None
        if self._applied:
            remove_backup(self.path.parent)
            self._applied = False
            self._created = []
        if kept is not None:
            try:
                keep_config(self.path.parent, *kept)
            except OSError:
                pass  # it only saves the next reader a parse
