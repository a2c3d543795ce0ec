"""Turn the tensors of one warmup_helper request into a checked ``WarmupRequest``.

Pure Python and numpy: no Triton imports, so the unit tests run without a
server. Every problem raises ``WarmupRequestError`` naming the input at fault.
"""

import collections
import dataclasses
from typing import FrozenSet, Mapping, Optional, Tuple

import numpy as np

# Error codes, spelled as pb_utils.TritonError spells them; model.py maps them.
INVALID_ARG = "INVALID_ARG"
NOT_FOUND = "NOT_FOUND"

REQUIRED_INPUTS = ("MODELS", "GROUP_SIZE_MIN", "GROUP_SIZE_MAX")
OPTIONAL_INPUTS = ("FEATURE_DIMS", "BATCH_SIZES")

# A folder name longer than this cannot exist on Linux file systems; refusing
# it here also keeps an absurd name away from the file system calls.
MAX_NAME_BYTES = 255


class WarmupRequestError(ValueError):
    """A request the helper refuses before it touches the repository.

    Attributes:
        field: the request input (or config parameter) that is wrong.
        code: ``INVALID_ARG`` or ``NOT_FOUND``.
    """

    def __init__(self, field: str, message: str, code: str = INVALID_ARG):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.code = code


@dataclasses.dataclass(frozen=True)
class WarmupRequest:
    """What one request asks for, already validated.

    Attributes:
        models: target model names, in request order, no duplicates.
        feature_dims: one per model; ``None`` where the request left it to the
            model's config (FEATURE_DIMS absent, or 0 for that model).
        group_sizes: every group size from GROUP_SIZE_MIN to GROUP_SIZE_MAX, as
            a ``range`` so that a huge request costs nothing until the plan's
            size cap refuses it.
        batch_sizes: sorted, de-duplicated BATCH_SIZES, or ``None`` for the
            default derived from each model's config.
    """

    models: Tuple[str, ...]
    feature_dims: Tuple[Optional[int], ...]
    group_sizes: range
    batch_sizes: Optional[Tuple[int, ...]]


def check_model_name(name: str, helper_name: str) -> None:
    """Refuse a name that is not a plain model folder in the repository."""
    if not name:
        raise WarmupRequestError("MODELS", "a model name is empty")
    if name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise WarmupRequestError(
            "MODELS", f"'{name}' is not a plain model folder name (no '/', '\\', '..')"
        )
    if name.startswith("."):
        raise WarmupRequestError("MODELS", f"'{name}' is a hidden folder, not a model")
    if name == helper_name:
        raise WarmupRequestError("MODELS", f"'{name}' is the warmup helper itself")
    if len(name.encode("utf-8", "replace")) > MAX_NAME_BYTES:
        raise WarmupRequestError(
            "MODELS", f"'{name[:40]}...' is longer than {MAX_NAME_BYTES} bytes: no folder has that name"
        )


def parse_allowed_models(value: str) -> Optional[FrozenSet[str]]:
    """The ``allowed_models`` parameter: names separated by commas or spaces;
    an empty value allows every model."""
    names = frozenset(name for name in value.replace(",", " ").split() if name)
    return names or None


def _decode_names(array: np.ndarray) -> Tuple[str, ...]:
    names = []
    for raw in array.reshape(-1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise WarmupRequestError("MODELS", f"{raw!r} is not UTF-8") from None
        names.append(str(raw))
    return tuple(names)


def _integers(field: str, array: np.ndarray) -> Tuple[int, ...]:
    if not np.issubdtype(array.dtype, np.integer):
        raise WarmupRequestError(field, f"must be integers, got {array.dtype}")
    return tuple(int(value) for value in array.reshape(-1))


def _single_integer(field: str, array: np.ndarray) -> int:
    values = _integers(field, array)
    if len(values) != 1:
        raise WarmupRequestError(field, f"must hold exactly one value, got {len(values)}")
    if values[0] < 1:
        raise WarmupRequestError(field, f"must be at least 1, got {values[0]}")
    return values[0]


def parse_request(
    inputs: Mapping[str, Optional[np.ndarray]],
    helper_name: str,
    allowed_models: Optional[FrozenSet[str]] = None,
) -> WarmupRequest:
    """Validate the request tensors.

    Args:
        inputs: input name to numpy array, or ``None`` for an input the
            request did not send.
        helper_name: the helper's own model name, which may not be a target.
        allowed_models: the only models a request may name (the helper's
            ``allowed_models`` config parameter); ``None`` allows every model
            in the repository.

    Raises:
        WarmupRequestError: naming the first input that is wrong.
    """
    for field in REQUIRED_INPUTS:
        if inputs.get(field) is None:
            raise WarmupRequestError(field, "is required")

    models = _decode_names(inputs["MODELS"])
    if not models:
        raise WarmupRequestError("MODELS", "is empty: name at least one model")
    for name in models:
        check_model_name(name, helper_name)
        if allowed_models is not None and name not in allowed_models:
            raise WarmupRequestError(
                "MODELS",
                f"'{name}' is not in the warmup_helper's allowed_models {sorted(allowed_models)}",
            )
    duplicates = sorted(name for name, seen in collections.Counter(models).items() if seen > 1)
    if duplicates:
        raise WarmupRequestError("MODELS", f"names {duplicates} more than once")

    feature_dims: Tuple[Optional[int], ...] = (None,) * len(models)
    if inputs.get("FEATURE_DIMS") is not None:
        given = _integers("FEATURE_DIMS", inputs["FEATURE_DIMS"])
        if len(given) != len(models):
            raise WarmupRequestError(
                "FEATURE_DIMS",
                f"has {len(given)} values for {len(models)} models in MODELS: give one per model "
                "(0 where the model's config fixes the dimension)",
            )
        negative = [value for value in given if value < 0]
        if negative:
            raise WarmupRequestError("FEATURE_DIMS", f"must be 0 or more, got {negative[0]}")
        feature_dims = tuple(value or None for value in given)

    group_min = _single_integer("GROUP_SIZE_MIN", inputs["GROUP_SIZE_MIN"])
    group_max = _single_integer("GROUP_SIZE_MAX", inputs["GROUP_SIZE_MAX"])
    if group_min > group_max:
        raise WarmupRequestError(
            "GROUP_SIZE_MIN", f"{group_min} is greater than GROUP_SIZE_MAX {group_max}"
        )

    batch_sizes = None
    if inputs.get("BATCH_SIZES") is not None:
        given = _integers("BATCH_SIZES", inputs["BATCH_SIZES"])
        if not given:
            raise WarmupRequestError("BATCH_SIZES", "is empty: leave it out for the default")
        too_small = [value for value in given if value < 1]
        if too_small:
            raise WarmupRequestError("BATCH_SIZES", f"must be at least 1, got {too_small[0]}")
        batch_sizes = tuple(sorted(set(given)))

    return WarmupRequest(
        models=models,
        feature_dims=feature_dims,
        group_sizes=range(group_min, group_max + 1),
        batch_sizes=batch_sizes,
    )
