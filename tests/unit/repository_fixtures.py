"""A small model repository and a recording model control for the pure tests."""

import pathlib
import shutil

from triton_warmup.helper.job_planning import plan_jobs

from triton_warmup.helper.load_jobs import run_job
from triton_warmup.report import Status
from triton_warmup import HELPER_MODEL
from triton_warmup.client.warm import shape_arrays
from triton_warmup.helper.request import parse_request

PROJECT_REPOSITORY = pathlib.Path(__file__).resolve().parents[2] / "model_repository"


def copy_configs(folder: pathlib.Path) -> pathlib.Path:
    """A copy of the project's configs (no model.pt needed to rewrite them)."""
    for name in ("model-v1", "model-v2", "warmup_helper"):
        (folder / name).mkdir()
        shutil.copy(PROJECT_REPOSITORY / name / "config.pbtxt", folder / name / "config.pbtxt")
    return folder


def snapshot(folder):
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def warmup_request(models=("model-v1",), group_max=3, batch_sizes=None, feature_dims=None):
    """The checked request that the seed's tensors make (MODELS, FEATURE_DIMS, ...)."""
    dims = None if feature_dims is None else [dim or 0 for dim in feature_dims]
    return parse_request(shape_arrays(models, 1, group_max, dims, batch_sizes), HELPER_MODEL)


class RecordingControl:
    """Stands in for Triton's model control in these pure tests: it records the
    calls and can fail a load, the way Triton answers a broken model."""

    def __init__(self, ready=(), fail_load=None):
        self.ready = set(ready)
        self.fail_load = fail_load
        self.calls = []

    def is_ready(self, name):
        return name in self.ready

    def load(self, name, config=None):
        self.calls.append(("load", name) if config is None else ("load", name, config))
        if self.fail_load:
            self.fail_load(name)
        self.ready.add(name)


def apply(repository, request):
    """Plan and run ``request`` the way the helper does, with a control that loads anything."""
    for job in plan_jobs(repository, request):
        assert run_job(job, RecordingControl()).status == Status.READY


