"""Samples learned from live traffic: how a shape becomes a ``model_warmup``
sample, and the job that adds it to a model's config.

A learned sample is named ``LEARNED_PREFIX`` plus its shape, and comes
after the plan's own samples (``config_rewrite.merge_warmup``), which a
later plan replaces while it keeps these. Its data follows the model's
plan: each input takes the policy of the model's other samples (random,
zeros, or the plan's data file where that file holds enough bytes for the
new dims); an input no sample fills takes the helper's default (floats
random, everything else zeros). Never what a request sent.

Pure: reads the model's folder, writes nothing (``learning`` runs the job).
"""

import pathlib
from typing import Any, Dict, List, Sequence

from tritonclient.grpc import model_config_pb2

from triton_warmup.helper.config_rewrite import CONFIG_FILENAME, WARMUP_DATA_FOLDER, ConfigRewrite, is_learned
from triton_warmup.helper.job_planning import ModelWarmupJob, PlanSettings, instance_count, read_model
from triton_warmup.helper.model_kind import add_controls, kind_of
from triton_warmup.helper.preflight import loaded_versions
from triton_warmup.helper.request import ListedSample
from triton_warmup.helper.warmup_plan import LEARNED_PREFIX, plan_listed_samples, sample_dims_key, tensor_bytes
from triton_warmup.traffic.shapes import Shape

# Learned samples a model may hold at most, unless the helper's
# adapt_max_samples says otherwise: each one is a warmup run at every load.
DEFAULT_MAX_LEARNED = 16


class LearnCapReached(Exception):
    """The model holds as many learned samples as it may."""


def learned_sample_name(shape: Shape) -> str:
    """The sample's name says its shape, so Triton's log ("running warmup
    sample ...") shows what traffic taught the helper."""
    dims = "_".join(f"{name}{'x'.join(str(dim) for dim in value)}" for name, value in shape.inputs)
    return f"{LEARNED_PREFIX}batch{shape.batch_size}_{dims}"


def learned_shapes(config: model_config_pb2.ModelConfig) -> List[model_config_pb2.ModelWarmup]:
    """The config's samples that were learned from traffic."""
    return [sample for sample in config.model_warmup if is_learned(sample)]


def _file_holds(model_dir: pathlib.Path, file_name: str, data_type: int, dims: Sequence[int]) -> bool:
    try:
        size = (model_dir / WARMUP_DATA_FOLDER / file_name).stat().st_size
    except OSError:
        return False
    return data_type == model_config_pb2.DataType.TYPE_STRING or size >= tensor_bytes(data_type, dims)


def plan_data(config: model_config_pb2.ModelConfig, model_dir: pathlib.Path, shape: Shape) -> Dict[str, Any]:
    """Each input's data policy for a learned sample of ``shape``: the one
    the model's latest sample that fills the input uses; a data file only
    where it holds one request's worth at the new dims."""
    dims = dict(shape.inputs)
    declared = {model_input.name: model_input for model_input in config.input}
    policies: Dict[str, Any] = {}
    for sample in reversed(config.model_warmup):
        for name, data in sample.inputs.items():
            if name in policies or name not in dims or name not in declared:
                continue
            if data.random_data:
                policies[name] = "random"
            elif data.zero_data:
                policies[name] = "zero"
            elif data.input_data_file and _file_holds(
                model_dir, data.input_data_file, declared[name].data_type, dims[name]
            ):
                policies[name] = {"file": data.input_data_file}
    return policies


def learned_sample(
    config: model_config_pb2.ModelConfig, model_dir: pathlib.Path, shape: Shape, count: int, max_sample_bytes: int
) -> model_config_pb2.ModelWarmup:
    """The ``model_warmup`` sample that warms ``shape``.

    Raises:
        WarmupRequestError: the shape does not fit the config (its dims, its
            batch size, or ``max_sample_bytes``).
    """
    listed = ListedSample(shape.batch_size, shape.inputs)
    plan = plan_listed_samples(
        config,
        [listed],
        count=count,
        max_sample_bytes=max_sample_bytes,
        data=plan_data(config, model_dir, shape),
        name_of=lambda index, batch_size: learned_sample_name(shape),
    )
    sample = plan.samples[0]
    if config.max_batch_size <= 0:
        # A model without batching: Triton's warmup takes batch size 0 or 1 alike.
        sample.batch_size = 1
    return sample


def plan_learned(
    repository: pathlib.Path,
    name: str,
    shapes: Sequence[Shape],
    settings: PlanSettings,
    max_learned: int = DEFAULT_MAX_LEARNED,
) -> ModelWarmupJob:
    """The job that adds ``shapes`` as learned samples to the model's config,
    keeping every sample it holds as it is.

    Raises:
        WarmupRequestError: a shape does not fit the config.
        LearnCapReached: the config would hold more than ``max_learned``
            learned samples, or more samples than ``settings.max_samples``.
    """
    model_dir, original, config, named = read_model(repository, name)
    kind = kind_of(named)
    known = {sample_dims_key(sample) for sample in named.model_warmup}
    new = []
    data_files: Dict[str, bytes] = {}
    for shape in shapes:
        sample = learned_sample(named, model_dir, shape, settings.count, settings.max_sample_bytes)
        # A sequence model's samples carry its control inputs (model_kind).
        data_files.update(add_controls(sample, kind))
        if sample_dims_key(sample) not in known:
            new.append(sample)
    learned_before = len(learned_shapes(named))
    if new and learned_before + len(new) > max_learned:
        raise LearnCapReached(
            f"'{name}' holds {learned_before} learned samples; the cap is {max_learned} "
            "(warmup_helper parameter adapt_max_samples)"
        )
    if new and len(named.model_warmup) + len(new) > settings.max_samples:
        raise LearnCapReached(
            f"'{name}' holds {len(named.model_warmup)} samples; the cap is {settings.max_samples} "
            "(warmup_helper parameter max_warmup_samples)"
        )
    # Every sample the config holds stays as it is, in its place.
    rewrite = ConfigRewrite.appending(model_dir / CONFIG_FILENAME, original, config, new, data_files=data_files)
    return ModelWarmupJob(
        name=name,
        model_dir=model_dir,
        rewrite=rewrite,
        group_sizes=(),
        batch_sizes=tuple(sorted({max(sample.batch_size, 1) for sample in rewrite.config.model_warmup})),
        samples=len(rewrite.config.model_warmup),
        count=settings.count,
        instances=instance_count(named),
        replan=lambda: plan_learned(repository, name, shapes, settings, max_learned),
        kind=kind,
        versions=tuple(loaded_versions(model_dir, named.version_policy)),
        learned=len(learned_shapes(rewrite.config)),
    )

