"""``triton-warmup-threads REPOSITORY``: the OpenMP thread count that keeps a
repository's libtorch models warm, for a launcher or an entrypoint to set.

The counting rule is ``triton_warmup.threads`` (pure); this command reads the
repository's configs with the helper's own reader, a folder or a bucket.
"""

import argparse
import os
import pathlib
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from tritonclient.grpc import model_config_pb2

from triton_warmup.helper.config_rewrite import read_config
from triton_warmup.helper.repository import ObjectStoreRepository, RepositoryError, is_cloud
from triton_warmup.threads import OPENMP_VARIABLE, Machine, OpenMPSetting, openmp_setting


def repository_configs(repository, environ: Mapping[str, str] = os.environ) -> List[model_config_pb2.ModelConfig]:
    """The configs of a repository's models (a folder, or a bucket URL read
    with ``environ``'s credentials); unreadable ones are left out (Triton
    reports those when it loads them)."""
    copy = ObjectStoreRepository(str(repository), environ).mirror() if is_cloud(str(repository)) else None
    try:
        configs = []
        for folder in sorted(pathlib.Path(copy.root if copy else repository).iterdir()):
            try:
                _, config = read_config(folder)
            except Exception:  # noqa: BLE001 - any unreadable config is Triton's to report
                continue
            if not config.name:
                config.name = folder.name
            configs.append(config)
        return configs
    finally:
        if copy is not None:
            copy.close()


def server_environment(repository, environ: Mapping[str, str]) -> Tuple[Dict[str, str], OpenMPSetting]:
    """``environ`` with ``OMP_NUM_THREADS`` set for ``repository``'s models where they need it."""
    machine = Machine.here(environ)
    try:
        configs = repository_configs(repository, environ)
    except RepositoryError as error:
        # The server reports an unreadable repository itself.
        return dict(environ), OpenMPSetting(None, f"the repository's configs were not read: {error}")
    setting = openmp_setting(configs, machine)
    updated = dict(environ)
    if setting.value is not None:
        updated[OPENMP_VARIABLE] = str(setting.value)
    return updated, setting


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="triton-warmup-threads",
        description=f"Print the {OPENMP_VARIABLE} that keeps the repository's libtorch models warm "
        "(nothing when none is needed); the reason goes to stderr.",
        allow_abbrev=False,
    )
    parser.add_argument("model_repository", help="a folder, or a bucket URL as tritonserver takes it (s3://, gs://, as://)")
    args = parser.parse_args(argv)
    if not is_cloud(args.model_repository) and not pathlib.Path(args.model_repository).is_dir():
        print(f"{OPENMP_VARIABLE} left as it is: {args.model_repository} is not a folder", file=sys.stderr)
        return 0
    _, setting = server_environment(args.model_repository, os.environ)
    if setting.value is not None:
        print(setting.value)
        print(f"{OPENMP_VARIABLE}={setting.value}: {setting.reason}", file=sys.stderr)
    else:
        print(f"{OPENMP_VARIABLE} left as it is: {setting.reason}", file=sys.stderr)
    return 0



if __name__ == "__main__":
    sys.exit(main())
