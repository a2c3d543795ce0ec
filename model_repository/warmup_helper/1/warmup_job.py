"""Plan every model of a request, then rewrite and load them one by one.

Planning reads and checks every target before any file changes, so a bad
request changes nothing on disk. Running takes the model control as an
argument (``model_loading.HttpModelControl`` or ``pb_utils`` inside Triton),
which keeps this module free of Triton imports.
"""

import dataclasses
import pathlib
import time
from typing import Dict, List, Optional, Tuple

from tritonclient.grpc import model_config_pb2

from config_rewrite import ConfigRewrite, find_model_dir, read_config
from warmup_plan import DEFAULT_MAX_WARMUP_SAMPLES, DEFAULT_WARMUP_COUNT, plan_warmup
from warmup_request import WarmupRequest, WarmupRequestError

READY = "READY"
FAILED = "FAILED"


@dataclasses.dataclass
class ModelWarmupJob:
    """The rewrite and load planned for one target model."""

    name: str
    rewrite: ConfigRewrite
    group_sizes: Tuple[int, ...]
    batch_sizes: Tuple[int, ...]
    samples: int
    count: int
    instances: int


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


def plan_jobs(
    repository: pathlib.Path,
    request: WarmupRequest,
    count: int = DEFAULT_WARMUP_COUNT,
    max_samples: int = DEFAULT_MAX_WARMUP_SAMPLES,
) -> List[ModelWarmupJob]:
    """Plan every model of ``request``; raise before any write if one is wrong."""
    jobs = []
    for name, feature_dim in zip(request.models, request.feature_dims):
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
        plan = plan_warmup(
            named,
            group_sizes=request.group_sizes,
            batch_sizes=request.batch_sizes,
            feature_dim=feature_dim,
            count=count,
            max_samples=max_samples,
        )
        rewrite = ConfigRewrite(model_dir / "config.pbtxt", original, config, plan.samples)
        jobs.append(
            ModelWarmupJob(
                name=name,
                rewrite=rewrite,
                group_sizes=plan.group_sizes,
                batch_sizes=plan.batch_sizes,
                samples=len(plan.samples),
                count=count,
                instances=_instance_count(rewrite),
            )
        )
    return jobs


def run_job(job: ModelWarmupJob, control) -> Dict:
    """Rewrite the config and load the model; put the config back if the load fails.

    Args:
        job: from ``plan_jobs``.
        control: has ``load`` and ``is_ready`` taking a model name
            (``model_loading.HttpModelControl`` or the helper's BLS one).

    A model that was READY keeps serving its previous version when the reload
    fails, as Triton does; the report says so (``serving_previous_version``).

    Returns the model's entry of the report.
    """
    entry = {
        "name": job.name,
        "status": FAILED,
        "warmup_samples": job.samples,
        "count": job.count,
        "instances": job.instances,
        "group_sizes": list(job.group_sizes),
        "batch_sizes": list(job.batch_sizes),
        "config_changed": job.rewrite.changed,
        "seconds_to_ready": None,
        "error": None,
    }
    started = time.monotonic()
    try:
        was_ready = control.is_ready(job.name)
    except Exception:  # noqa: BLE001 - only the report uses it
        was_ready = None
    try:
        job.rewrite.apply()
    except OSError as error:
        entry["error"] = f"could not write {job.rewrite.path}: {error}"
        return entry
    try:
        control.load(job.name)
    except Exception as error:  # noqa: BLE001 - any load failure is reported, not raised
        entry["error"] = f"load failed: {error}"
        try:
            job.rewrite.restore()
        except OSError as restore_error:
            entry["error"] += f"; restoring {job.rewrite.path} also failed: {restore_error}"
        else:
            entry["config_restored"] = job.rewrite.changed
        entry["serving_previous_version"] = was_ready
        return entry
    entry["status"] = READY
    entry["seconds_to_ready"] = round(time.monotonic() - started, 3)
    return entry


def build_report(entries: List[Dict], seconds_total: Optional[float] = None) -> Dict:
    return {
        "models": entries,
        "loaded": [entry["name"] for entry in entries if entry["status"] == READY],
        "failed": [entry["name"] for entry in entries if entry["status"] != READY],
        "seconds_total": seconds_total,
    }
