"""Run a request's plan: check the samples, rewrite the config and load
each model; put the config back if the load fails; load each ensemble once
its composing models are warm.

Models go in waves. A model that an ensemble feeds from another model's
outputs waits until that model is warm and has run the ensemble's samples
(``ensemble_flow``), so that it is written and loaded once, with every
shape it will see. Everything else goes in the first wave.

Running takes the model control and the function that sends requests as
arguments (``model_loading.HttpModelControl`` or ``pb_utils`` inside Triton),
which keeps this module free of Triton imports. ``job_planning`` makes the plan.
"""

import concurrent.futures
import contextlib
import dataclasses
import os
import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from triton_warmup.helper.compile_status import CACHE_VARIABLE, is_pytorch2, read_compile_record
from triton_warmup.threads import runs_in_libtorch
from triton_warmup.helper.config_rewrite import ConfigRewrite, config_json, render_config
from triton_warmup.helper.job_planning import EnsembleJob, ModelWarmupJob, RequestPlan
from triton_warmup.helper.model_kind import Infer, correlation_ids
from triton_warmup.helper.preflight import Preflight
from triton_warmup.helper.rewarm import InPlaceRunFailed, Rewarm
from triton_warmup.helper.repository_guard import (
    DEFAULT_LOCK_TIMEOUT_S,
    ModelLockTimeout,
    model_lock,
    remove_stale_temp_files,
    restore_interrupted_rewrite,
    scratch_folder,
    unwritable_reason,
)
from triton_warmup.helper.request import WarmupRequestError
from triton_warmup.report import REWARM_IN_PLACE, REWARM_RELOADED, ModelEntry, Status, Timings, WarmupReport, one_line

# Triton's whole answer when a config it reads from the repository is
# refused; the reason is only in its log.
_POLL_FAILURE = "failed to poll from model repository"
# A model the warmup never started because the server began to shut down.
NOT_STARTED_STOPPING = "not warmed: the server began to stop before this model's turn"
STOPPED_DURING = "not warmed: the server began to stop during its warmup"
# How long a failed load waits before it asks again whether the server stops.
STOPPING_SETTLE_S = 0.5


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
    rewarm: Optional[Rewarm] = None,
    stopping: Optional[Callable[[], bool]] = None,
    load_slot: Optional[threading.Semaphore] = None,
    not_ready_hint: bool = False,
) -> ModelEntry:
    """Check the samples, rewrite the config and load the model; put the
    config back if the load fails. A READY model whose change can warm in
    place (``rewarm.Rewarm.decide``) is not reloaded: its new samples run on
    the serving instances, then the file is written.

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
        rewarm: how a READY model with new samples is re-warmed; ``None``
            reloads it.
        stopping: true once the server shuts down: a wait for the model's
            lock ends then.
        not_ready_hint: the repository index said the model is not READY
            (``run_jobs`` reads it once per wave): no probe of its own. Only
            this answer is taken on trust; a wrong one costs a reload, never
            a request to a model that is gone.
        load_slot: held while Triton works for this model (the preflight's
            runs and loads, the in-place runs, the load); the helper's own
            work (lock, replan, record checks) takes none, so that it goes on
            while other models load (``run_jobs``).

    Everything from reading the config to the end of the load happens under
    the model's lock (``repository_guard.model_lock``), so writers on several
    servers sharing the repository take turns per model. A model that was
    READY keeps serving its previous version when the reload fails, as Triton
    does; the report says so (``serving_previous_version``).

    Returns the model's entry of the report.
    """
    entry = ModelEntry(
        name=job.name,
        kind=job.kind.label,
        versions=list(job.versions),
        warmed_for=list(job.warmed_for),
        derived_samples=job.derived_samples,
        threads=job.threads.note if job.threads else None,
        warmup_samples=job.samples,
        learned_samples=job.learned,
        count=job.count,
        instances=job.instances,
        group_sizes=list(job.group_sizes),
        batch_sizes=list(job.batch_sizes),
        config_changed=job.rewrite.changed,
        timings=Timings(),
    )
    started, started_at = time.monotonic(), time.time()
    if not_ready_hint:
        was_ready = False
    else:
        try:
            was_ready = control.is_ready(job.name)
        except Exception:  # noqa: BLE001 - only the report uses it
            was_ready = None
    try:
        with model_lock(job.model_dir, lock_timeout_s, stopping) as hold:
            try:
                if hold is not None:
                    entry.stale_temp_files_removed = remove_stale_temp_files(job.model_dir)
                    # A writer that died between its rewrite and the end of
                    # its load (Triton crashed) left its backup: undo first.
                    entry.interrupted_rewrite_restored = restore_interrupted_rewrite(job.model_dir)
                    # Another writer may have changed the file while we waited
                    # (what it writes besides, data files and records, comes
                    # with a config change); a file no one touched needs no
                    # second plan.
                    replan_started = time.monotonic()
                    if entry.interrupted_rewrite_restored or not _unchanged_since_planned(job):
                        job = dataclasses.replace(job.replan(), warmed_for=job.warmed_for)
                    entry.timings.replan_s = _since(replan_started)
                    entry.config_changed = job.rewrite.changed
                    entry.warmup_samples = job.samples
                    entry.learned_samples = job.learned
                slot_asked = time.monotonic()
                with load_slot if load_slot is not None else contextlib.nullcontext():
                    entry.timings.slot_s = _since(slot_asked)
                    if stopping is not None and stopping():
                        entry.error = NOT_STARTED_STOPPING
                    elif _preflight_passes(job, control, entry, was_ready, preflight):
                        if not _rewarmed_in_place(job, control, entry, was_ready, preflight, rewarm):
                            _load(job, control, entry, was_ready, preflight, started_at)
                            if rewarm is not None and entry.ready:
                                rewarm.forget(job.name)
            finally:
                if hold is not None:
                    hold.held_until = time.time()
                    entry.lock = hold
    except ModelLockTimeout as error:
        entry.error = str(error)
    except WarmupRequestError as error:
        entry.error = f"config.pbtxt changed while waiting for the lock and cannot be planned: {error.message}"
    entry.timings.settle(time.monotonic() - started)
    if entry.ready:
        entry.seconds_to_ready = round(entry.timings.total_s, 3)
    return entry


def _unchanged_since_planned(job: ModelWarmupJob) -> bool:
    try:
        return job.rewrite.path.read_bytes() == job.rewrite.original
    except OSError:
        return False


def not_ready_models(control, names) -> frozenset:
    """Those of ``names`` the repository index says are not READY, in one
    call; empty where the control cannot list (``pb_utils``) or the listing
    fails (Triton's index race while a folder changes)."""
    index = getattr(control, "repository_index", None)
    if index is None:
        return frozenset()
    try:
        ready = {entry["name"] for entry in index() if entry.get("state") == "READY"}
    except Exception:  # noqa: BLE001 - each job asks on its own instead
        return frozenset()
    return frozenset(name for name in names if name not in ready)


def run_jobs(
    plan: RequestPlan,
    control,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    max_parallel: int = 1,
    preflight: Optional[Preflight] = None,
    infer: Optional[Infer] = None,
    rewarm: Optional[Rewarm] = None,
    on_done: Optional[Callable[[ModelEntry], None]] = None,
    stopping: Optional[Callable[[], bool]] = None,
) -> List[ModelEntry]:
    """Run the whole plan; one entry per model, in the plan's report order.

    Models go in waves, up to ``max_parallel`` in Triton at once within a
    wave (Triton loads different models in parallel when their load requests
    arrive together; each job holds only its own model's lock). Only Triton's
    part of a job waits for one of those slots: up to as many more jobs do
    the helper's own part meanwhile (lock, replan, record checks), so that a
    freed slot starts the next load at once. The helper loads 4
    at once while its preflight is on and 1 while it is off, because Triton
    crashed when a reload ran beside a load whose warmup sample failed
    (docs/safety.md, "Known Triton issues"). ``infer`` sends the ensembles'
    samples through their composing models. ``rewarm`` re-warms READY models
    in place where it can. ``on_done`` is told of each model as it settles
    (the start warmup's progress). Once ``stopping()`` is true (the server
    shuts down), no further model starts; each one left gets an entry that
    says so, and the models already in their load end as they would.
    """
    started = time.monotonic()
    entries: Dict[str, ModelEntry] = {entry.name: entry for entry in plan.failed}
    flows = [ensemble.flow for ensemble in plan.ensembles]
    pending: Dict[str, ModelWarmupJob] = {job.name: job for job in plan.jobs}
    ids = correlation_ids(np.random.default_rng())
    load_slots = threading.BoundedSemaphore(max(1, max_parallel))

    def settled(entry: ModelEntry) -> ModelEntry:
        if on_done is not None:
            on_done(entry)
        return entry

    not_ready: frozenset = frozenset()

    def run_one(job: ModelWarmupJob) -> ModelEntry:
        if stopping is not None and stopping():
            return settled(ModelEntry(name=job.name, kind=job.kind.label, error=NOT_STARTED_STOPPING))
        entry = run_job(job, control, lock_timeout_s, preflight, rewarm, stopping, load_slots, job.name in not_ready)
        if entry.error and entry.error != NOT_STARTED_STOPPING and stopping is not None and _stopped(stopping):
            # What failed was the server going away, not the model.
            entry.error = f"{STOPPED_DURING}: {entry.error}"
            entry.detail = entry.detail and f"{STOPPED_DURING}: {entry.detail}"
        return settled(entry)

    for entry in plan.failed:
        settled(entry)

    def warm(name: str) -> bool:
        return name in entries and entries[name].ready

    def failed(name: str) -> Optional[str]:
        entry = entries.get(name)
        return entry.error if entry is not None and not entry.ready else None

    while pending:
        wave = [
            job for job in pending.values()
            if not any(flow.waits_for_outputs(job.name) for flow in flows) and not _waits_for_libtorch(job, pending)
        ]
        # Ensembles that feed two models into each other leave none free:
        # those go with the shapes known so far.
        wave = wave or list(pending.values())
        for job in wave:
            del pending[job.name]
        planned = [_planned_with_shapes(job, flows) for job in wave]
        entries.update((entry.name, settled(entry)) for entry in planned if isinstance(entry, ModelEntry))
        jobs = [job for job in planned if isinstance(job, ModelWarmupJob)]
        # One listing for the wave instead of a probe per model.
        not_ready = not_ready_models(control, [job.name for job in jobs])
        for entry in run_each(jobs, run_one, 2 * max(1, max_parallel), started):
            entries[entry.name] = entry
        for flow in flows:
            flow.advance(warm, failed, infer, ids)
    for ensemble in plan.ensembles:
        if stopping is not None and stopping():
            stopped = ModelEntry(name=ensemble.name, kind=ensemble.kind.label, error=NOT_STARTED_STOPPING)
            entries[ensemble.name] = settled(stopped)
        else:
            entries[ensemble.name] = settled(load_ensemble(ensemble, control, entries, started))
    return [entries[name] for name in plan.order]


def _stopped(stopping: Callable[[], bool]) -> bool:
    """Whether the server is stopping, asked again a moment later: a load
    cut off by a shutdown can fail (connection reset) just before the server
    stops answering its liveness."""
    if stopping():
        return True
    time.sleep(STOPPING_SETTLE_S)
    return stopping()


def _waits_for_libtorch(job: ModelWarmupJob, pending: Dict[str, ModelWarmupJob]) -> bool:
    """A PyTorch 2 model waits while a TorchScript model of the request is
    still to load. Triton 2.51 creates one 'pytorch' backend per server,
    whichever kind loads first; when the PyTorch 2 runtime comes first, it
    also gets every TorchScript model loaded after it (core
    backend_manager.cc, ``TritonBackendManager::CreateBackend``), and runs
    them in a Python stub instead of the native backend
    (docs/pytorch2.md, "TorchScript and PyTorch 2 models in one server")."""
    return is_pytorch2(job.rewrite.config) and any(
        runs_in_libtorch(other.rewrite.config) for other in pending.values() if other is not job
    )


def _planned_with_shapes(job: ModelWarmupJob, flows):
    """The job planned again with the shapes its ensembles send it, or its
    report entry when those shapes cannot be planned."""
    derived, warmed_for = [], []
    for flow in flows:
        samples = flow.samples_for(job.name)
        if job.name in flow.members:
            warmed_for.append(flow.name)
        derived.extend(samples)
    if not derived and not job.samples:
        # A member with no samples of its own would be READY and cold.
        broken = [flow.error for flow in flows if job.name in flow.members and flow.error]
        return ModelEntry(
            name=job.name,
            kind=job.kind.label,
            warmed_for=warmed_for,
            error="not loaded: it has no samples of its own, and "
            + (f"its ensemble {broken[0]}" if broken else "its ensembles sent it no shapes"),
        )
    if not derived:
        return dataclasses.replace(job, warmed_for=tuple(warmed_for))
    try:
        return job.with_derived(derived, tuple(warmed_for))
    except WarmupRequestError as error:
        return ModelEntry(
            name=job.name,
            kind=job.kind.label,
            warmed_for=warmed_for,
            error=f"the shapes its ensembles send it cannot be planned: {error.message}",
        )


def load_ensemble(ensemble: EnsembleJob, control, entries: Dict[str, ModelEntry], started: float) -> ModelEntry:
    """Load an ensemble whose composing models are all warm; else say which is not."""
    entry = ModelEntry(
        name=ensemble.name,
        kind=ensemble.kind.label,
        versions=list(ensemble.versions),
        members=ensemble.members + ensemble.nested,
        warmup_samples=ensemble.samples,
        group_sizes=list(ensemble.group_sizes),
        batch_sizes=list(ensemble.batch_sizes),
        timings=Timings(),
    )
    load_started = time.monotonic()
    not_warm = [name for name in entry.members if not (name in entries and entries[name].ready)]
    if not_warm:
        entry.error = f"not loaded: its composing model {not_warm[0]} is not warm ({one_line(entries[not_warm[0]].error or 'not loaded')})"
    elif ensemble.flow.error is not None:
        entry.error = f"not loaded: {ensemble.flow.error}"
    else:
        try:
            control.load(ensemble.name)
            entry.status = Status.READY
        except Exception as error:  # noqa: BLE001 - any load failure is reported, not raised
            entry.error = f"load failed: {explain_load_error(str(error))}"
            entry.detail = str(error)
    entry.timings.load_s = _since(load_started)
    entry.timings.settle(entry.timings.load_s)
    entry.finished_s = _since(started)
    if entry.ready:
        # It waited for its members: READY counts from the request's start.
        entry.seconds_to_ready = round(entry.finished_s, 3)
    return entry


def explain_load_error(text: str) -> str:
    """Triton's load error in one line, with what "failed to poll from model
    repository" means: Triton refused the config when it read it, and named
    the reason only in its own log."""
    line = one_line(text)
    if _POLL_FAILURE in line:
        line += (
            " (Triton refused the model's config.pbtxt when it read the repository; the server's log "
            "names the field)"
        )
    return line


def run_each(
    jobs: List, run_one: Callable[[object], ModelEntry], workers: int = 1, started: Optional[float] = None
) -> List[ModelEntry]:
    """``run_one`` for every job, up to ``workers`` at once; entries in
    job order, each with ``finished_s``: when the model settled, counted from
    ``started`` (the request's first job; with jobs one after another, a
    model's own time does not say it)."""
    started = time.monotonic() if started is None else started

    def run(job):
        entry = run_one(job)
        entry.finished_s = _since(started)
        return entry

    if workers <= 1 or len(jobs) <= 1:
        return [run(job) for job in jobs]
    with concurrent.futures.ThreadPoolExecutor(min(workers, len(jobs))) as pool:
        return list(pool.map(run, jobs))


def _since(started: float) -> float:
    return round(time.monotonic() - started, 6)


def _preflight_passes(
    job: ModelWarmupJob, control, entry: ModelEntry, was_ready: Optional[bool], preflight: Optional[Preflight]
) -> bool:
    """Run the preflight where the load would run samples; False (and the
    entry says why) when one failed."""
    if preflight is None:
        return True
    if was_ready and not job.rewrite.changed and preflight.serves_the_files_on_disk(job):
        # Its samples ran on these files when it loaded. Files changed since
        # (a new model.py, say) would meet the samples first in Triton's
        # warmup, where a failing one can crash the server: they get the
        # preflight like a new model.
        return True
    record = entry.preflight = preflight.check(job, control, was_ready)
    entry.timings.preflight_s = record.seconds
    if record.passed:
        return True
    entry.error = f"preflight: {record.error}; nothing was written or loaded"
    entry.detail = record.detail
    entry.serving_previous_version = was_ready
    return False


def _rewarmed_in_place(
    job: ModelWarmupJob,
    control,
    entry: ModelEntry,
    was_ready: Optional[bool],
    preflight: Optional[Preflight],
    rewarm: Optional[Rewarm],
) -> bool:
    """For a READY model with new samples: warm it in place when
    ``rewarm`` may, and say which way it went and why. True when it was
    handled here (warm, or failed with the file untouched); False when it
    is to be reloaded."""
    if not (was_ready and job.rewrite.changed):
        return False
    if rewarm is None:
        entry.rewarm, entry.rewarm_reason = REWARM_RELOADED, "warming in place is not set up for this call"
        return False
    since = preflight.serving_since(job.name)[0] if preflight is not None else None
    in_place, why = rewarm.decide(job, entry.preflight, since)
    entry.rewarm, entry.rewarm_reason = (REWARM_IN_PLACE if in_place else REWARM_RELOADED), why
    if not in_place:
        return False
    started = time.monotonic()
    try:
        entry.in_place_runs = rewarm.warm(job, preflight.served_samples(job, control))
    except InPlaceRunFailed as error:
        entry.error = f"warming in place: {error}; nothing was written, and the serving version is unchanged"
        entry.detail = error.detail
        entry.serving_previous_version = True
        return True
    finally:
        entry.timings.in_place_s = _since(started)
    write_started = time.monotonic()
    try:
        job.rewrite.apply()
        job.rewrite.commit()
    except OSError as error:
        entry.timings.write_s = _since(write_started)
        entry.error = (
            f"writing {job.rewrite.path} failed: {error}; the serving instances ran the new samples, "
            "but the next load will not"
        )
        entry.serving_previous_version = True
        return True
    entry.timings.write_s = _since(write_started)
    entry.config_written = True
    # The serving version runs this file but for the samples it has now run.
    rewarm.written[job.name] = render_config(job.rewrite.config)
    entry.status = Status.READY
    return True


def _load(
    job: ModelWarmupJob,
    control,
    entry: ModelEntry,
    was_ready: Optional[bool],
    preflight: Optional[Preflight],
    started_at: float,
) -> None:
    """Write the config (or fall back to the load API's override) and load;
    ``started_at`` is when the job began (epoch), for what its PyTorch 2
    instances, the preflight's included, reported since."""
    write_started = time.monotonic()
    config_override = _write_or_fall_back(job.rewrite, entry)
    entry.timings.write_s = _since(write_started)
    if config_override is not None and job.rewrite.missing_data_files():
        # The planned config would name files Triton cannot read: its warmup
        # would fail, and a failing warmup can take the server down.
        entry.error = (
            f"its samples read {job.rewrite.missing_data_files()} under warmup/ (the sequence controls' "
            f"values), and they cannot be written: {entry.fallback.split(';')[0]}; nothing was loaded"
        )
        entry.fallback = None
        entry.serving_previous_version = was_ready
        return
    load_started = time.monotonic()
    load_started_at = time.time()
    try:
        control.load(job.name, config=config_override)
    except Exception as error:  # noqa: BLE001 - any load failure is reported, not raised
        entry.timings.load_s = _since(load_started)
        entry.error = f"load failed: {explain_load_error(str(error))}"
        entry.detail = str(error)
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
    if is_pytorch2(job.rewrite.config):
        entry.compile = read_compile_record(
            os.environ.get(CACHE_VARIABLE),
            job.name,
            job.versions or ("1",),
            started_at,
            scratch=scratch_folder(job.model_dir).name,
        )
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
