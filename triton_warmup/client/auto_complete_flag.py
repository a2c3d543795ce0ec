"""``triton-warmup-auto-complete REPOSITORY``: print ``--disable-auto-complete-config``
when the repository's models need none of Triton's config auto-complete,
for a launcher or an entrypoint to add to tritonserver's flags.

The rule is ``triton_warmup.auto_complete`` (pure); this reads a repository's
folders for it, a folder or a bucket (whose Python models' files it then
downloads into a private copy, which it removes).
"""

import argparse
import os
import pathlib
import sys
from typing import Dict, List, Mapping, Optional, Sequence

from triton_warmup.auto_complete import (
    DISABLE_FLAG,
    PYTHON_MODEL_FILE,
    AutoCompleteSetting,
    ModelFolder,
    auto_complete_setting,
    user_decided,
)
from triton_warmup.helper.config_rewrite import read_config
from triton_warmup.helper.repository import ObjectStoreRepository, RepositoryError, is_cloud
from triton_warmup.helper.repository_guard import CONFIG_FILENAME


def _python_sources(folder: pathlib.Path, file_name: str) -> Dict[str, str]:
    sources = {}
    for version in sorted(folder.iterdir()):
        path = version / file_name
        if version.is_dir() and version.name.isdigit() and path.is_file():
            sources[version.name] = path.read_text(errors="replace")
    return sources


def read_model_folder(folder: pathlib.Path) -> ModelFolder:
    if not (folder / CONFIG_FILENAME).is_file():
        return ModelFolder(folder.name, None)
    try:
        _, config = read_config(folder)
    except Exception as error:  # noqa: BLE001 - any unreadable config keeps Triton's default
        return ModelFolder(folder.name, None, config_error=str(error))
    sources = {}
    if (config.backend or config.platform) == "python":
        sources = _python_sources(folder, config.default_model_filename or PYTHON_MODEL_FILE)
    return ModelFolder(folder.name, config, python_sources=sources)


def _model_folders(root: pathlib.Path) -> List[pathlib.Path]:
    # Triton takes every folder as a model; hidden ones are the helper's own
    # or a tool's, never a model's.
    return [path for path in sorted(root.iterdir()) if path.is_dir() and not path.name.startswith(".")]


def repository_setting(repository, environ: Mapping[str, str] = os.environ) -> AutoCompleteSetting:
    """The setting for ``repository``, a folder or a bucket URL read with ``environ``'s credentials."""
    if not is_cloud(str(repository)):
        return auto_complete_setting([read_model_folder(folder) for folder in _model_folders(pathlib.Path(repository))])
    copy = ObjectStoreRepository(str(repository), environ).mirror()
    try:
        folders = _model_folders(pathlib.Path(copy.root))
        # A Python model's file decides; the other files stay in the bucket.
        laid_out = [read_model_folder(folder) for folder in folders]
        python_models = [model.name for model in laid_out
                         if model.config is not None and (model.config.backend or model.config.platform) == "python"]
        copy.fetch_model_files(python_models)
        return auto_complete_setting([read_model_folder(folder) if folder.name in python_models else model
                                      for folder, model in zip(folders, laid_out)])
    finally:
        copy.close()


def server_flags(repository, given_flags: Sequence[str], environ: Mapping[str, str] = os.environ) -> AutoCompleteSetting:
    """The flags to add to ``given_flags`` for ``repository``: none where the user chose already."""
    if user_decided(given_flags):
        return AutoCompleteSetting(False, "auto-complete left as the server's own flags set it")
    try:
        return repository_setting(repository, environ)
    except (RepositoryError, OSError) as error:
        # The server reports an unreadable repository itself.
        return AutoCompleteSetting(False, f"Triton's auto-complete kept: the repository was not read: {error}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="triton-warmup-auto-complete",
        description=f"Print {DISABLE_FLAG} when no model of the repository needs Triton's config auto-complete "
        "(nothing otherwise); the reason goes to stderr. Give tritonserver's other flags after '--' to "
        "respect a choice they make already.",
        allow_abbrev=False,
    )
    parser.add_argument("model_repository", help="a folder, or a bucket URL as tritonserver takes it (s3://, gs://, as://)")
    parser.add_argument("server_flags", nargs="*", help="tritonserver's other flags (after '--')")
    args = parser.parse_args(argv)
    if not is_cloud(args.model_repository) and not pathlib.Path(args.model_repository).is_dir():
        print(f"auto-complete left as it is: {args.model_repository} is not a folder", file=sys.stderr)
        return 0
    setting = server_flags(args.model_repository, args.server_flags)
    if setting.disable:
        print(DISABLE_FLAG)
        print(f"{DISABLE_FLAG}: {setting.reason}", file=sys.stderr)
    else:
        print(setting.reason, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
