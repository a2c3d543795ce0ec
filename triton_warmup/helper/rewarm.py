"""Re-warm a READY model in place: run its new samples on the instances that
serve it, write the config for the next load, and skip the reload.

A reload of a READY model makes Triton load new instances and run every
sample of the file on them while the old instances serve on the same
hardware; on 2 CPUs that took a serving model's p99 from 12.5 ms to 116 ms
for 0.7 s (docs/rewarm.md). When the change is only new ``model_warmup``
samples and the serving version already runs the files and config on disk,
the helper instead sends each new sample ``count`` times per instance to the
serving model, one request at a time, and writes the file afterwards, so
the next load warms from it as before.

Which instance takes a request is Triton's choice: with every instance idle,
it is the one that has waited longest, so requests sent one at a time go
round the instances (measured: a 2-instance model answered from instance 0
and 1 in turn; ``tests/integration/test_rewarm.py`` checks that both ran
every new shape). Under traffic a run may land on an instance twice, or be
batched with a client's request. That is why a model with several instances warms in place only where its instances
share the caches that make a shape warm: TorchScript on Triton's libtorch
backend, on CPU, in one process, where oneDNN keeps its primitives
process-wide (docs/warm-stays-warm.md). Everything else reloads, and the
report says why.

Pure Python: the caller passes the function that sends a request.
"""

import dataclasses
import pathlib
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
from tritonclient.grpc import model_config_pb2

from triton_warmup.helper.compile_status import is_pytorch2
from triton_warmup.helper.config_rewrite import CONFIG_FILENAME
from triton_warmup.helper.model_kind import Infer, correlation_ids, requests_for
from triton_warmup.helper.preflight import describe_sample, loaded_versions, pause_after, unchecked_samples
from triton_warmup.helper.requests_mode import sample_arrays
from triton_warmup.helper.repository_guard import unwritable_reason
from triton_warmup.report import PREFLIGHT_SERVING, one_line
from triton_warmup.threads import runs_in_libtorch

# The share of one instance's time the in-place runs may take: after a run
# that took t seconds the helper waits t * (1 - duty) / duty. Measured with
# bench/rewarm_under_traffic.py (docs/rewarm.md).
DEFAULT_DUTY = 0.25


class InPlaceRunFailed(Exception):
    """A new sample failed on the serving model; nothing was written."""

    def __init__(self, message: str, detail: Optional[str] = None):
        super().__init__(message)
        self.detail = detail


@dataclasses.dataclass
class Rewarm:
    """How the helper re-warms READY models, and what it knows across requests.

    Args:
        infer: sends one request.
        in_place: warm in place where it can (the helper's parameter
            ``rewarm``: ``in_place``, or ``reload`` to always reload).
        duty: the share of an instance's time the in-place runs may take.
    """

    infer: Infer
    in_place: bool = True
    duty: float = DEFAULT_DUTY
    rng: np.random.Generator = dataclasses.field(default_factory=np.random.default_rng)
    # config.pbtxt bytes that an in-place re-warm wrote: the serving version
    # runs the config they hold (but for the samples it already ran).
    written: Dict[str, bytes] = dataclasses.field(default_factory=dict)
    # The samples in-place re-warms ran on each model's serving instances:
    # Triton's served config does not list them until the next load.
    ran: Dict[str, List[model_config_pb2.ModelWarmup]] = dataclasses.field(default_factory=dict)

    def decide(self, job, record, serving_since: Optional[float]) -> Tuple[bool, str]:
        """Whether a READY model's planned config can warm in place, and why.

        Args:
            job: the model's ``ModelWarmupJob``, its config changed.
            record: the preflight's record of this job (``None`` when off).
            serving_since: when the serving version began loading (epoch).
        """
        if not self.in_place:
            return False, "the helper's parameter rewarm is reload"
        if record is None:
            return False, "the preflight is off, so whether the serving version runs the files on disk is unknown"
        if record.how != PREFLIGHT_SERVING:
            return False, record.why or "the serving version may not run the files on disk"
        config_note = config_unchanged(job.rewrite, serving_since, self.written.get(job.name))
        if config_note is not None:
            return False, config_note
        unwritable = unwritable_reason(job.rewrite.path)
        if unwritable is not None:
            return False, f"{unwritable}, so the next load could not warm from the file"
        config = job.rewrite.config
        if is_pytorch2(config):
            return False, (
                "torch.compile compiles each new shape, for seconds; a new instance does that "
                "beside the serving one instead of in it"
            )
        instances_note = instances_refuse(job)
        if instances_note is not None:
            return False, instances_note
        return True, (
            f"only model_warmup changed and the serving version runs the files on disk "
            f"({record.why}); the new samples ran on the serving "
            + ("instance" if job.instances == 1 else f"{job.instances} instances, which share libtorch's caches")
        )

    def forget(self, name: str) -> None:
        """The model was loaded anew: its instances run what its config says."""
        self.written.pop(name, None)
        self.ran.pop(name, None)

    def warm(self, job, served_samples: List[model_config_pb2.ModelWarmup]) -> int:
        """Send every sample of ``job``'s plan that the serving version has not
        run, ``count`` times per instance, one request at a time, paced to
        ``duty``. Returns the runs sent.

        Raises:
            InPlaceRunFailed: a run failed; it names the sample.
        """
        config = job.rewrite.config
        new = unchecked_samples(config, list(served_samples) + self.ran.get(job.name, []))
        versions = loaded_versions(job.model_dir, config.version_policy)
        runs = max(job.count, 1) * max(job.instances, 1)
        ids = correlation_ids(self.rng)
        sent = 0
        for sample in new:
            try:
                arrays = sample_arrays(config, sample, job.model_dir, self.rng)
            except (OSError, ValueError) as error:
                raise InPlaceRunFailed(f"sample '{sample.name}': its data cannot be read: {error}") from None
            for version in versions:
                for _ in range(runs):
                    started = time.monotonic()
                    try:
                        for request in requests_for(job.kind, job.name, version, config, arrays, ids):
                            self.infer(request)
                    except Exception as error:  # noqa: BLE001 - Triton's answer goes into the report
                        shape = describe_sample(config, sample)["inputs"]
                        raise InPlaceRunFailed(
                            f"sample '{sample.name}' ({shape}) failed on the serving model: {one_line(str(error))}",
                            str(error),
                        ) from None
                    sent += 1
                    time.sleep(pause_after(time.monotonic() - started, self.duty))
        self.ran[job.name] = self.ran.get(job.name, []) + new
        return sent


def instances_refuse(job) -> Optional[str]:
    """Why runs sent to the serving model cannot warm every instance of
    ``job``'s model, or ``None`` where they can (one instance, or instances
    that share libtorch's caches on CPU and hold no sequence slots)."""
    if job.instances <= 1:
        return None
    config = job.rewrite.config
    shared = runs_in_libtorch(config) and all(
        group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU for group in config.instance_group
    )
    if not shared:
        return (
            f"its {job.instances} instances keep separate caches, and Triton's scheduler "
            "cannot send a request to a chosen instance"
        )
    if job.kind.sequence:
        return f"its {job.instances} instances hold sequence slots the helper cannot choose"
    return None


def config_unchanged(rewrite, serving_since: Optional[float], written: Optional[bytes]) -> Optional[str]:
    """``None`` when the serving version runs the config on disk but for its
    samples; else why that is not known.

    The file is what the serving version loaded when it is older than that
    load, or when it is what an in-place re-warm wrote. The plan may change
    nothing but ``model_warmup``.
    """
    if written is not None and rewrite.original == written:
        pass
    elif serving_since is None:
        return "when the serving version loaded is unknown, so is whether it runs config.pbtxt as it is"
    else:
        try:
            modified = pathlib.Path(rewrite.path).stat().st_mtime
        except OSError as error:
            return f"reading {CONFIG_FILENAME} failed: {error}"
        if modified > serving_since:
            return f"{CONFIG_FILENAME} changed since the serving version loaded"
    planned, current = (model_config_pb2.ModelConfig(), model_config_pb2.ModelConfig())
    planned.CopyFrom(rewrite.config)
    current.CopyFrom(rewrite.current)
    del planned.model_warmup[:]
    del current.model_warmup[:]
    if planned != current:
        return "the plan changes more than model_warmup"
    return None
