"""Plan every model of a request, then rewrite and load them one by one.

Planning reads and checks every target before any file changes, so a bad
request changes nothing on disk. Running takes the model control as an
argument (``model_loading.HttpModelControl`` or ``pb_utils`` inside Triton),
which keeps this module free of Triton imports.
"""

import concurrent.futures
import dataclasses
import pathlib
import time
from typing import Callable, FrozenSet, List, Optional, Tuple

from tritonclient.grpc import model_config_pb2

from triton_warmup import HELPER_MODEL
from triton_warmup.report import ModelEntry, Status, Timings, WarmupReport

from triton_warmup.helper.config_rewrite import CONFIG_FILENAME, ConfigRewrite, config_json, find_model_dir, read_config
from triton_warmup.helper.preflight import Preflight
from triton_warmup.helper.repository_guard import (
    DEFAULT_LOCK_TIMEOUT_S,
    ModelLockTimeout,
    model_lock,
    remove_stale_temp_files,
    restore_interrupted_rewrite,
    unwritable_reason,
)
from triton_warmup.helper.warmup_plan import (
    DEFAULT_MAX_SAMPLE_BYTES,
    DEFAULT_MAX_WARMUP_SAMPLES,
    DEFAULT_WARMUP_COUNT,
    data_policies,
    input_bytes,
    plan_warmup,
)
from triton_warmup.helper.request import (
    NOT_FOUND,
    ModelPlanRequest,
    WarmupRequest,
    WarmupRequestError,
    check_model_name,
    in_request_terms,
)



@dataclasses.dataclass(frozen=True)
class PlanSettings:
    """The helper's config parameters that shape and bound every plan."""

    count: int = DEFAULT_WARMUP_COUNT
    max_samples: int = DEFAULT_MAX_WARMUP_SAMPLES
    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES


@dataclasses.dataclass
class ModelWarmupJob:
    """The rewrite and load planned for one target model.

    ``replan`` reads the config again and plans anew; ``run_job`` calls it
    once it holds the model's lock, because another writer (a second server
    on the same volume) may have changed the file since this plan was made.
    """

    name: str
    model_dir: pathlib.Path
    rewrite: ConfigRewrite
    group_sizes: Tuple[int, ...]
    batch_sizes: Tuple[int, ...]
    samples: int
    count: int
    instances: int
    replan: Callable[[], "ModelWarmupJob"]


def _instance_count(rewrite: ConfigRewrite) -> int:
    """Instances the config asks for, as far as the config alone tells.

    A group's ``count`` defaults to 1; a group listing ``gpus`` has ``count``
    instances on each. A GPU group without that list, or a config without
    groups, gets instances per available GPU from Triton, which the config
    cannot tell: it is counted as one device (right on a CPU-only server).
    """
    groups = rewrite.config.instance_group
    if not groups:
        return 1
    return sum(max(group.count, 1) * max(len(group.gpus), 1) for group in groups)


# Triton reads a sample's input_data_file from this folder of the model.
WARMUP_DATA_FOLDER = "warmup"


def _check_data_files(model_dir: pathlib.Path, config, plan_request: ModelPlanRequest, plan) -> None:
    """Refuse a data file that is missing, outside ``warmup/`` or too short.

    Triton takes the first bytes of the file for each request of a sample and
    fails the load if the file is shorter than one request's input, so the
    largest group size sets the size the file needs.
    """
    policies = data_policies(config, plan_request.data, plan_request.default_data)
    folder = (model_dir / WARMUP_DATA_FOLDER).resolve()
    for model_input in config.input:
        policy = policies[model_input.name]
        if not isinstance(policy, dict):
            continue
        # A file named in the model's own data, or in the plan's defaults.
        own = plan_request.plan_path or ("models", plan_request.name)
        owner = own if model_input.name in plan_request.data else ("defaults",)
        path = owner + ("data", model_input.name, "file")
        data_file = (folder / policy["file"]).resolve()
        if folder not in data_file.parents:
            raise WarmupRequestError("PLAN", f"{policy['file']!r} leads outside {folder}", path=path)
        if not data_file.is_file():
            raise WarmupRequestError(
                "PLAN",
                f"no data file {data_file} for '{config.name}' input '{model_input.name}': "
                f"put it in the model's {WARMUP_DATA_FOLDER}/ folder",
                NOT_FOUND,
                path=path,
            )
        if model_input.data_type == model_config_pb2.DataType.TYPE_STRING:
            continue
        needed = input_bytes(model_input, plan.group_sizes[-1], plan.feature_dim)
        size = data_file.stat().st_size
        if size < needed:
            raise WarmupRequestError(
                "PLAN",
                f"{data_file} holds {size} bytes; '{config.name}' input '{model_input.name}' "
                f"needs {needed} per request at group size {plan.group_sizes[-1]}",
                path=path,
            )


def plan_model(
    repository: pathlib.Path,
    plan_request: ModelPlanRequest,
    settings: PlanSettings,
    from_plan: bool = True,
) -> ModelWarmupJob:
    """Read one model's config and plan its warmup; raise if it cannot be
    planned, in the terms of the request's form (``from_plan``)."""
    try:
        return _plan_model(repository, plan_request, settings, from_plan)
    except WarmupRequestError as error:
        raise in_request_terms(error, from_plan, plan_request) from None


def _plan_model(
    repository: pathlib.Path,
    plan_request: ModelPlanRequest,
    settings: PlanSettings,
    from_plan: bool,
) -> ModelWarmupJob:
    name = plan_request.name
    model_dir = find_model_dir(repository, name)
    original, config = read_config(model_dir)
    named = model_config_pb2.ModelConfig()
    named.CopyFrom(config)
    # Triton takes a config without a name from its folder; so do the
    # error messages here. The file itself keeps its content.
    named.name = named.name or name
    if named.name != name:
        raise WarmupRequestError(
            "MODELS", f"'{name}'/config.pbtxt names the model '{named.name}': Triton refuses it"
        )
    count = plan_request.count or settings.count
    plan = plan_warmup(
        named,
        group_sizes=plan_request.group_sizes,
        batch_sizes=plan_request.batch_sizes,
        feature_dim=plan_request.feature_dim,
        count=count,
        max_samples=settings.max_samples,
        max_sample_bytes=settings.max_sample_bytes,
        data=plan_request.data,
        default_data=plan_request.default_data,
    )
    _check_data_files(model_dir, named, plan_request, plan)
    rewrite = ConfigRewrite(model_dir / CONFIG_FILENAME, original, config, plan.samples)
    return ModelWarmupJob(
        name=name,
        model_dir=model_dir,
        rewrite=rewrite,
        group_sizes=plan.group_sizes,
        batch_sizes=plan.batch_sizes,
        samples=len(plan.samples),
        count=count,
        instances=_instance_count(rewrite),
        replan=lambda: plan_model(repository, plan_request, settings, from_plan),
    )


def repository_models(
    repository: pathlib.Path, helper_name: str, allowed_models: Optional[FrozenSet[str]] = None
) -> List[str]:
    """Every model folder of the repository a request may warm, sorted.

    A model folder holds a ``config.pbtxt``; the helper itself, hidden
    folders, symlinks leading out of the repository and models outside
    ``allowed_models`` are left out.
    """
    names = []
    for entry in sorted(repository.iterdir()):
        if not (entry / CONFIG_FILENAME).is_file() or entry.resolve().parent != repository.resolve():
            continue
        try:
            check_model_name(entry.name, helper_name, allowed_models)
        except WarmupRequestError:
            continue
        names.append(entry.name)
    return names


def plan_jobs(
    repository: pathlib.Path,
    request: WarmupRequest,
    settings: PlanSettings = PlanSettings(),
    helper_name: str = HELPER_MODEL,
    allowed_models: Optional[FrozenSet[str]] = None,
) -> List[ModelWarmupJob]:
    """Plan every model of ``request``; raise before any write if one is wrong.

    With ``all_models``, every other model of the repository
    (``repository_models``) is planned with the request's default plan.
    """
    plan_requests = list(request.plans)
    if request.all_models:
        named = set(request.models)
        plan_requests += [
            dataclasses.replace(request.default_plan, name=name)
            for name in repository_models(repository, helper_name, allowed_models)
            if name not in named
        ]
        if not plan_requests:
            error = WarmupRequestError(
                "PLAN", f"the model repository {repository} holds no model but the helper", NOT_FOUND, ("all_models",)
            )
            raise in_request_terms(error, request.from_plan)
    return [plan_model(repository, plan_request, settings, request.from_plan) for plan_request in plan_requests]


def _write_or_fall_back(rewrite: ConfigRewrite, entry: ModelEntry) -> Optional[str]:
    """Write the planned config; return it as JSON for the load API instead
    when the file cannot or may not be written.

    The old file stays whole in every case: ``write_atomically`` renames a
    complete temporary file over it or removes the temporary file.
    """
    if not rewrite.changed:
        return None
    reason = unwritable_reason(rewrite.path)
    if reason is None:
        try:
            rewrite.apply()
        except OSError as error:
            reason = f"writing {rewrite.path} failed: {error}"
        else:
            entry.config_written = True
            return None
    entry.fallback = (
        f"{reason}; loaded with the planned config passed to the Model Loading API instead. "
        "config.pbtxt is unchanged, so the warmup samples apply until the model is next "
        "loaded from its file"
    )
    return config_json(rewrite.config)


def run_job(
    job: ModelWarmupJob,
    control,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    preflight: Optional[Preflight] = None,
) -> ModelEntry:
    """Check the samples, rewrite the config and load the model; put the
    config back if the load fails.

    Args:
        job: from ``plan_jobs``.
        control: has ``load(name, config=None, files=None)``, ``unload(name)``
            and ``is_ready(name)`` (``model_loading.HttpModelControl`` or the
            helper's BLS one).
        lock_timeout_s: how long to wait for another writer of the same model.
        preflight: when given, every sample not known to pass runs once as a
            request first (``preflight.Preflight``); one that fails stops the
            job before anything is written or loaded. It runs whenever the
            load would run samples: the config changes, or the model is not
            READY (Triton then runs every sample of the file).

    Everything from reading the config to the end of the load happens under
    the model's lock (``repository_guard.model_lock``), so writers on several
    servers sharing the repository take turns per model. A model that was
    READY keeps serving its previous version when the reload fails, as Triton
    does; the report says so (``serving_previous_version``).

    Returns the model's entry of the report.
    """
    entry = ModelEntry(
        name=job.name,
        warmup_samples=job.samples,
        count=job.count,
        instances=job.instances,
        group_sizes=list(job.group_sizes),
        batch_sizes=list(job.batch_sizes),
        config_changed=job.rewrite.changed,
        timings=Timings(),
    )
    started = time.monotonic()
    try:
        was_ready = control.is_ready(job.name)
    except Exception:  # noqa: BLE001 - only the report uses it
        was_ready = None
    try:
        with model_lock(job.model_dir, lock_timeout_s) as hold:
            try:
                if hold is not None:
                    entry.stale_temp_files_removed = remove_stale_temp_files(job.model_dir)
                    # A writer that died between its rewrite and the end of
                    # its load (Triton crashed) left its backup: undo first.
                    entry.interrupted_rewrite_restored = restore_interrupted_rewrite(job.model_dir)
                    # Another writer may have changed the file while we waited.
                    replan_started = time.monotonic()
                    job = job.replan()
                    entry.timings.replan_s = _since(replan_started)
                    entry.config_changed = job.rewrite.changed
                if _preflight_passes(job, control, entry, was_ready, preflight):
                    _load(job, control, entry, was_ready, preflight)
            finally:
                if hold is not None:
                    hold.held_until = time.time()
                    entry.lock = hold
    except ModelLockTimeout as error:
        entry.error = str(error)
    except WarmupRequestError as error:
        entry.error = f"config.pbtxt changed while waiting for the lock and cannot be planned: {error}"
    if entry.ready:
        entry.seconds_to_ready = round(time.monotonic() - started, 3)
    return entry


def run_jobs(
    jobs: List[ModelWarmupJob],
    control,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    max_parallel: int = 1,
    preflight: Optional[Preflight] = None,
) -> List[ModelEntry]:
    """``run_job`` for every job, up to ``max_parallel`` at once; entries in job order.

    Triton loads different models in parallel when their load requests arrive
    together; each job holds only its own model's lock, so jobs for different
    models do not wait for each other. The helper loads 4 at once while its
    preflight is on and 1 while it is off, because Triton crashed when a
    reload ran beside a load whose warmup sample failed (docs/safety.md, "Known
    Triton issues").
    """
    return run_each(jobs, lambda job: run_job(job, control, lock_timeout_s, preflight), max_parallel)


def run_each(
    jobs: List[ModelWarmupJob], run_one: Callable[[ModelWarmupJob], ModelEntry], max_parallel: int = 1
) -> List[ModelEntry]:
    """``run_one`` for every job, up to ``max_parallel`` at once; entries in
    job order, each with ``finished_s``: when the model settled, counted from
    the first job (with jobs one after another, a model's own time does not
    say it)."""
    started = time.monotonic()

    def run(job):
        entry = run_one(job)
        entry.finished_s = _since(started)
        return entry

    if max_parallel <= 1 or len(jobs) <= 1:
        return [run(job) for job in jobs]
    with concurrent.futures.ThreadPoolExecutor(min(max_parallel, len(jobs))) as pool:
        return list(pool.map(run, jobs))


def _since(started: float) -> float:
    return round(time.monotonic() - started, 6)


def _preflight_passes(
    job: ModelWarmupJob, control, entry: ModelEntry, was_ready: Optional[bool], preflight: Optional[Preflight]
) -> bool:
    """Run the preflight where the load would run samples; False (and the
    entry says why) when one failed."""
    if preflight is None or (was_ready and not job.rewrite.changed):
        return True
    record = entry.preflight = preflight.check(job, control, was_ready)
    entry.timings.preflight_s = record.seconds
    if record.passed:
        return True
    entry.error = f"preflight: {record.error}; nothing was written or loaded"
    entry.serving_previous_version = was_ready
    return False


def _load(
    job: ModelWarmupJob, control, entry: ModelEntry, was_ready: Optional[bool], preflight: Optional[Preflight]
) -> None:
    write_started = time.monotonic()
    config_override = _write_or_fall_back(job.rewrite, entry)
    entry.timings.write_s = _since(write_started)
    load_started = time.monotonic()
    load_started_at = time.time()
    try:
        control.load(job.name, config=config_override)
    except Exception as error:  # noqa: BLE001 - any load failure is reported, not raised
        entry.timings.load_s = _since(load_started)
        entry.error = f"load failed: {error}"
        try:
            job.rewrite.restore()
        except OSError as restore_error:
            entry.error += f"; restoring {job.rewrite.path} also failed: {restore_error}"
        else:
            entry.config_restored = entry.config_written
        entry.serving_previous_version = was_ready
        return
    entry.timings.load_s = _since(load_started)
    entry.status = Status.READY
    if preflight is not None:
        # The serving version now runs the files as they were when the load began.
        preflight.loaded_at[job.name] = load_started_at
    try:
        job.rewrite.commit()
    except OSError as error:
        # The model is READY with the new config either way; a backup left
        # behind makes the next writer put the old config back.
        entry.error = f"removing {job.rewrite.backup_path} failed: {error}"


def build_report(
    entries: List[ModelEntry], seconds_total: Optional[float] = None, plan_s: Optional[float] = None
) -> WarmupReport:
    """The REPORT output; ``plan_s`` is the time spent checking the request
    and planning every model before the first write."""
    return WarmupReport(models=list(entries), seconds_total=seconds_total, plan_s=plan_s)
