"""A small model repository and a recording model control for the pure tests."""

import gc
import pathlib
import shutil
import types

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


SCRATCH_PREFIX = ".warmup_helper.preflight."


class Infer:
    """Records each request; raises for groups above ``largest_group``."""

    def __init__(self, largest_group=None):
        self.largest_group = largest_group
        self.calls = []

    def __call__(self, request):
        arrays = request.inputs
        self.calls.append((request.model, request.version, {name: array.shape for name, array in arrays.items()}))
        if self.largest_group is not None and arrays["mask"].shape[1] > self.largest_group:
            raise RuntimeError("group size above the model's maximum")
        return [{}]


class ScratchControl(RecordingControl):
    """Also loads scratch copies (recording their folder or their files) and
    unloads; can refuse the scratch load."""

    def __init__(self, ready=(), refuse_scratch=False, served=None):
        super().__init__(ready)
        self.refuse_scratch = refuse_scratch
        self.served = served
        self.files = {}
        self.folders = {}

    def load(self, name, config=None, files=None):
        if not name.startswith(SCRATCH_PREFIX):
            return super().load(name, config)
        self.calls.append(("load scratch", name, config))
        if files is not None:
            self.files[name] = dict(files)
        else:
            folder = self.repository / name
            self.folders[name] = {
                entry.name: str(entry.readlink()) if entry.is_symlink() else entry.read_text()
                for entry in folder.iterdir()
            }
        if self.refuse_scratch:
            raise RuntimeError("failed to load: not a TorchScript archive")

    def unload(self, name):
        self.calls.append(("unload", name))

    def served_config(self, name):
        return self.served


def with_model_file(repository, name="model-v1", content=b"torchscript bytes"):
    (repository / name / "1").mkdir(exist_ok=True)
    (repository / name / "1" / "model.pt").write_bytes(content)
    return repository / name


def job_for(repository, group_max=3, batch_sizes=(1,)):
    with_model_file(repository)
    (job,) = plan_jobs(repository, warmup_request(group_max=group_max, batch_sizes=batch_sizes))
    return job


def control_for(repository, **options):
    control = ScratchControl(**options)
    control.repository = repository
    return control


def frames_left_in_cycles(action):
    """Run ``action`` with the garbage collector off; return what it leaves
    for the collector to free that is a frame, and ``action``'s result.
    A frame in a cycle reaches the helper's ``execute`` and its Triton
    request (triton_warmup/helper/kept_errors.py)."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        result = action()
        gc.collect()
        frames = [item for item in gc.garbage if isinstance(item, types.FrameType)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    return [frame.f_code.co_name for frame in frames], result
