"""Plan every model of a request before anything is written.

Planning reads and checks every target (its folder, its config, the samples
its plan makes, the data files they name), so a bad request changes nothing
on disk. Each model becomes a ``ModelWarmupJob`` that ``load_jobs`` runs.
"""

import dataclasses
import pathlib
from typing import Callable, FrozenSet, List, Optional, Tuple

from tritonclient.grpc import model_config_pb2

from triton_warmup import HELPER_MODEL
from triton_warmup.helper.config_rewrite import CONFIG_FILENAME, ConfigRewrite, find_model_dir, read_config
from triton_warmup.helper.request import (
    NOT_FOUND,
    ModelPlanRequest,
    WarmupRequest,
    WarmupRequestError,
    check_model_name,
    in_request_terms,
)
from triton_warmup.helper.warmup_plan import (
    DEFAULT_MAX_SAMPLE_BYTES,
    DEFAULT_MAX_WARMUP_SAMPLES,
    DEFAULT_WARMUP_COUNT,
    plan_listed_samples,
    plan_warmup,
    tensor_bytes,
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


def _data_file_path(plan_request: ModelPlanRequest, sample_index: Optional[int], input_name: str) -> Tuple:
    """Where the plan named this input's data file: the listed sample's own
    data, the model's, or the defaults'."""
    own = plan_request.plan_path or ("models", plan_request.name)
    if sample_index is not None and input_name in plan_request.samples[sample_index].data:
        return own + ("samples", sample_index, "data", input_name, "file")
    if input_name in plan_request.data:
        return own + ("data", input_name, "file")
    return ("defaults", "data", input_name, "file")


def _check_data_files(model_dir: pathlib.Path, config, plan_request: ModelPlanRequest, plan) -> None:
    """Refuse a data file that is missing, outside ``warmup/`` or too short.

    Triton takes the first bytes of the file for each request of a sample and
    fails the load if the file is shorter than one request's input, so every
    sample that names a file is checked against its own dims.
    """
    folder = (model_dir / WARMUP_DATA_FOLDER).resolve()
    declared = {model_input.name: model_input for model_input in config.input}
    listed = plan_request.samples is not None
    for index, sample in enumerate(plan.samples):
        for input_name, sample_input in sample.inputs.items():
            if not sample_input.HasField("input_data_file"):
                continue
            path = _data_file_path(plan_request, index if listed else None, input_name)
            data_file = (folder / sample_input.input_data_file).resolve()
            if folder not in data_file.parents:
                raise WarmupRequestError(
                    "PLAN", f"{sample_input.input_data_file!r} leads outside {folder}", path=path
                )
            if not data_file.is_file():
                raise WarmupRequestError(
                    "PLAN",
                    f"no data file {data_file} for '{config.name}' input '{input_name}': "
                    f"put it in the model's {WARMUP_DATA_FOLDER}/ folder",
                    NOT_FOUND,
                    path=path,
                )
            if sample_input.data_type == model_config_pb2.DataType.TYPE_STRING:
                continue
            needed = tensor_bytes(declared[input_name].data_type, sample_input.dims)
            size = data_file.stat().st_size
            if size < needed:
                raise WarmupRequestError(
                    "PLAN",
                    f"{data_file} holds {size} bytes; '{config.name}' input '{input_name}' "
                    f"needs {needed} per request for dims {list(sample_input.dims)}",
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
    if plan_request.samples is not None:
        plan = plan_listed_samples(
            named,
            plan_request.samples,
            count=count,
            max_samples=settings.max_samples,
            max_sample_bytes=settings.max_sample_bytes,
            data=plan_request.data,
            default_data=plan_request.default_data,
            plan_path=plan_request.plan_path or ("models", name),
        )
    else:
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
