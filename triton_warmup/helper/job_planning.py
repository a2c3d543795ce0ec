"""Plan every model of a request before anything is written.

Planning reads and checks every target (its folder, its config, its kind,
the samples its plan makes, the data files they name), so a bad request
changes nothing on disk. Each model Triton warms from its config becomes a
``ModelWarmupJob``; each ensemble an ``EnsembleJob``, whose composing models
get jobs of their own (with the ensemble's shapes, learned while they run:
``ensemble_flow``). ``load_jobs`` runs the ``RequestPlan``.

What is a bad request and what is a model that cannot be warmed: a model the
request names whose plan does not fit its config is a bad request, refused
whole. A model that ``all_models`` or an ensemble brings in, and a model
whose kind Triton's warmup cannot serve (implicit state), fails alone with
its reason, and the others are warmed.
"""

import dataclasses
import pathlib
from typing import Callable, Dict, FrozenSet, Iterator, List, Optional, Tuple

from tritonclient.grpc import model_config_pb2

from triton_warmup import HELPER_MODEL
from triton_warmup.helper.config_rewrite import (
    CONFIG_FILENAME,
    WARMUP_DATA_FOLDER,
    ConfigRewrite,
    find_model_dir,
    is_learned,
    read_config,
)
from triton_warmup.helper.ensemble_flow import EnsembleError, EnsembleFlow
from triton_warmup.helper.kept_errors import without_frames
from triton_warmup.helper.model_kind import ModelKind, add_controls, kind_of
from triton_warmup.helper.preflight import loaded_versions
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
    derived_sample_name,
    plan_listed_samples,
    plan_warmup,
    tensor_bytes,
)
from triton_warmup.report import ModelEntry
from triton_warmup.threads import Machine, ThreadMismatch, largest_first, mismatch

@dataclasses.dataclass(frozen=True)
class PlanSettings:
    """The helper's config parameters that shape and bound every plan."""

    count: int = DEFAULT_WARMUP_COUNT
    max_samples: int = DEFAULT_MAX_WARMUP_SAMPLES
    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES
    # The server's environment and CPUs (threads.Machine.here() in the
    # helper's stub); None checks no thread counts.
    machine: Optional[Machine] = None


@dataclasses.dataclass
class ModelWarmupJob:
    """The rewrite and load planned for one target model.

    ``replan`` reads the config again and plans anew; ``run_job`` calls it
    once it holds the model's lock, because another writer (a second server
    on the same volume) may have changed the file since this plan was made.
    ``with_derived`` plans anew with the samples ensembles send the model.
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
    kind: ModelKind = ModelKind()
    versions: Tuple[str, ...] = ()
    # How the job came to be planned, so that it can be planned again.
    plan_request: Optional[ModelPlanRequest] = None
    # The ensembles whose shapes it warms, and how many samples those added.
    warmed_for: Tuple[str, ...] = ()
    derived_samples: int = 0
    # The server's OpenMP default differs from the model's intra-op count
    # (threads.py): the largest sample goes first, and the report says so.
    threads: Optional[ThreadMismatch] = None
    # Samples learned from traffic that the rewritten config holds after ``samples``.
    learned: int = 0

    # Plans this model anew from another plan request (set by plan_model).
    replan_with: Optional[Callable[[ModelPlanRequest], Callable[[], "ModelWarmupJob"]]] = None

    def with_derived(self, derived, warmed_for: Tuple[str, ...]) -> "ModelWarmupJob":
        """This job planned again with ``derived`` (``ListedSample``) after its own samples.

        Raises:
            WarmupRequestError: the shapes do not fit the config, or the cap.
        """
        request = dataclasses.replace(self.plan_request, derived=tuple(derived))
        return dataclasses.replace(self.replan_with(request)(), warmed_for=warmed_for)


@dataclasses.dataclass
class EnsembleJob:
    """An ensemble of the request: its planned samples flow through its
    composing models (``flow``), and it is loaded once they are warm."""

    name: str
    model_dir: pathlib.Path
    kind: ModelKind
    flow: EnsembleFlow
    samples: int
    batch_sizes: Tuple[int, ...]
    group_sizes: Tuple[int, ...]
    versions: Tuple[str, ...]

    @property
    def members(self) -> List[str]:
        return self.flow.members

    @property
    def nested(self) -> List[str]:
        return self.flow.nested


@dataclasses.dataclass
class RequestPlan:
    """Everything one request will do, planned before any write.

    Iterating over it gives its ``jobs`` (the models whose configs it writes).

    Attributes:
        jobs: models Triton warms from their config, in request order.
        ensembles: ensembles to load once their members are warm; a nested
            ensemble comes before the one that holds it.
        failed: models that cannot be warmed, with why (nothing is done to them).
        order: every model's name in the order the report lists them: as the
            request named them, each ensemble after the members it brought.
    """

    jobs: List[ModelWarmupJob] = dataclasses.field(default_factory=list)
    ensembles: List[EnsembleJob] = dataclasses.field(default_factory=list)
    failed: List[ModelEntry] = dataclasses.field(default_factory=list)
    order: List[str] = dataclasses.field(default_factory=list)

    def __iter__(self) -> Iterator[ModelWarmupJob]:
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> ModelWarmupJob:
        return self.jobs[index]


def instance_count(config: model_config_pb2.ModelConfig) -> int:
    """Instances the config asks for, as far as the config alone tells.

    A group's ``count`` defaults to 1; a group listing ``gpus`` has ``count``
    instances on each. A GPU group without that list, or a config without
    groups, gets instances per available GPU from Triton, which the config
    cannot tell: it is counted as one device (right on a CPU-only server).
    """
    groups = config.instance_group
    if not groups:
        return 1
    return sum(max(group.count, 1) * max(len(group.gpus), 1) for group in groups)


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


def read_model(
    repository: pathlib.Path, name: str
) -> Tuple[pathlib.Path, bytes, model_config_pb2.ModelConfig, model_config_pb2.ModelConfig]:
    """The model's folder, its config's bytes, the config they hold, and the
    config named after the folder when it names nothing (as Triton takes it).

    Raises:
        WarmupRequestError: no such folder or config, or a config that
            names another model.
    """
    model_dir = find_model_dir(repository, name)
    original, config = read_config(model_dir)
    named = model_config_pb2.ModelConfig()
    named.CopyFrom(config)
    # The file itself keeps its content; the error messages and the planner
    # use the name Triton gives the model.
    named.name = named.name or name
    if named.name != name:
        raise WarmupRequestError(
            "MODELS", f"'{name}'/config.pbtxt names the model '{named.name}': Triton refuses it"
        )
    return model_dir, original, config, named


def _own_samples(config, plan_request: ModelPlanRequest, settings: PlanSettings, count: int):
    """The samples the model's own plan makes: a range, or listed samples."""
    if plan_request.samples is not None:
        return plan_listed_samples(
            config,
            plan_request.samples,
            count=count,
            max_samples=settings.max_samples,
            max_sample_bytes=settings.max_sample_bytes,
            data=plan_request.data,
            default_data=plan_request.default_data,
            plan_path=plan_request.plan_path or ("models", plan_request.name),
        )
    return plan_warmup(
        config,
        group_sizes=plan_request.group_sizes,
        batch_sizes=plan_request.batch_sizes,
        feature_dim=plan_request.feature_dim,
        count=count,
        max_samples=settings.max_samples,
        max_sample_bytes=settings.max_sample_bytes,
        data=plan_request.data,
        default_data=plan_request.default_data,
    )


def _with_derived(config, plan, plan_request: ModelPlanRequest, settings: PlanSettings, count: int):
    """The own samples, then each derived shape they do not already warm."""
    if not plan_request.derived:
        return list(plan.samples), 0
    own = {
        (max(sample.batch_size, 1), tuple(sorted((name, tuple(data.dims)) for name, data in sample.inputs.items())))
        for sample in plan.samples
    }
    new = [sample for sample in plan_request.derived if (sample.batch_size, tuple(sorted(sample.inputs))) not in own]
    total = len(plan.samples) + len(new)
    if total > settings.max_samples:
        raise WarmupRequestError(
            "PLAN",
            f"{len(plan.samples)} samples of its own and {len(new)} shapes its ensembles send it make "
            f"{total} for '{config.name}', above the cap of {settings.max_samples} "
            "(warmup_helper config parameter max_warmup_samples)",
        )
    derived = plan_listed_samples(
        config,
        new,
        count=count,
        max_samples=settings.max_samples,
        max_sample_bytes=settings.max_sample_bytes,
        plan_path=("ensembles",),
        name_of=derived_sample_name,
    )
    return list(plan.samples) + list(derived.samples), len(derived.samples)


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
    model_dir, original, config, named = read_model(repository, name)
    kind = kind_of(named)
    count = plan_request.count or settings.count
    plan = _own_samples(named, plan_request, settings, count)
    _check_data_files(model_dir, named, plan_request, plan)
    samples, derived = _with_derived(named, plan, plan_request, settings, count)
    thread_mismatch = mismatch(named, settings.machine) if settings.machine is not None else None
    if thread_mismatch is not None:
        samples = largest_first(samples)
    # Triton's warmup runs outside the sequence batcher: a sequence model's
    # samples carry its control inputs, whose values are data files.
    data_files = {}
    for sample in samples:
        data_files.update(add_controls(sample, kind))
    rewrite = ConfigRewrite(
        model_dir / CONFIG_FILENAME, original, config, samples, data_files=data_files,
        drop_learned=plan_request.drop_learned,
    )
    learned = sum(1 for sample in rewrite.config.model_warmup if is_learned(sample))
    if learned and len(rewrite.config.model_warmup) > settings.max_samples:
        raise WarmupRequestError(
            "PLAN",
            f"{len(samples)} planned samples and {learned} learned from traffic make "
            f"{len(rewrite.config.model_warmup)} for '{name}', above the cap of {settings.max_samples} "
            "(warmup_helper config parameter max_warmup_samples); plan fewer, or drop the learned ones "
            "(learned: drop, triton-warmup --drop-learned)",
        )

    def replan_with(request: ModelPlanRequest):
        return lambda: plan_model(repository, request, settings, from_plan)

    return ModelWarmupJob(
        name=name,
        model_dir=model_dir,
        rewrite=rewrite,
        group_sizes=plan.group_sizes,
        batch_sizes=tuple(sorted({max(sample.batch_size, 1) for sample in samples})) or plan.batch_sizes,
        samples=len(samples),
        count=count,
        instances=instance_count(named),
        replan=replan_with(plan_request),
        kind=kind,
        versions=tuple(loaded_versions(model_dir, named.version_policy)),
        plan_request=plan_request,
        derived_samples=derived,
        replan_with=replan_with,
        threads=thread_mismatch,
        learned=learned,
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


class _Planner:
    """Plans one request: reads each config once, expands ensembles into
    their members, and sorts each model into a job, an ensemble or a failure."""

    def __init__(self, repository, request, settings, helper_name, allowed_models):
        self.repository = repository
        self.request = request
        self.settings = settings
        self.helper_name = helper_name
        self.allowed_models = allowed_models
        self.plan = RequestPlan()
        self._read: Dict[str, Tuple] = {}
        self._placed: Dict[str, str] = {}
        self._all: Optional[List[str]] = None

    def _read_model(self, name: str) -> Tuple:
        """(folder, config, kind, error) of a model, read once."""
        if name not in self._read:
            try:
                check_model_name(name, self.helper_name, self.allowed_models)
                model_dir, _, _, config = read_model(self.repository, name)
                self._read[name] = (model_dir, config, kind_of(config), None)
            except (WarmupRequestError, ValueError) as error:
                self._read[name] = (None, None, None, without_frames(error))
        return self._read[name]

    def lookup(self, name: str) -> Tuple[model_config_pb2.ModelConfig, ModelKind]:
        """A member's config and kind; KeyError with the reason for one the
        repository does not hold, the helper may not warm, or Triton would refuse."""
        _, config, kind, error = self._read_model(name)
        if error is not None:
            raise KeyError(error.message if isinstance(error, WarmupRequestError) else str(error))
        return config, kind

    def add(self, plan_request: ModelPlanRequest, named: bool) -> None:
        """Plan one model. ``named``: the request names it, so a plan that
        does not fit its config refuses the request; otherwise the model
        fails alone."""
        name = plan_request.name
        if name in self._placed:
            return
        self._placed[name] = "planning"
        model_dir, config, kind, error = self._read_model(name)
        if error is not None:
            if named and isinstance(error, WarmupRequestError):
                raise in_request_terms(error, self.request.from_plan, plan_request)
            message = error.message if isinstance(error, WarmupRequestError) else str(error)
            self._fail(name, f"cannot be planned: {message}")
            return
        if kind.cannot_warm():
            self._fail(name, f"cannot be warmed: {kind.cannot_warm()}", kind)
            return
        if kind.ensemble:
            self._add_ensemble(plan_request, model_dir, config, kind, named)
            return
        try:
            job = plan_model(self.repository, plan_request, self.settings, self.request.from_plan)
        except WarmupRequestError as planning:
            if named:
                raise
            self._fail(name, f"cannot be planned: {planning.message}", kind)
            return
        self.plan.jobs.append(job)
        self._placed[name] = "job"

    def _fail(self, name: str, reason: str, kind: Optional[ModelKind] = None) -> None:
        self.plan.failed.append(ModelEntry(name=name, kind=kind.label if kind else None, error=reason))
        self._placed[name] = "failed"

    def _add_ensemble(self, plan_request: ModelPlanRequest, model_dir, config, kind: ModelKind, named: bool) -> None:
        name = plan_request.name
        try:
            own = _own_samples(config, plan_request, self.settings, plan_request.count or self.settings.count)
            _check_data_files(model_dir, config, plan_request, own)
        except WarmupRequestError as error:
            if named:
                raise in_request_terms(error, self.request.from_plan, plan_request) from None
            self._fail(name, f"cannot be planned: {error.message}", kind)
            return
        try:
            flow = EnsembleFlow(name, config, kind, list(own.samples), model_dir, self.lookup)
        except EnsembleError as error:
            self._fail(name, f"cannot be warmed: {error}", kind)
            return
        # Each member once: with its own plan when the request gives it one,
        # else with the ensemble's shapes alone. A nested ensemble is loaded
        # too, after its members.
        for member in flow.members + flow.nested:
            self.add(self.own_plan(member) or _derived_only(member), named=self.named(member))
        self.plan.ensembles.append(
            EnsembleJob(
                name=name,
                model_dir=model_dir,
                kind=kind,
                flow=flow,
                samples=len(own.samples),
                batch_sizes=own.batch_sizes,
                group_sizes=own.group_sizes,
                versions=tuple(loaded_versions(model_dir, config.version_policy)),
            )
        )
        self._placed[name] = "ensemble"

    def named(self, name: str) -> bool:
        return any(plan_request.name == name for plan_request in self.request.plans)

    def own_plan(self, name: str) -> Optional[ModelPlanRequest]:
        """The plan the request gives ``name`` itself, if any."""
        for plan_request in self.request.plans:
            if plan_request.name == name:
                return plan_request
        if self.request.all_models and name in self.all_models():
            return dataclasses.replace(self.request.default_plan, name=name)
        return None

    def all_models(self) -> List[str]:
        if self._all is None:
            self._all = repository_models(self.repository, self.helper_name, self.allowed_models)
        return self._all

    def report_order(self) -> List[str]:
        """As the request names the models, each ensemble after the members
        it brought in, then the rest of the repository for ``all_models``."""
        members = {ensemble.name: ensemble.members + ensemble.nested for ensemble in self.plan.ensembles}
        order: List[str] = []

        def place(name: str) -> None:
            if name in order or name not in self._placed:
                return
            for member in members.get(name, []):
                place(member)
            order.append(name)

        for plan_request in self.request.plans:
            place(plan_request.name)
        for name in self.all_models() if self.request.all_models else []:
            place(name)
        for name in self._placed:
            place(name)
        return order


def _derived_only(name: str) -> ModelPlanRequest:
    """The plan of a composing model the request does not name: no samples
    of its own, only those its ensembles send it."""
    return ModelPlanRequest(name=name, feature_dim=None, group_sizes=range(0), samples=())


def plan_jobs(
    repository: pathlib.Path,
    request: WarmupRequest,
    settings: PlanSettings = PlanSettings(),
    helper_name: str = HELPER_MODEL,
    allowed_models: Optional[FrozenSet[str]] = None,
) -> RequestPlan:
    """Plan every model of ``request``; raise before any write if the request is wrong.

    With ``all_models``, every other model of the repository
    (``repository_models``) is planned with the request's default plan, and a
    model among them that cannot be planned fails alone.
    """
    planner = _Planner(repository, request, settings, helper_name, allowed_models)
    # The models the request names come first, so that their plans, not an
    # ensemble's, decide how they are planned.
    for plan_request in request.plans:
        planner.add(plan_request, named=True)
    if request.all_models:
        names = planner.all_models()
        if not names and not request.plans:
            error = WarmupRequestError(
                "PLAN", f"the model repository {repository} holds no model but the helper", NOT_FOUND, ("all_models",)
            )
            raise in_request_terms(error, request.from_plan)
        for name in names:
            planner.add(dataclasses.replace(request.default_plan, name=name), named=False)
    plan = planner.plan
    plan.order = planner.report_order()
    # A nested ensemble loads before the ensembles that hold it.
    depth = {ensemble.name: len(ensemble.nested) for ensemble in plan.ensembles}
    plan.ensembles.sort(key=lambda ensemble: depth[ensemble.name])
    return plan
