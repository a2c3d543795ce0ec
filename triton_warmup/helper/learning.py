"""Learn one shape for one READY model: check it, warm it in place, and
write it into the config for the next load. Never a reload.

Under the model's lock (``repository_guard.model_lock``, so replicas on one
volume take turns and each adds its shape to what the other wrote):

1. plan again from the file (``learned_samples.plan_learned``);
2. the preflight runs the new sample on the serving model, paced
   (``preflight.Preflight``); a sample that fails is never written nor
   tried again (the caller remembers it);
3. where the serving instances can be warmed in place, the sample runs on
   them as an in-place re-warm runs its new samples (``rewarm.Rewarm.warm``);
4. where the config can be written, it is, atomically.

What happens where a step is not possible (``how_to_learn``):

* the config cannot be written (a read-only volume, a bucket's copy): the
  shape is warmed in place only; the outcome says it will not survive a
  restart;
* a PyTorch 2 model: the serving instance compiled the shape at its first
  request already, so nothing runs in place; the config is written so that
  the next start compiles it in its warmup;
* instances with caches of their own, a sequence model's several
  instances, or model files changed since the serving version loaded: the
  config is written for the next load, and nothing runs in place (a request
  cannot be sent to a chosen instance).

Pure Python: the model control, preflight and re-warm are passed in.
"""

import dataclasses
import pathlib
import time
from typing import Callable, Optional, Tuple

from triton_warmup.helper.compile_status import is_pytorch2
from triton_warmup.helper.config_rewrite import render_config
from triton_warmup.helper.learned_samples import LearnCapReached
from triton_warmup.helper.preflight import Preflight
from triton_warmup.helper.repository_guard import (
    DEFAULT_LOCK_TIMEOUT_S,
    ModelLockTimeout,
    model_lock,
    remove_stale_temp_files,
    restore_interrupted_rewrite,
    unwritable_reason,
)
from triton_warmup.helper.request import WarmupRequestError
from triton_warmup.helper.rewarm import InPlaceRunFailed, Rewarm, instances_refuse
from triton_warmup.report import PREFLIGHT_SERVING, one_line

# Outcomes of one learning.
LEARNED = "learned"  # warm now, and in the config for every next load
IN_PLACE_ONLY = "in_place_only"  # warm now; the config could not be written
NEXT_LOAD = "next_load"  # in the config; the serving instances stay as they are
KNOWN = "known"  # the config covers it already (another replica learned it)
REJECTED = "rejected"  # the shape failed on the model: never tried again
CAPPED = "capped"  # the model holds as many learned samples as it may
NOT_NOW = "not_now"  # not READY, locked by another writer, or the server stops: try later
NOT_POSSIBLE = "not_possible"  # neither warmed in place nor written: never tried again


@dataclasses.dataclass
class LearnOutcome:
    """What one learning did.

    Attributes:
        status: one of the outcomes above.
        reason: why it went that way, in a line.
        in_place_runs: runs sent to the serving instances.
        seconds: from taking the lock to the end.
    """

    status: str
    reason: str
    in_place_runs: int = 0
    seconds: float = 0.0
    written: bool = False

    @property
    def warm_now(self) -> bool:
        return self.status in (LEARNED, IN_PLACE_ONLY)

    @property
    def counted(self) -> bool:
        """A new learned sample: in place, in the config, or both."""
        return self.status in (LEARNED, IN_PLACE_ONLY, NEXT_LOAD)


def how_to_learn(job, record, unwritable: Optional[str]) -> Tuple[bool, bool, str]:
    """Whether to run the new sample on the serving instances, whether to
    write the config, and why.

    Args:
        job: the learning job (``learned_samples.plan_learned``).
        record: the preflight's record of it, ``None`` when the preflight is off.
        unwritable: why the config cannot be written, or ``None``.
    """
    config = job.rewrite.config
    write = unwritable is None
    kept = "written to config.pbtxt for every next load" if write else (
        f"NOT written ({unwritable}): a restart or a new replica starts cold for it"
    )
    if is_pytorch2(config):
        return False, write, (
            "a PyTorch 2 model: its serving instance compiled the shape at the first request already; "
            + kept.replace("written to", "the sample is written to")
        )
    if record is not None and record.how != PREFLIGHT_SERVING:
        return False, write, f"the serving version may not run the files on disk ({record.why}); {kept}"
    instances_note = instances_refuse(job)
    if instances_note is not None:
        return False, write, f"{instances_note}; {kept}"
    where = "the serving instance" if job.instances == 1 else f"the {job.instances} serving instances"
    return True, write, f"warmed in place on {where}; {kept}"


def learn(
    model_dir: pathlib.Path,
    plan: Callable[[], object],
    control,
    rewarm: Rewarm,
    preflight: Optional[Preflight] = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    stopping: Optional[Callable[[], bool]] = None,
) -> LearnOutcome:
    """Learn the shape(s) that ``plan()`` adds; never reloads the model.

    Args:
        model_dir: the model's folder, whose lock it takes.
        plan: makes the learning job (``learned_samples.plan_learned``),
            called under the lock.
        control: ``is_ready(name)`` and, for the preflight, ``served_config(name)``.
        rewarm: runs the sample on the serving instances and remembers what ran.
        preflight: checks the sample on the serving model first; ``None``:
            the in-place run is the check (a failure there writes nothing).
        lock_timeout_s: how long to wait for another writer of the model.
        stopping: true once the server shuts down.
    """
    started = time.monotonic()

    def outcome(status: str, reason: str, runs: int = 0, written: bool = False) -> LearnOutcome:
        return LearnOutcome(status, reason, runs, round(time.monotonic() - started, 3), written)

    try:
        with model_lock(model_dir, lock_timeout_s, stopping) as hold:
            if hold is not None:
                remove_stale_temp_files(model_dir)
                restore_interrupted_rewrite(model_dir)
            # Planned from the file as it is under the lock: what another
            # replica learned stays, and this shape goes after it.
            job = plan()
            try:
                ready = control.is_ready(job.name)
            except Exception:  # noqa: BLE001 - asked again at the next sighting
                ready = False
            if not ready:
                return outcome(NOT_NOW, "the model is not READY")
            served = Preflight.served_samples(job, control)
            new = [
                sample for sample in job.rewrite.config.model_warmup
                if sample.name not in {ran.name for ran in served + rewarm.ran.get(job.name, [])}
            ]
            if not job.rewrite.changed and not new:
                return outcome(KNOWN, "its config covers the shape already, and the serving instances ran it")
            record = None
            if preflight is not None:
                record = preflight.check(job, control, True)
                if not record.passed:
                    return outcome(REJECTED, f"preflight: {record.error}")
            unwritable = unwritable_reason(job.rewrite.path)
            if hold is None and unwritable is None:
                # model_lock found the folder unwritable a moment ago.
                unwritable = f"{model_dir} cannot hold a lock file"
            run, write, why = how_to_learn(job, record, unwritable)
            write = write and job.rewrite.changed
            runs = 0
            if run:
                try:
                    runs = rewarm.warm(job, served)
                except InPlaceRunFailed as error:
                    return outcome(REJECTED, f"warming in place: {error}; nothing was written")
            if write:
                try:
                    job.rewrite.apply()
                    job.rewrite.commit()
                except OSError as error:
                    return outcome(
                        IN_PLACE_ONLY if runs else NOT_POSSIBLE,
                        f"writing {job.rewrite.path} failed: {error}; a restart starts cold for it",
                        runs,
                    )
                # The serving version runs this file but for the samples it has now run.
                rewarm.written[job.name] = render_config(job.rewrite.config)
            if not job.rewrite.changed:
                if runs:
                    return outcome(LEARNED, "its config holds the shape already (another writer learned it); "
                                   "warmed in place here", runs)
                return outcome(KNOWN, "its config covers the shape already")
            if run and write:
                return outcome(LEARNED, why, runs, True)
            if run:
                return outcome(IN_PLACE_ONLY, why, runs)
            if write:
                return outcome(NEXT_LOAD, why, 0, True)
            return outcome(NOT_POSSIBLE, why)
    except ModelLockTimeout as error:
        return outcome(NOT_NOW, one_line(str(error)))
    except LearnCapReached as error:
        return outcome(CAPPED, str(error))
    except WarmupRequestError as error:
        return outcome(NOT_POSSIBLE, f"the shape cannot be planned: {error.message}")
