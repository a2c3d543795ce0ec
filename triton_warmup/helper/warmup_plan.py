"""Plan the ``model_warmup`` samples for one model from its own config.

Pure: takes a parsed ``ModelConfig`` and returns ``ModelWarmup`` messages.
Nothing about the target model is hard-coded; input names, data types and
fixed dimensions all come from the config.
"""

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from tritonclient.grpc import model_config_pb2

from triton_warmup.helper.request import ListedSample, WarmupRequestError

DataType = model_config_pb2.DataType

# Measured on the CPU with the example TorchScript models (docs/request.md, "Why count
# is 3"): at a new input shape the first call runs the profiling executor
# (tens of ms), the second compiles the optimized graph (about 1 ms) and only
# the third runs at steady speed. Three runs per sample leave the first real
# request at each shape on the optimized graph.
DEFAULT_WARMUP_COUNT = 3

# A cap on samples per model, so that a request for group sizes 1..10**9 is
# refused at once instead of exhausting memory. The helper's config can change
# it with the parameter ``max_warmup_samples``.
DEFAULT_MAX_WARMUP_SAMPLES = 1024

# A cap on the bytes of one sample (all inputs, times its batch size): a
# request for group size 10**9 would have Triton allocate gigabytes per sample.
# The helper's config can change it with the parameter ``max_sample_bytes``.
DEFAULT_MAX_SAMPLE_BYTES = 64 * 1024 * 1024

# Samples whose name starts with this were written by the helper and are
# replaced on every rewrite; any other sample was written by a person and kept.
GENERATED_PREFIX = "warmup_helper:"

# Samples the helper learned from live traffic (helper/adapt.py). A plan
# replaces the generated samples but keeps these, after them, unless the
# request says ``learned: drop``.
LEARNED_PREFIX = "warmup_learned:"

# Float inputs get random values. Integer, bool and string inputs get zeros, so
# an input that holds token ids or indices never sees an out-of-range value.
_RANDOM_DATA_TYPES = frozenset(
    {DataType.TYPE_FP16, DataType.TYPE_FP32, DataType.TYPE_FP64, DataType.TYPE_BF16}
)

VARIABLE_DIM = -1

# Bytes per element; a string element counts its 4-byte length prefix (the
# samples hold empty strings).
_ELEMENT_BYTES = {
    DataType.TYPE_BOOL: 1,
    DataType.TYPE_UINT8: 1,
    DataType.TYPE_INT8: 1,
    DataType.TYPE_UINT16: 2,
    DataType.TYPE_INT16: 2,
    DataType.TYPE_FP16: 2,
    DataType.TYPE_BF16: 2,
    DataType.TYPE_UINT32: 4,
    DataType.TYPE_INT32: 4,
    DataType.TYPE_FP32: 4,
    DataType.TYPE_STRING: 4,
    DataType.TYPE_UINT64: 8,
    DataType.TYPE_INT64: 8,
    DataType.TYPE_FP64: 8,
}


@dataclasses.dataclass(frozen=True)
class WarmupPlan:
    """The samples planned for one model and the sizes they cover."""

    samples: Tuple[model_config_pb2.ModelWarmup, ...]
    group_sizes: Tuple[int, ...]
    batch_sizes: Tuple[int, ...]
    feature_dim: Optional[int] = None


def default_batch_sizes(config: model_config_pb2.ModelConfig) -> List[int]:
    """Powers of two up to ``max_batch_size``, the maximum itself and the
    dynamic batcher's preferred sizes; ``[1]`` for a model without batching."""
    max_batch = config.max_batch_size
    if max_batch <= 0:
        return [1]
    sizes = {max_batch}
    size = 1
    while size <= max_batch:
        sizes.add(size)
        size *= 2
    if config.HasField("dynamic_batching"):
        sizes.update(
            size for size in config.dynamic_batching.preferred_batch_size if 1 <= size <= max_batch
        )
    return sorted(sizes)


def check_batch_sizes(config: model_config_pb2.ModelConfig, batch_sizes: Sequence[int]) -> None:
    """Refuse batch sizes the model cannot take."""
    limit = config.max_batch_size if config.max_batch_size > 0 else 1
    too_big = [size for size in batch_sizes if size > limit]
    if too_big:
        if config.max_batch_size > 0:
            reason = f"max_batch_size is {config.max_batch_size}"
        else:
            reason = "the model does not batch (max_batch_size 0), so only 1 is allowed"
        raise WarmupRequestError(
            "BATCH_SIZES", f"{too_big[0]} is too large for '{config.name}': {reason}"
        )


def feature_dim_for(config: model_config_pb2.ModelConfig, requested: Optional[int]) -> Optional[int]:
    """Check ``requested`` against the trailing dims of the model's inputs.

    The feature dimension is the trailing dim of every input of rank >= 2. Where
    the config fixes that dim, a requested value must match it; where the
    config leaves it variable, the request must give it.
    """
    feature_inputs = [model_input for model_input in config.input if len(model_input.dims) >= 2]
    if requested is not None and not feature_inputs:
        raise WarmupRequestError(
            "FEATURE_DIMS",
            f"{requested} given for '{config.name}', which has no input of rank >= 2 "
            "to take it: give 0 for this model",
        )
    for model_input in feature_inputs:
        dims = list(model_input.dims)
        trailing = dims[-1]
        if trailing == VARIABLE_DIM and requested is None:
            raise WarmupRequestError(
                "FEATURE_DIMS",
                f"'{config.name}' input '{model_input.name}' has a variable trailing "
                f"dimension {dims}: give its feature dimension",
            )
        if trailing != VARIABLE_DIM and requested is not None and requested != trailing:
            raise WarmupRequestError(
                "FEATURE_DIMS",
                f"{requested} contradicts '{config.name}' input '{model_input.name}' "
                f"dims {dims}, whose feature dimension is fixed at {trailing}",
            )
    return requested


def sample_dims(dims: Sequence[int], group_size: int, feature_dim: Optional[int]) -> List[int]:
    """Concrete dims for one sample: -1 takes the group size, except the
    trailing dim of a rank >= 2 input, which takes the feature dimension."""
    concrete = []
    for index, dim in enumerate(dims):
        if dim != VARIABLE_DIM:
            concrete.append(dim)
        elif index == len(dims) - 1 and len(dims) >= 2:
            concrete.append(feature_dim)
        else:
            concrete.append(group_size)
    return concrete


def element_bytes(data_type: int) -> int:
    """Bytes per element of a config data type."""
    return _ELEMENT_BYTES.get(data_type, 8)


def tensor_bytes(data_type: int, dims: Sequence[int]) -> int:
    """Bytes of one request's tensor of these dims (no batch dim)."""
    elements = 1
    for dim in dims:
        elements *= dim
    return elements * element_bytes(data_type)


def input_bytes(model_input: model_config_pb2.ModelInput, group_size: int, feature_dim: Optional[int]) -> int:
    """Bytes of one input of one request (batch size 1) at this group size."""
    return tensor_bytes(model_input.data_type, sample_dims(model_input.dims, group_size, feature_dim))


def dims_fit(config_dims: Sequence[int], dims: Sequence[int]) -> bool:
    """Whether concrete ``dims`` fit an input's config dims: the same rank,
    and every fixed dim the same."""
    return len(dims) == len(config_dims) and all(
        want == VARIABLE_DIM or want == got for want, got in zip(config_dims, dims)
    )


def sample_bytes(
    config: model_config_pb2.ModelConfig,
    group_size: int,
    batch_size: int,
    feature_dim: Optional[int],
) -> int:
    """Bytes of the inputs of one sample at this group and batch size."""
    return batch_size * sum(
        input_bytes(model_input, group_size, feature_dim) for model_input in config.input
    )


def _check_sample_bytes(
    config: model_config_pb2.ModelConfig,
    group_sizes: Sequence[int],
    batch_sizes: Sequence[int],
    feature_dim: Optional[int],
    max_sample_bytes: int,
) -> None:
    """Refuse a plan whose largest sample is above the cap, naming the input
    that makes it large: the feature dimension (too large even at group
    size 1), else the group size, else
    the batch size."""
    # Group sizes come as an ascending range; batch sizes are few (checked
    # against max_batch_size already).
    largest_batch = max(batch_sizes)
    largest = sample_bytes(config, group_sizes[-1], largest_batch, feature_dim)
    if largest <= max_sample_bytes:
        return
    if feature_dim is not None and sample_bytes(config, 1, 1, feature_dim) > max_sample_bytes:
        field = "FEATURE_DIMS"
    elif sample_bytes(config, group_sizes[-1], 1, feature_dim) > max_sample_bytes:
        field = "GROUP_SIZE_MAX"
    else:
        field = "BATCH_SIZES"
    raise WarmupRequestError(
        field,
        f"the largest warmup sample for '{config.name}' (group size {group_sizes[-1]}, "
        f"batch size {largest_batch}) needs {largest} bytes, above the cap of "
        f"{max_sample_bytes} (warmup_helper config parameter max_sample_bytes)",
    )


def sample_name(group_size: int, batch_size: int) -> str:
    return f"{GENERATED_PREFIX}group{group_size}_batch{batch_size}"


def listed_sample_name(index: int, batch_size: int) -> str:
    # The index keeps the plan's order readable in Triton's log, where each
    # "running warmup sample" line names the sample.
    return f"{GENERATED_PREFIX}sample{index + 1}_batch{batch_size}"


def sample_dims_key(sample: model_config_pb2.ModelWarmup) -> Tuple:
    """What makes two samples of one config run the same shape: the batch
    size and each input's dims."""
    return max(sample.batch_size, 1), tuple(sorted((name, tuple(data.dims)) for name, data in sample.inputs.items()))


def derived_sample_name(index: int, batch_size: int) -> str:
    """A sample whose shape an ensemble sends the model (``ensemble_flow``)."""
    return f"{GENERATED_PREFIX}ensemble{index + 1}_batch{batch_size}"


def _fill(data: model_config_pb2.ModelWarmup.Input, policy: Any) -> None:
    if policy == "random":
        data.random_data = True
    elif policy == "zero":
        data.zero_data = True
    else:
        data.input_data_file = policy["file"]


def data_policies(
    config: model_config_pb2.ModelConfig,
    data: Optional[Mapping[str, Any]] = None,
    default_data: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The data policy of every input: ``random``, ``zero`` or ``{"file": NAME}``.

    ``data`` must name only inputs the model has; ``default_data`` (a plan's
    defaults) applies where the model has the input. Inputs named in neither
    get random values if they are floats, else zeros, so an input that holds
    token ids or indices never sees an out-of-range value.
    """
    data = dict(data or {})
    names = [model_input.name for model_input in config.input]
    unknown = [name for name in data if name not in names]
    if unknown:
        raise WarmupRequestError(
            "PLAN",
            f"'{config.name}' has no input '{unknown[0]}'; its inputs are {names}",
            path=("models", config.name, "data", unknown[0]),
        )
    policies = {}
    for model_input in config.input:
        policy = data.get(model_input.name, (default_data or {}).get(model_input.name))
        if policy is None:
            policy = "random" if model_input.data_type in _RANDOM_DATA_TYPES else "zero"
        policies[model_input.name] = policy
    return policies


def plan_warmup(
    config: model_config_pb2.ModelConfig,
    group_sizes: Sequence[int],
    batch_sizes: Optional[Sequence[int]] = None,
    feature_dim: Optional[int] = None,
    count: int = DEFAULT_WARMUP_COUNT,
    max_samples: int = DEFAULT_MAX_WARMUP_SAMPLES,
    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
    data: Optional[Mapping[str, Any]] = None,
    default_data: Optional[Mapping[str, Any]] = None,
) -> WarmupPlan:
    """Plan one warmup sample per group size x batch size.

    Args:
        config: the target model's parsed config.
        group_sizes: values for every variable dim (see ``sample_dims``).
        batch_sizes: batch sizes to warm; ``None`` for ``default_batch_sizes``.
        feature_dim: trailing dim of rank >= 2 inputs; ``None`` to take it
            from the config, which must then fix it.
        count: how many times Triton runs each sample on each instance.
        max_samples: refuse plans with more samples than this.
        max_sample_bytes: refuse plans with a sample larger than this.
        data, default_data: data policies per input (``data_policies``); a
            file policy becomes Triton's ``input_data_file``, which Triton
            reads from the model's ``warmup/`` folder.

    Raises:
        WarmupRequestError: naming the request input that cannot be planned.
    """
    if not config.input:
        raise WarmupRequestError("MODELS", f"'{config.name}' declares no inputs in its config")
    if batch_sizes is None:
        batch_sizes = default_batch_sizes(config)
    check_batch_sizes(config, batch_sizes)
    feature_dim = feature_dim_for(config, feature_dim)

    has_group_dim = any(
        sample_dims(model_input.dims, 0, feature_dim) != sample_dims(model_input.dims, 1, feature_dim)
        for model_input in config.input
    )
    # A model without a group dim has one shape per batch size: warming it at
    # every group size would only repeat the same sample.
    if not has_group_dim:
        group_sizes = group_sizes[:1]

    planned = len(group_sizes) * len(batch_sizes)
    if planned > max_samples:
        raise WarmupRequestError(
            "GROUP_SIZE_MAX",
            f"{len(group_sizes)} group sizes x {len(batch_sizes)} batch sizes = {planned} "
            f"warmup samples for '{config.name}', above the cap of {max_samples} "
            "(warmup_helper config parameter max_warmup_samples)",
        )
    _check_sample_bytes(config, group_sizes, batch_sizes, feature_dim, max_sample_bytes)
    policies = data_policies(config, data, default_data)

    samples = []
    for group_size in group_sizes:
        for batch_size in batch_sizes:
            sample = model_config_pb2.ModelWarmup(
                name=sample_name(group_size, batch_size), batch_size=batch_size, count=count
            )
            for model_input in config.input:
                data = sample.inputs[model_input.name]
                data.data_type = model_input.data_type
                data.dims.extend(sample_dims(model_input.dims, group_size, feature_dim))
                _fill(data, policies[model_input.name])
            samples.append(sample)
    return WarmupPlan(tuple(samples), tuple(group_sizes), tuple(batch_sizes), feature_dim)


def _check_listed_dims(
    config: model_config_pb2.ModelConfig, listed: ListedSample, path: Tuple
) -> Dict[str, Tuple[int, ...]]:
    """The sample's dims per input, checked against the config's inputs."""
    given = dict(listed.inputs)
    declared = {model_input.name: model_input for model_input in config.input}
    unknown = [name for name in given if name not in declared]
    if unknown:
        raise WarmupRequestError(
            "PLAN",
            f"'{config.name}' has no input '{unknown[0]}'; its inputs are {list(declared)}",
            path=path + ("inputs", unknown[0]),
        )
    missing = [name for name, model_input in declared.items() if name not in given and not model_input.optional]
    if missing:
        raise WarmupRequestError(
            "PLAN", f"gives no dims for '{config.name}' input '{missing[0]}'", path=path + ("inputs",)
        )
    for name, dims in given.items():
        expected = list(declared[name].dims)
        if not dims_fit(expected, dims):
            raise WarmupRequestError(
                "PLAN",
                f"dims {list(dims)} do not fit '{config.name}' input '{name}', whose config dims are "
                f"{expected} (without the batch dim)",
                path=path + ("inputs", name),
            )
    return given


def plan_listed_samples(
    config: model_config_pb2.ModelConfig,
    listed: Sequence[ListedSample],
    count: int = DEFAULT_WARMUP_COUNT,
    max_samples: int = DEFAULT_MAX_WARMUP_SAMPLES,
    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
    data: Optional[Mapping[str, Any]] = None,
    default_data: Optional[Mapping[str, Any]] = None,
    plan_path: Tuple = (),
    name_of: Callable[[int, int], str] = None,
) -> WarmupPlan:
    """Plan the samples a plan lists, in its order.

    Triton runs ``model_warmup`` in the order of the config, so the order is
    the plan's to choose (docs/traffic.md, "The order").

    Raises:
        WarmupRequestError: field ``PLAN``, with the path to the sample at fault.
    """
    if not config.input:
        raise WarmupRequestError("MODELS", f"'{config.name}' declares no inputs in its config")
    if len(listed) > max_samples:
        raise WarmupRequestError(
            "PLAN",
            f"{len(listed)} samples for '{config.name}', above the cap of {max_samples} "
            "(warmup_helper config parameter max_warmup_samples)",
            path=plan_path + ("samples",),
        )
    policies = data_policies(config, data, default_data)
    elements = {model_input.name: model_input for model_input in config.input}
    samples = []
    for index, entry in enumerate(listed):
        path = plan_path + ("samples", index)
        try:
            check_batch_sizes(config, [entry.batch_size])
        except WarmupRequestError as error:
            raise WarmupRequestError("PLAN", error.message, path=path + ("batch_size",)) from None
        dims_of = _check_listed_dims(config, entry, path)
        unknown = [name for name in entry.data if name not in dims_of]
        if unknown:
            raise WarmupRequestError(
                "PLAN", f"data for '{unknown[0]}', which this sample gives no dims", path=path + ("data", unknown[0])
            )
        size = entry.batch_size * sum(tensor_bytes(elements[name].data_type, dims) for name, dims in dims_of.items())
        if size > max_sample_bytes:
            raise WarmupRequestError(
                "PLAN",
                f"sample of '{config.name}' needs {size} bytes, above the cap of {max_sample_bytes} "
                "(warmup_helper config parameter max_sample_bytes)",
                path=path,
            )
        sample = model_config_pb2.ModelWarmup(
            name=(name_of or listed_sample_name)(index, entry.batch_size), batch_size=entry.batch_size, count=count
        )
        for name, dims in dims_of.items():
            sample_input = sample.inputs[name]
            sample_input.data_type = elements[name].data_type
            sample_input.dims.extend(dims)
            _fill(sample_input, entry.data.get(name, policies[name]))
        samples.append(sample)
    batch_sizes = tuple(sorted({entry.batch_size for entry in listed}))
    return WarmupPlan(tuple(samples), (), batch_sizes, None)
