"""Request shapes: what traffic sent, and what a warmup sample runs.

A shape is a batch size and the dims of every input without the batch dim,
exactly what a ``model_warmup`` sample names. A recorded request and a
sample match when their shapes are equal; the data does not matter for
TorchScript's per-shape work.
"""

import collections
import dataclasses
import pathlib
import time
from typing import Counter, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from tritonclient.grpc import model_config_pb2

from triton_warmup import HELPER_MODEL
from triton_warmup.helper.config_rewrite import CONFIG_FILENAME, find_model_dir, read_config
from triton_warmup.helper.model_kind import kind_of
from triton_warmup.helper.warmup_plan import dims_fit
from triton_warmup.traffic.trace import ReadSummary, TraceId, TracedRequest, TracedTensor, read_requests


@dataclasses.dataclass(frozen=True, order=True)
class Shape:
    """A batch size and each input's dims (batch dim left out), inputs sorted by name."""

    batch_size: int
    inputs: Tuple[Tuple[str, Tuple[int, ...]], ...]

    def describe(self) -> str:
        dims = ", ".join(f"{name} {list(value)}" for name, value in self.inputs)
        return f"batch {self.batch_size}: {dims}"

    def to_dict(self) -> Dict:
        return {"batch_size": self.batch_size, "inputs": {name: list(dims) for name, dims in self.inputs}}


def counted_dicts(shapes: Sequence[Tuple[Shape, int]]) -> List[Dict]:
    """(shape, requests) pairs as JSON: each shape's dict with its ``requests``."""
    return [dict(shape.to_dict(), requests=count) for shape, count in shapes]


def rejected_dicts(rejected: Sequence[Tuple[str, str, int]]) -> List[Dict]:
    """``ModelTraffic.rejected_list`` as JSON."""
    return [{"shapes": raw, "reason": reason, "requests": count} for raw, reason, count in rejected]


def trace_dtype(data_type: int) -> str:
    """A config data type as Triton's trace spells it (``TYPE_INT64`` -> ``INT64``)."""
    name = model_config_pb2.DataType.Name(data_type)[len("TYPE_"):]
    return "BYTES" if name == "STRING" else name


def sample_shape(config: model_config_pb2.ModelConfig, sample: model_config_pb2.ModelWarmup) -> Shape:
    """The request shape a ``model_warmup`` sample runs as: a sequence
    model's control inputs, which its samples carry and requests do not (the
    sequence batcher adds them), are left out."""
    batch_size = max(sample.batch_size, 1) if config.max_batch_size > 0 else 1
    declared = {model_input.name for model_input in config.input}
    return Shape(
        batch_size,
        tuple(sorted((name, tuple(data.dims)) for name, data in sample.inputs.items() if name in declared)),
    )


def warmed_shapes(config: model_config_pb2.ModelConfig) -> Set[Shape]:
    """Every shape the config's ``model_warmup`` runs. A request is warm
    (covered) when its ``request_shape`` is one of them: the one rule that
    ``triton-warmup-coverage`` and the helper's live watch share."""
    return {sample_shape(config, sample) for sample in config.model_warmup}


class RejectedShape(ValueError):
    """A recorded request that no warmup sample of this config can match."""


def _raw(request: TracedRequest) -> str:
    return ", ".join(f"{name} {list(tensor.shape)}" for name, tensor in sorted(request.inputs.items()))


def request_shape(config: model_config_pb2.ModelConfig, request: TracedRequest) -> Shape:
    """The shape of a recorded request, checked against the model's config.

    Raises:
        RejectedShape: the config cannot take it as a warmup sample (an input
            it does not declare, a missing one, another dtype or rank, a
            fixed dim that differs, a batch above ``max_batch_size``, a zero dim).
    """
    declared = {model_input.name: model_input for model_input in config.input}
    unknown = sorted(name for name in request.inputs if name not in declared)
    if unknown:
        raise RejectedShape(f"input '{unknown[0]}' is not in the config")
    missing = [name for name, model_input in declared.items() if name not in request.inputs and not model_input.optional]
    if missing:
        raise RejectedShape(f"input '{missing[0]}' is missing")
    batching = config.max_batch_size > 0
    batch_sizes = set()
    inputs = []
    for name, tensor in sorted(request.inputs.items()):
        model_input = declared[name]
        if tensor.dtype != trace_dtype(model_input.data_type):
            raise RejectedShape(f"input '{name}' is {tensor.dtype}, the config says {trace_dtype(model_input.data_type)}")
        shape = tensor.shape
        expected = list(model_input.dims)
        if len(shape) != len(expected) + (1 if batching else 0):
            raise RejectedShape(
                f"input '{name}' has rank {len(shape)}; the config's dims {expected} "
                + ("and the batch dim make " + str(len(expected) + 1) if batching else f"make {len(expected)}")
            )
        if batching:
            batch_sizes.add(shape[0])
            shape = shape[1:]
        if any(dim < 1 for dim in shape):
            raise RejectedShape(f"input '{name}' has a zero dim")
        if not dims_fit(expected, shape):
            raise RejectedShape(f"input '{name}' dims {list(shape)} do not fit the config's {expected}")
        inputs.append((name, tuple(shape)))
    if len(batch_sizes) > 1:
        raise RejectedShape(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
    batch_size = batch_sizes.pop() if batching else 1
    if batching and not 1 <= batch_size <= config.max_batch_size:
        raise RejectedShape(f"batch size {batch_size} is outside 1..{config.max_batch_size} (max_batch_size)")
    return Shape(batch_size, tuple(inputs))


@dataclasses.dataclass
class ModelTraffic:
    """The recorded requests of one model, counted by shape.

    Attributes:
        requests: every recorded request of the model.
        shapes: requests per shape the config can take.
        recorded: the inputs of the first request of each shape (its data).
        rejected: requests per (raw shapes, reason) the config cannot take.
    """

    name: str
    requests: int = 0
    shapes: Counter[Shape] = dataclasses.field(default_factory=collections.Counter)
    recorded: Dict[Shape, Dict[str, TracedTensor]] = dataclasses.field(default_factory=dict)
    rejected: Counter[Tuple[str, str]] = dataclasses.field(default_factory=collections.Counter)

    def most_frequent(self) -> List[Tuple[Shape, int]]:
        """Shapes with their request counts, most frequent first; ties in shape order."""
        return sorted(self.shapes.items(), key=lambda item: (-item[1], item[0]))

    def rejected_list(self) -> List[Tuple[str, str, int]]:
        """(raw shapes, reason, requests) of the rejected requests, most frequent first."""
        ranked = sorted(self.rejected.items(), key=lambda item: (-item[1], item[0]))
        return [(raw, reason, count) for (raw, reason), count in ranked]


# Child requests whose parent has not been read yet are kept for at most this
# many parents: a trace of a BLS model's children would otherwise fill memory.
_MAX_ORPHANS = 10_000


@dataclasses.dataclass
class EnsembleTraffic:
    """The recorded requests of one ensemble: Triton records the requests it
    sends its composing models as well (with the ensemble's request as their
    parent), and those are what a warmup plans; the ensemble's own are
    counted, and linked to what its members received.

    Attributes:
        members: its composing models (nested ensembles' included).
        requests: recorded requests to the ensemble.
        children: per ensemble request (trace id), what each child request
            was: (member, its shape, or ``None`` when its config cannot take
            it) or, for a nested ensemble, ("", the child's trace id).
    """

    name: str
    members: List[str]
    requests: int = 0
    children: Dict[TraceId, List[Tuple[str, object]]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TrafficProfile:
    """What a trace holds, per model of the repository.

    Attributes:
        models: per model that the trace and the repository share.
        other_models: requests per model the repository lacks (or that the
            command was told to leave out); not planned.
        summary: what reading the files found.
        seconds: how long reading took.
        helper_requests: requests to the warmup helper itself, left out of
            everything else: a server that warms at start records them.
        ensembles: per ensemble of ``configs``, its requests (never planned:
            its composing models are, from their own records).
    """

    models: Dict[str, ModelTraffic]
    other_models: Counter[str]
    summary: ReadSummary
    seconds: float
    helper_requests: int = 0
    ensembles: Dict[str, EnsembleTraffic] = dataclasses.field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(traffic.requests for traffic in self.models.values())


def repository_configs(
    repository: pathlib.Path, names: Optional[Iterable[str]] = None
) -> Dict[str, model_config_pb2.ModelConfig]:
    """The configs of the repository's models (or of ``names``, and the
    composing models of the ensembles among them), keyed by folder name;
    the helper is left out.

    Raises:
        WarmupRequestError: a named model without a folder or a readable config.
    """
    if names is None:
        names = sorted(
            entry.name
            for entry in pathlib.Path(repository).iterdir()
            if (entry / CONFIG_FILENAME).is_file() and not entry.name.startswith(".") and entry.name != HELPER_MODEL
        )
    configs = {}
    wanted = list(names)
    while wanted:
        name = wanted.pop(0)
        if name in configs:
            continue
        _, config = read_config(find_model_dir(pathlib.Path(repository), name))
        config.name = config.name or name
        configs[name] = config
        wanted.extend(step.model for step in kind_of(config).steps)
    return configs


def with_members(names: Iterable[str], configs: Mapping[str, model_config_pb2.ModelConfig]) -> List[str]:
    """``names`` and, for the ensembles among them, their composing models
    (nested ones' included) that ``configs`` holds."""
    chosen: List[str] = []
    wanted = list(names)
    while wanted:
        name = wanted.pop(0)
        if name in chosen or name not in configs:
            continue
        chosen.append(name)
        wanted.extend(step.model for step in kind_of(configs[name]).steps)
    return chosen


def ensemble_members(name: str, configs: Mapping[str, model_config_pb2.ModelConfig]) -> List[str]:
    """An ensemble's composing models, nested ensembles' included, in step order."""
    members: List[str] = []
    for step in kind_of(configs[name]).steps:
        if step.model in configs and kind_of(configs[step.model]).ensemble:
            members.extend(member for member in ensemble_members(step.model, configs) if member not in members)
        if step.model not in members:
            members.append(step.model)
    return members


def profile_traffic(
    paths: Sequence[pathlib.Path],
    configs: Mapping[str, model_config_pb2.ModelConfig],
    keep_data: bool = True,
    show_progress: Optional[bool] = None,
    helper_name: str = HELPER_MODEL,
) -> TrafficProfile:
    """Read the trace files and count each model's requests by shape.

    Only models in ``configs`` are counted by shape; other models go to
    ``other_models``, and the helper's own requests are only tallied. With ``keep_data``
    the first request of every shape keeps its data (for the samples).

    Raises:
        TraceError: a file that cannot be read.
    """
    started = time.perf_counter()
    summary = ReadSummary()
    ensembles = {
        name: EnsembleTraffic(name, ensemble_members(name, configs))
        for name, config in configs.items()
        if kind_of(config).ensemble
    }

    # Looked up for every tensor record: built once. An ensemble's inputs
    # are not needed: only its members' are planned.
    required = {
        name: frozenset(model_input.name for model_input in config.input if not model_input.optional)
        for name, config in configs.items()
        if name not in ensembles
    }

    models = {name: ModelTraffic(name) for name in configs if name not in ensembles}
    other: Counter[str] = collections.Counter()
    helper_requests = 0
    # Which ensemble each traced ensemble request went to, and the children
    # that arrived before their parent's record.
    parents: Dict[int, str] = {}
    orphans: Dict[int, List[Tuple[str, object]]] = {}

    def add_child(parent_id: TraceId, child: Tuple[str, object]) -> None:
        if not ensembles:
            return
        ensemble = parents.get(parent_id)
        if ensemble is None and parent_id not in orphans and len(orphans) >= _MAX_ORPHANS:
            return  # the children of some other parent (a BLS model's): not an ensemble's
        target = ensembles[ensemble].children.setdefault(parent_id, []) if ensemble else orphans.setdefault(parent_id, [])
        target.append(child)

    for request in read_requests(paths, required.get, summary, show_progress):
        if request.model == helper_name:
            helper_requests += 1
            continue
        if request.model in ensembles:
            ensembles[request.model].requests += 1
            parents[request.trace_id] = request.model
            ensembles[request.model].children.setdefault(request.trace_id, []).extend(
                orphans.pop(request.trace_id, [])
            )
            if request.parent_id is not None:
                add_child(request.parent_id, ("", request.trace_id))
            continue
        config = configs.get(request.model)
        if config is None:
            other[request.model] += 1
            continue
        traffic = models[request.model]
        traffic.requests += 1
        try:
            shape = request_shape(config, request)
        except RejectedShape as reason:
            traffic.rejected[(_raw(request), str(reason))] += 1
            shape = None
        if request.parent_id is not None:
            add_child(request.parent_id, (request.model, shape))
        if shape is None:
            continue
        traffic.shapes[shape] += 1
        if keep_data and shape not in traffic.recorded:
            traffic.recorded[shape] = dict(request.inputs)
    seen = {name: traffic for name, traffic in models.items() if traffic.requests}
    used = {name: traffic for name, traffic in ensembles.items() if traffic.requests}
    return TrafficProfile(seen, other, summary, time.perf_counter() - started, helper_requests, used)
