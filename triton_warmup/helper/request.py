"""Turn one warmup_helper request into a checked ``WarmupRequest``.

Every request is a plan document in the end: ``PLAN`` carries one (what
``triton-warmup --plan`` sends from a YAML or JSON plan file), and the seed's
tensors (``MODELS`` with one shape range for all of them, or ``ALL_MODELS``,
``FEATURE_DIMS``, ``BATCH_SIZES``, ``MODE``) are turned into one at the
boundary (``document_from_tensors``). One validator (``parse_plan_document``)
then checks every request.

Pure Python and numpy: no Triton imports, so the unit tests run without a
server. Every problem raises ``WarmupRequestError`` with the path to the wrong
value as data; a request made of tensors sees the input at fault named instead.
"""

import collections
import dataclasses
import json
from typing import Any, Dict, FrozenSet, Mapping, Optional, Tuple

import numpy as np

# Error codes, spelled as pb_utils.TritonError spells them; model.py maps them.
INVALID_ARG = "INVALID_ARG"
NOT_FOUND = "NOT_FOUND"

# Every input the helper reads. MODELS, GROUP_SIZE_MIN and GROUP_SIZE_MAX are
# required unless PLAN carries the plans (ALL_MODELS stands in for MODELS).
REQUEST_INPUTS = (
    "MODELS",
    "GROUP_SIZE_MIN",
    "GROUP_SIZE_MAX",
    "FEATURE_DIMS",
    "BATCH_SIZES",
    "ALL_MODELS",
    "PLAN",
    "MODE",
)

# auto: load through the Model Loading API when the server is in explicit
# model-control mode, else send inference requests. load / requests: force one.
MODES = ("auto", "load", "requests")

# How a plan fills one input of a sample: Triton's random_data, zero_data, or
# input_data_file with a file under the model's warmup/ folder.
DATA_POLICIES = ("random", "zero")
DATA_FILE_KEY = "file"

# A folder name longer than this cannot exist on Linux file systems; refusing
# it here also keeps an absurd name away from the file system calls.
MAX_NAME_BYTES = 255

# A plan document larger than this is refused before it is parsed.
MAX_PLAN_BYTES = 1024 * 1024

# The group sizes of a request that gives none: triton-warmup's defaults, and
# what the helper's warm_on_start: all warms.
DEFAULT_GROUP_SIZE_MIN = 1
DEFAULT_GROUP_SIZE_MAX = 4

_PLAN_KEYS = ("mode", "all_models", "defaults", "models")
_MODEL_PLAN_KEYS = (
    "feature_dim", "group_size_min", "group_size_max", "batch_sizes", "count", "data", "samples", "learned"
)
# What a plan does with the samples the helper learned from traffic: keep
# them after its own (the default), or drop them.
LEARNED_CHOICES = ("keep", "drop")
# The settings that make a range of shapes; a model that lists its samples
# takes none of them, from its own plan or from the defaults.
_RANGE_KEYS = ("feature_dim", "group_size_min", "group_size_max", "batch_sizes")
_SAMPLE_KEYS = ("batch_size", "inputs", "data", "requests")


# The line of an error message that carries the error as JSON, so that a
# client reads the path as data (``WarmupRequestError.from_message``).
DETAIL_PREFIX = "detail: "


class WarmupRequestError(ValueError):
    """A request the helper refuses before it touches the repository.

    Attributes:
        field: the request input (or config parameter) that is wrong.
        code: ``INVALID_ARG`` or ``NOT_FOUND``.
        path: the keys and list indexes that lead to the wrong value in the
            request's plan document (``("models", "model-v1", "count")``);
            the client maps it to a line of the plan file. It is shown in the
            text only for ``PLAN``, whose user wrote that document.
    """

    def __init__(self, field: str, message: str, code: str = INVALID_ARG, path: Tuple = ()):
        shown = path if field == "PLAN" else ()
        where = "".join(f"[{step!r}]" if isinstance(step, int) else f".{step}" for step in shown)
        super().__init__(f"{field}{where}: {message}")
        self.field = field
        self.code = code
        self.path = tuple(path)
        self.message = message

    def to_dict(self) -> Dict[str, Any]:
        return {"field": self.field, "path": list(self.path), "message": self.message, "code": self.code}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "WarmupRequestError":
        return cls(data["field"], data["message"], data.get("code", INVALID_ARG), tuple(data.get("path", ())))

    def response_message(self) -> str:
        """The text of the error response: the sentence, then the error as
        JSON on a line of its own."""
        return f"{self}\n{DETAIL_PREFIX}{json.dumps(self.to_dict())}"

    @classmethod
    def from_message(cls, text: str) -> Optional["WarmupRequestError"]:
        """The error inside an error response's text (Triton may put words in
        front of it), or ``None`` when the text carries none."""
        _, found, detail = text.rpartition(DETAIL_PREFIX)
        if not found:
            return None
        try:
            return cls.from_dict(json.loads(detail.strip().splitlines()[0]))
        except (ValueError, KeyError, TypeError, IndexError):
            return None


@dataclasses.dataclass(frozen=True)
class ListedSample:
    """One sample a plan lists by its shape (a plan made from traffic).

    Attributes:
        batch_size: the sample's batch size (1 for a model without batching).
        inputs: input name to its dims, without the batch dim, in the order
            the plan gives them.
        data: input name to a data policy for this sample alone; it wins over
            the model's ``data``.
        requests: how many recorded requests had this shape; only reported.
    """

    batch_size: int
    inputs: Tuple[Tuple[str, Tuple[int, ...]], ...]
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    requests: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class ModelPlanRequest:
    """What a request asks for one model.

    Attributes:
        name: the model's folder name.
        feature_dim: trailing dim of rank >= 2 inputs; ``None`` to take it
            from the model's config.
        group_sizes: every group size to warm, as a ``range`` so that a huge
            request costs nothing until the plan's size cap refuses it.
        batch_sizes: sorted, de-duplicated batch sizes, or ``None`` for the
            default derived from the model's config.
        count: runs per sample on each instance; ``None`` for the helper's
            ``warmup_count``.
        data: input name to ``"random"``, ``"zero"`` or ``{"file": NAME}``;
            the model must have every input named here.
        default_data: the same from a plan's ``defaults``: it applies to the
            inputs a model has and is ignored for the others. Inputs named in
            neither get random values if they are floats, else zeros.
        samples: the samples themselves, in warmup order, instead of a range
            (``group_sizes`` is then empty); ``None`` for a range.
        derived: samples the shapes an ensemble sends this model add to its
            plan, after its own (``ensemble_flow``); only the helper sets them.
        drop_learned: remove the samples the helper learned from traffic
            (``learned: drop``); else they stay after the plan's own.
    """

    name: str
    feature_dim: Optional[int]
    group_sizes: range
    batch_sizes: Optional[Tuple[int, ...]] = None
    count: Optional[int] = None
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    default_data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Where this plan sits in a PLAN document (("models", name) or
    # ("defaults",)); empty for a plan made from the shape inputs.
    plan_path: Tuple = ()
    samples: Optional[Tuple[ListedSample, ...]] = None
    derived: Tuple[ListedSample, ...] = ()
    drop_learned: bool = False


# The tensor input that carries each setting of a plan document: a request
# made of tensors is told about the input it sent, not the document made of it.
INPUT_OF_PLAN_KEY = {
    "batch_sizes": "BATCH_SIZES",
    "feature_dim": "FEATURE_DIMS",
    "group_size_max": "GROUP_SIZE_MAX",
    "group_size_min": "GROUP_SIZE_MIN",
    "mode": "MODE",
    "all_models": "ALL_MODELS",
}


def in_request_terms(
    error: WarmupRequestError, from_plan: bool, plan: Optional[ModelPlanRequest] = None
) -> WarmupRequestError:
    """``error`` with the path to the setting at fault in the request's plan
    document, named for the request's form: field ``PLAN`` for a plan, the
    tensor input for a request of tensors.

    The planning modules name the setting a model's config rejects by its
    input (``FEATURE_DIMS``); ``plan`` says where that model's plan sits.
    """
    path = error.path
    if error.field != "PLAN" and plan is not None and plan.plan_path:
        key = next((key for key, name in INPUT_OF_PLAN_KEY.items() if name == error.field), None)
        path = plan.plan_path + ((key,) if key else ())
    if from_plan:
        return WarmupRequestError("PLAN", error.message, error.code, path=path)
    field = error.field
    if field == "PLAN" and path:
        field = next((INPUT_OF_PLAN_KEY[step] for step in reversed(path) if step in INPUT_OF_PLAN_KEY), "MODELS")
    return WarmupRequestError(field, error.message, error.code, path=path)


@dataclasses.dataclass(frozen=True)
class WarmupRequest:
    """What one request asks for, already validated.

    Attributes:
        plans: one per named model, in request order, no duplicates.
        all_models: also warm every other model of the repository with
            ``default_plan`` (``ALL_MODELS``, or ``all_models`` in a plan).
        default_plan: the plan (name empty) for models ``all_models`` adds.
        mode: one of ``MODES``.
    """

    plans: Tuple[ModelPlanRequest, ...]
    all_models: bool = False
    default_plan: Optional[ModelPlanRequest] = None
    mode: str = "auto"
    # True when the request sent PLAN; False when it sent tensors, which
    # decides how its errors are named (``in_request_terms``).
    from_plan: bool = True

    @property
    def models(self) -> Tuple[str, ...]:
        return tuple(plan.name for plan in self.plans)


def check_model_name(
    name: str,
    helper_name: str,
    allowed_models: Optional[FrozenSet[str]] = None,
    field: str = "MODELS",
    path: Tuple = (),
) -> None:
    """Refuse a name that is not a plain model folder in the repository, or
    that the helper's ``allowed_models`` leaves out."""

    def refuse(message):
        raise WarmupRequestError(field, message, path=path)

    if not name:
        refuse("a model name is empty")
    if name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        refuse(f"'{name}' is not a plain model folder name (no '/', '\\', '..')")
    if name.startswith("."):
        refuse(f"'{name}' is a hidden folder, not a model")
    if name == helper_name:
        refuse(f"'{name}' is the warmup helper itself")
    if len(name.encode("utf-8", "replace")) > MAX_NAME_BYTES:
        refuse(f"'{name[:40]}...' is longer than {MAX_NAME_BYTES} bytes: no folder has that name")
    if allowed_models is not None and name not in allowed_models:
        refuse(f"'{name}' is not in the warmup_helper's allowed_models {sorted(allowed_models)}")


def parse_allowed_models(value: str) -> Optional[FrozenSet[str]]:
    """The ``allowed_models`` parameter: names separated by commas or spaces;
    an empty value allows every model."""
    names = frozenset(name for name in value.replace(",", " ").split() if name)
    return names or None




def _decode_strings(field: str, array: np.ndarray) -> Tuple[str, ...]:
    values = []
    for raw in array.reshape(-1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise WarmupRequestError(field, f"{raw[:40]!r} is not UTF-8") from None
        values.append(str(raw))
    return tuple(values)


def _integers(field: str, array: np.ndarray) -> Tuple[int, ...]:
    if not np.issubdtype(array.dtype, np.integer):
        raise WarmupRequestError(field, f"must be integers, got {array.dtype}")
    return tuple(int(value) for value in array.reshape(-1))


def _single_value(field: str, values: Tuple) -> Any:
    if len(values) != 1:
        raise WarmupRequestError(field, f"must hold exactly one value, got {len(values)}")
    return values[0]


def _group_range(group_min: int, group_max: int, field: str = "GROUP_SIZE_MIN", path=()) -> range:
    if group_min > group_max:
        raise WarmupRequestError(
            field, f"group_size_min {group_min} is greater than group_size_max {group_max}", path=path
        )
    return range(group_min, group_max + 1)


def _check_batch_sizes(field: str, given: Tuple[int, ...], path=()) -> Tuple[int, ...]:
    if not given:
        raise WarmupRequestError(field, "is empty: leave it out for the default", path=path)
    too_small = [value for value in given if value < 1]
    if too_small:
        raise WarmupRequestError(field, f"must be at least 1, got {too_small[0]}", path=path)
    return tuple(sorted(set(given)))


def _check_mode(mode: str, field: str = "MODE", path=()) -> str:
    if mode not in MODES:
        raise WarmupRequestError(field, f"must be one of {list(MODES)}, got {mode!r}", path=path)
    return mode


def document_from_tensors(inputs: Mapping[str, Optional[np.ndarray]]) -> Dict[str, Any]:
    """The plan document that the tensors of a request stand for.

    Only what a tensor alone can get wrong is checked here (its type, how
    many values it holds, inputs that exclude each other, a name given
    twice); every value is checked by ``parse_plan_document``, as in a plan.

    Raises:
        WarmupRequestError: naming the input at fault.
    """
    document: Dict[str, Any] = {}
    if inputs.get("MODE") is not None:
        document["mode"] = _single_value("MODE", _decode_strings("MODE", inputs["MODE"]))
    all_models = False
    if inputs.get("ALL_MODELS") is not None:
        flags = inputs["ALL_MODELS"].reshape(-1)
        if flags.dtype != np.bool_ or len(flags) != 1:
            raise WarmupRequestError("ALL_MODELS", "must be one BOOL")
        all_models = document["all_models"] = bool(flags[0])

    defaults: Dict[str, Any] = {}
    for field, key in (("GROUP_SIZE_MIN", "group_size_min"), ("GROUP_SIZE_MAX", "group_size_max")):
        if inputs.get(field) is None:
            raise WarmupRequestError(field, "is required (or send PLAN)")
        defaults[key] = _single_value(field, _integers(field, inputs[field]))
    if inputs.get("BATCH_SIZES") is not None:
        defaults["batch_sizes"] = list(_integers("BATCH_SIZES", inputs["BATCH_SIZES"]))
    document["defaults"] = defaults

    if all_models:
        if inputs.get("MODELS") is not None or inputs.get("FEATURE_DIMS") is not None:
            raise WarmupRequestError(
                "ALL_MODELS",
                "takes every model of the repository: leave out MODELS and FEATURE_DIMS "
                "(each model's config gives its feature dimension; a plan file can set one per model)",
            )
        return document
    if inputs.get("MODELS") is None:
        raise WarmupRequestError("MODELS", "is required (or send ALL_MODELS or PLAN)")
    models = _decode_strings("MODELS", inputs["MODELS"])
    if not models:
        raise WarmupRequestError("MODELS", "is empty: name at least one model")
    duplicates = sorted(name for name, seen in collections.Counter(models).items() if seen > 1)
    if duplicates:
        raise WarmupRequestError("MODELS", f"names {duplicates} more than once")
    feature_dims: Tuple[Optional[int], ...] = (None,) * len(models)
    if inputs.get("FEATURE_DIMS") is not None:
        feature_dims = _integers("FEATURE_DIMS", inputs["FEATURE_DIMS"])
        if len(feature_dims) != len(models):
            raise WarmupRequestError(
                "FEATURE_DIMS",
                f"has {len(feature_dims)} values for {len(models)} models in MODELS: give one per model "
                "(0 where the model's config fixes the dimension)",
            )
    document["models"] = {
        name: ({} if feature_dim is None else {"feature_dim": feature_dim})
        for name, feature_dim in zip(models, feature_dims)
    }
    return document


def parse_request(
    inputs: Mapping[str, Optional[np.ndarray]],
    helper_name: str,
    allowed_models: Optional[FrozenSet[str]] = None,
) -> WarmupRequest:
    """Validate a request: ``PLAN``, or the tensors that stand for one.

    Args:
        inputs: input name to numpy array, or ``None`` for an input the
            request did not send.
        helper_name: the helper's own model name, which may not be a target.
        allowed_models: the only models a request may name (the helper's
            ``allowed_models`` config parameter); ``None`` allows every model
            in the repository.

    Raises:
        WarmupRequestError: with the path to the first wrong value; named
            ``PLAN`` for a plan, else by the tensor input at fault.
    """
    if inputs.get("PLAN") is None:
        document = document_from_tensors(inputs)
        try:
            return dataclasses.replace(
                parse_plan_document(document, helper_name, allowed_models), from_plan=False
            )
        except WarmupRequestError as error:
            raise in_request_terms(error, from_plan=False) from None

    given = [
        field
        for field in ("MODELS", "ALL_MODELS", "GROUP_SIZE_MIN", "GROUP_SIZE_MAX", "FEATURE_DIMS", "BATCH_SIZES")
        if inputs.get(field) is not None
    ]
    if given:
        raise WarmupRequestError("PLAN", f"carries the whole plan: leave out {given}, or leave out PLAN")
    text = _single_value("PLAN", _decode_strings("PLAN", inputs["PLAN"]))
    if len(text.encode("utf-8")) > MAX_PLAN_BYTES:
        raise WarmupRequestError("PLAN", f"is larger than {MAX_PLAN_BYTES} bytes")
    try:
        document = json.loads(text)
    except ValueError as error:
        raise WarmupRequestError("PLAN", f"is not JSON: {error}") from None
    parsed = parse_plan_document(document, helper_name, allowed_models)
    if inputs.get("MODE") is not None:
        # MODE beside PLAN overrides the plan's mode (triton-warmup --mode).
        mode = _single_value("MODE", _decode_strings("MODE", inputs["MODE"]))
        parsed = dataclasses.replace(parsed, mode=_check_mode(mode))
    return parsed


def _plan_error(message: str, path: Tuple) -> WarmupRequestError:
    return WarmupRequestError("PLAN", message, path=path)


def _plan_mapping(value: Any, path: Tuple, what: str) -> Dict:
    if not isinstance(value, dict):
        raise _plan_error(f"{what} must be a mapping, got {type(value).__name__}", path)
    return value


def _plan_integer(value: Any, path: Tuple, minimum: int) -> int:
    # bool is an int in Python; `count: true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _plan_error(f"must be an integer, got {value!r}", path)
    if value < minimum:
        raise _plan_error(f"must be at least {minimum}, got {value}", path)
    return value


def _plan_data(value: Any, path: Tuple) -> Dict[str, Any]:
    """``data``: input name to ``random``, ``zero`` or ``{file: NAME}``."""
    policies = {}
    for input_name, policy in _plan_mapping(value, path, "data").items():
        where = path + (input_name,)
        if isinstance(policy, str) and policy in DATA_POLICIES:
            policies[input_name] = policy
            continue
        if isinstance(policy, dict) and list(policy) == [DATA_FILE_KEY]:
            file_name = policy[DATA_FILE_KEY]
            if (
                not isinstance(file_name, str)
                or not file_name
                or file_name.startswith("/")
                or ".." in file_name.split("/")
                or "\x00" in file_name
            ):
                raise _plan_error(
                    f"file must name a file inside the model's warmup/ folder, got {file_name!r}",
                    where + (DATA_FILE_KEY,),
                )
            policies[input_name] = {DATA_FILE_KEY: file_name}
            continue
        raise _plan_error(
            f"must be one of {list(DATA_POLICIES)} or {{{DATA_FILE_KEY}: NAME}} (a file under the "
            f"model's warmup/ folder), got {policy!r}",
            where,
        )
    return policies


def _plan_settings(value: Any, path: Tuple) -> Dict[str, Any]:
    """Check one model's (or the defaults') settings; return them normalized."""
    settings = _plan_mapping({} if value is None else value, path, "a model's plan")
    unknown = [key for key in settings if key not in _MODEL_PLAN_KEYS]
    if unknown:
        raise _plan_error(
            f"unknown key {unknown[0]!r}; a plan may set {list(_MODEL_PLAN_KEYS)}",
            path + (unknown[0],),
        )
    checked = {}
    if settings.get("feature_dim") is not None:
        checked["feature_dim"] = _plan_integer(settings["feature_dim"], path + ("feature_dim",), 0) or None
    for key in ("group_size_min", "group_size_max", "count"):
        if settings.get(key) is not None:
            checked[key] = _plan_integer(settings[key], path + (key,), 1)
    if settings.get("batch_sizes") is not None:
        sizes = settings["batch_sizes"]
        if not isinstance(sizes, list):
            raise _plan_error(f"must be a list of integers, got {sizes!r}", path + ("batch_sizes",))
        checked["batch_sizes"] = _check_batch_sizes(
            "PLAN",
            tuple(_plan_integer(size, path + ("batch_sizes", index), 1) for index, size in enumerate(sizes)),
            path + ("batch_sizes",),
        )
    if settings.get("data") is not None:
        checked["data"] = _plan_data(settings["data"], path + ("data",))
    if settings.get("learned") is not None:
        if settings["learned"] not in LEARNED_CHOICES:
            raise _plan_error(f"must be one of {list(LEARNED_CHOICES)}, got {settings['learned']!r}", path + ("learned",))
        checked["learned"] = settings["learned"]
    if settings.get("samples") is not None:
        if path == ("defaults",):
            raise _plan_error("samples belong to one model: list them under models.<name>", path + ("samples",))
        ranged = [key for key in _RANGE_KEYS if settings.get(key) is not None]
        if ranged:
            raise _plan_error(
                f"lists its samples, so it takes no shape range: leave out {ranged}", path + (ranged[0],)
            )
        checked["samples"] = _plan_samples(settings["samples"], path + ("samples",))
    return checked


def _plan_samples(value: Any, path: Tuple) -> Tuple[ListedSample, ...]:
    """``samples``: a list of ``{batch_size, inputs: {name: dims}, data, requests}``."""
    if not isinstance(value, list) or not value:
        raise _plan_error(f"must be a non-empty list of samples, got {value!r}", path)
    samples = []
    seen = {}
    for index, entry in enumerate(value):
        where = path + (index,)
        entry = _plan_mapping(entry, where, "a sample")
        unknown = [key for key in entry if key not in _SAMPLE_KEYS]
        if unknown:
            raise _plan_error(f"unknown key {unknown[0]!r}; a sample has {list(_SAMPLE_KEYS)}", where + (unknown[0],))
        batch_size = _plan_integer(entry.get("batch_size", 1), where + ("batch_size",), 1)
        inputs = _plan_mapping(entry.get("inputs"), where + ("inputs",), "inputs")
        if not inputs:
            raise _plan_error("names no input: give each input's dims", where + ("inputs",))
        shapes = []
        for name, dims in inputs.items():
            if not isinstance(dims, list):
                raise _plan_error(f"dims must be a list of integers, got {dims!r}", where + ("inputs", name))
            shapes.append(
                (str(name), tuple(_plan_integer(dim, where + ("inputs", name, at), 1) for at, dim in enumerate(dims)))
            )
        requests = entry.get("requests")
        if requests is not None:
            requests = _plan_integer(requests, where + ("requests",), 0)
        data = _plan_data(entry["data"], where + ("data",)) if entry.get("data") is not None else {}
        # The same shape twice is a mistake, unless the data differs: an
        # ensemble's texts of one shape give its tokenizer's next model
        # other shapes (docs/model-kinds.md).
        key = (batch_size, tuple(sorted(shapes)), json.dumps(data, sort_keys=True))
        if key in seen:
            raise _plan_error(f"repeats the shape and data of sample {seen[key]}", where)
        seen[key] = index
        samples.append(ListedSample(batch_size, tuple(shapes), data, requests))
    return tuple(samples)


def _model_plan(
    name: str, settings: Dict[str, Any], path: Tuple, default_data: Optional[Dict] = None
) -> ModelPlanRequest:
    if "samples" in settings:
        return ModelPlanRequest(
            name=name,
            feature_dim=None,
            group_sizes=range(0),
            count=settings.get("count"),
            data=settings.get("data", {}),
            default_data=default_data or {},
            plan_path=path,
            samples=settings["samples"],
            drop_learned=settings.get("learned") == "drop",
        )
    if "group_size_max" not in settings:
        raise _plan_error("group_size_max is required, for this model or in defaults", path)
    group_sizes = _group_range(
        settings.get("group_size_min", 1), settings["group_size_max"], "PLAN", path + ("group_size_min",)
    )
    return ModelPlanRequest(
        name=name,
        feature_dim=settings.get("feature_dim"),
        group_sizes=group_sizes,
        batch_sizes=settings.get("batch_sizes"),
        count=settings.get("count"),
        data=settings.get("data", {}),
        default_data=default_data or {},
        plan_path=path,
        drop_learned=settings.get("learned") == "drop",
    )


def parse_plan_document(
    document: Any,
    helper_name: str,
    allowed_models: Optional[FrozenSet[str]] = None,
) -> WarmupRequest:
    """Validate a plan document (the parsed YAML or JSON of a plan file).

    The document holds ``mode``, ``all_models``, ``defaults`` (settings every
    model starts from) and ``models`` (model name to its own settings, which
    override the defaults). Settings: ``feature_dim``, ``group_size_min``
    (default 1), ``group_size_max``, ``batch_sizes``, ``count``, ``data`` and
    ``learned`` (``keep`` or ``drop`` the samples learned from traffic);
    or, for one model, ``samples``: the shapes themselves, in warmup order
    (``triton-warmup-from-trace`` writes them from recorded traffic).

    Raises:
        WarmupRequestError: field ``PLAN``, with ``path`` leading to the wrong value.
    """
    document = _plan_mapping(document, (), "the plan")
    unknown = [key for key in document if key not in _PLAN_KEYS]
    if unknown:
        raise _plan_error(f"unknown key {unknown[0]!r}; a plan has {list(_PLAN_KEYS)}", (unknown[0],))
    mode = "auto"
    if document.get("mode") is not None:
        if not isinstance(document["mode"], str):
            raise _plan_error(f"must be one of {list(MODES)}, got {document['mode']!r}", ("mode",))
        mode = _check_mode(document["mode"], "PLAN", ("mode",))
    all_models = document.get("all_models", False)
    if not isinstance(all_models, bool):
        raise _plan_error(f"must be true or false, got {all_models!r}", ("all_models",))
    defaults = _plan_settings(document.get("defaults"), ("defaults",))
    models = _plan_mapping(document.get("models") or {}, ("models",), "models")
    if not models and not all_models:
        raise _plan_error("names no model: list models, or set all_models: true", ("models",))

    plans = []
    for name, settings in models.items():
        path = ("models", name)
        check_model_name(str(name), helper_name, allowed_models, field="PLAN", path=path)
        own = _plan_settings(settings, path)
        # A model that lists its samples takes only count from the defaults.
        inherited = ("data",) + (_RANGE_KEYS if "samples" in own else ())
        merged = {key: value for key, value in defaults.items() if key not in inherited}
        merged.update(own)
        plans.append(_model_plan(str(name), merged, path, defaults.get("data")))
    default_plan = None
    if all_models:
        shape = {key: value for key, value in defaults.items() if key != "data"}
        default_plan = _model_plan("", shape, ("defaults",), defaults.get("data"))
    return WarmupRequest(plans=tuple(plans), all_models=all_models, default_plan=default_plan, mode=mode)
