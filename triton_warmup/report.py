"""The REPORT that warmup_helper answers: one schema, built by the helper in
both modes and read back by the clients and the tests.

Each record is a dataclass with ``to_dict`` (the JSON the helper sends) and
``from_dict`` (what a client makes of it). ``from_dict`` ignores keys it does
not know, so a client keeps working against a newer helper, and fills what an
older helper did not send with the field's default.
"""

import dataclasses
import enum
import re
from typing import Any, Callable, Dict, List, Optional, Type, TypeVar

Record = TypeVar("Record")

# A reason longer than this is cut: it is one line of a table or a probe's output.
MAX_REASON_CHARS = 400
# The last line of a TorchScript or Python traceback names the exception.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b.*")
# Lines of a C++ stack or a traceback that say where, not what.
_STACK_LINE = re.compile(r"^(frame #\d+:|Exception raised from |Traceback |File \"|~+\s*<--- HERE|\^)")


def one_line(text: str) -> str:
    """A reason a person can read in one line: the first line of Triton's
    error, trimmed, and, when a traceback follows, the exception it ends
    with (a TorchScript failure's first line only says that one happened).
    The whole text belongs in a ``detail`` field."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return ""
    first = lines[0]
    exceptions = [line for line in lines[1:] if _EXCEPTION_LINE.match(line) and not _STACK_LINE.match(line)]
    if exceptions and exceptions[-1] not in first:
        first = f"{first} ... {exceptions[-1]}"
    if len(first) > MAX_REASON_CHARS:
        first = first[: MAX_REASON_CHARS - 3] + "..."
    return first


class Status(str, enum.Enum):
    """How a model's warmup ended. A ``str``, so it compares equal to the
    text the JSON carries (``Status.READY == "READY"``)."""

    READY = "READY"
    FAILED = "FAILED"

    def __str__(self) -> str:
        return self.value


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


class _Record:
    """``to_dict``/``from_dict`` for the dataclasses below. ``_NESTED`` maps
    a field to what parses its JSON value (a nested record, the enum)."""

    _NESTED: Dict[str, Callable[[Any], Any]] = {}

    def to_dict(self) -> Dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls: Type[Record], data: Dict[str, Any]) -> Record:
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key, parse in cls._NESTED.items():
            if values.get(key) is not None:
                values[key] = parse(values[key])
        return cls(**values)


# PreflightRecord.how: where the preflight checked the samples.
PREFLIGHT_SCRATCH = "scratch copy"
PREFLIGHT_SERVING = "requests to the serving model"
PREFLIGHT_RECORD = "the preflight record"


@dataclasses.dataclass
class PreflightRecord(_Record):
    """What the preflight ran for one model before anything was written.

    Attributes:
        how: ``PREFLIGHT_SCRATCH``, ``PREFLIGHT_SERVING`` or, when an earlier
            preflight's record vouched for every sample, ``PREFLIGHT_RECORD``.
        why: why that way (the model was not loaded, its files changed, ...).
        scratch: how the scratch copy was loaded (linked folder or file overrides).
        samples_checked: samples sent; samples_known_good: skipped, because
            the serving model already ran them or the preflight record
            (``helper/preflight_record.py``) says they passed;
            samples_recorded: how many the record vouched for.
        failed_sample: the sample that failed, with each input's request shape.
        error: why, in one line (``one_line``); ``None`` when every sample passed.
        detail: Triton's whole error text, when it holds more than that line.
        model_bytes: the model's files; load_s: the scratch copy's load.
        seconds: the whole preflight.
    """

    how: Optional[str] = None
    why: Optional[str] = None
    scratch: Optional[str] = None
    samples_checked: int = 0
    samples_known_good: int = 0
    samples_recorded: int = 0
    failed_sample: Optional[Dict[str, Any]] = None
    error: Optional[str] = None
    detail: Optional[str] = None
    model_bytes: Optional[int] = None
    load_s: Optional[float] = None
    seconds: Optional[float] = None

    @property
    def passed(self) -> bool:
        return self.error is None



# ModelEntry.rewarm: what the helper did to a READY model with new samples.
REWARM_IN_PLACE = "in place"
REWARM_RELOADED = "reloaded"


# CompileRecord.verdict: what torch.compile did while a PyTorch 2 model loaded.
COMPILE_COMPILED = "compiled"
COMPILE_REUSED = "reused the cache"
COMPILE_UNKNOWN = "unknown"


@dataclasses.dataclass
class CompileRecord(_Record):
    """What torch.compile did while a PyTorch 2 model loaded, from the counts
    its instances kept (``helper/compile_status.py``).

    Attributes:
        verdict: ``COMPILE_COMPILED`` when Inductor compiled any graph anew
            (a cache miss), in the load or its preflight, ``COMPILE_REUSED``
            when every graph came from its cache, ``COMPILE_UNKNOWN`` with
            ``why``.
        instances: the instance processes that reported.
        graphs: graphs torch.compile made (traced, then compiled or taken
            from the cache), summed over instances.
        cache_hits, cache_misses: Inductor's FX graph cache, summed.
        traced_from_cache: functions whose Dynamo output (traced code and
            its compiled graphs) came from Dynamo's own cache, so nothing was
            traced for them (the shim's ``caching precompile``), summed.
        preflight_graphs, preflight_cache_hits, preflight_cache_misses: the
            same for the preflight's scratch copy, which compiles into the
            same cache before the load (0 when it did not run).
        cache_dir: ``TORCHINDUCTOR_CACHE_DIR``.
    """

    verdict: str = COMPILE_UNKNOWN
    why: Optional[str] = None
    instances: int = 0
    graphs: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    traced_from_cache: int = 0
    preflight_graphs: int = 0
    preflight_cache_hits: int = 0
    preflight_cache_misses: int = 0
    cache_dir: Optional[str] = None


@dataclasses.dataclass
class LockHold(_Record):
    """The model's lock as this warmup held it (repository_guard.model_lock)."""

    waited_s: float = 0.0
    held_from: Optional[float] = None
    held_until: Optional[float] = None



@dataclasses.dataclass
class Timings(_Record):
    """Where a load-mode warmup's time went, in parts that add up to
    ``total_s``: the wait for a load slot while other models were in Triton
    (``slot_s``), the preflight, Triton's load with its warmup (``load_s``)
    or the in-place runs that replace it (``in_place_s``), and the helper's
    own time (``helper_s``: everything else, such as
    waiting for the model's lock, re-planning under it and writing the
    file, of which ``replan_s`` and ``write_s`` are parts)."""

    replan_s: float = 0.0
    preflight_s: float = 0.0
    write_s: float = 0.0
    load_s: float = 0.0
    helper_s: float = 0.0
    total_s: float = 0.0
    # A READY model warmed in place: its new samples on the serving
    # instances, in place of Triton's load (``helper/rewarm.py``).
    in_place_s: float = 0.0
    # Waiting for one of max_parallel_loads' slots (``load_jobs.run_jobs``).
    slot_s: float = 0.0

    def settle(self, total_s: float) -> None:
        """Set the total and the helper's own part of it."""
        self.total_s = round(total_s, 6)
        self.helper_s = round(
            max(0.0, total_s - self.slot_s - self.preflight_s - self.load_s - self.in_place_s), 6
        )



@dataclasses.dataclass
class ModelEntry(_Record):
    """One model's part of the report.

    Attributes:
        name: the model.
        status: READY when it is warm, else FAILED with ``error``.
        mode: "load" (rewrite and load) or "requests" (inference requests).
        kind: "plain", "sequence", "decoupled", "sequence, decoupled" or
            "ensemble" (``helper.model_kind``); ``None`` when unknown.
        versions: the versions Triton loads and warms (its version policy).
        members: an ensemble's composing models, nested ensembles' included.
        warmed_for: the ensembles whose shapes this model was warmed with.
        derived_samples: how many of its samples are those shapes.
        threads: the server's OpenMP thread count differs from the model's
            (``threads.py``), and its largest sample was warmed first. Above
            OpenMP's count (where models disagree, OpenMP starts at the
            smallest), what libtorch does about it; below, why its warmed
            shapes may go slow again and after idle pauses, and the fix.
        warmup_samples, count, instances: the plan: samples in the config,
            runs per sample, instances that run each.
        learned_samples: samples learned from live traffic that the config
            holds besides, after the plan's own (``helper/adapt.py``).
        group_sizes, batch_sizes: the shapes planned.
        config_changed: the plan differed from the file.
        config_written: config.pbtxt now holds the plan.
        config_restored: the load failed and the file was put back.
        fallback: why the planned config went to the load API instead of the
            file (a read-only repository); the file is unchanged.
        seconds_to_ready: request start to READY (load mode).
        seconds_warming, requests_sent, served_before_warm: the requests mode.
        finished_s: when the model settled, counted from the first model.
        lock: the model's lock as held; ``None`` when the file was not locked.
        error: why it failed, in one line (``one_line``).
        detail: Triton's whole error text, when it holds more than that line.
        serving_previous_version: after a failure, whether the model still
            serves what it served before.
        preflight: what ran before the load; ``None`` when nothing had to.
        compile: a PyTorch 2 model's compilation during the load; ``None``
            for other models.
        timings: where the time went (load mode).
        stale_temp_files_removed, interrupted_rewrite_restored: what a
            killed writer had left and this one cleaned up.
        rewarm: for a model that was READY and got new samples, ``"in
            place"`` (they ran on the serving instances and the file was
            written; no reload) or ``"reloaded"``; ``rewarm_reason`` says why.
        in_place_runs: the requests an in-place re-warm sent.
    """

    name: str
    status: Status = Status.FAILED
    mode: str = "load"
    kind: Optional[str] = None
    versions: List[str] = dataclasses.field(default_factory=list)
    members: List[str] = dataclasses.field(default_factory=list)
    warmed_for: List[str] = dataclasses.field(default_factory=list)
    derived_samples: int = 0
    threads: Optional[str] = None
    warmup_samples: int = 0
    learned_samples: int = 0
    count: int = 0
    instances: int = 0
    group_sizes: List[int] = dataclasses.field(default_factory=list)
    batch_sizes: List[int] = dataclasses.field(default_factory=list)
    config_changed: bool = False
    config_written: bool = False
    config_restored: Optional[bool] = None
    fallback: Optional[str] = None
    seconds_to_ready: Optional[float] = None
    seconds_warming: Optional[float] = None
    requests_sent: Optional[int] = None
    served_before_warm: Optional[bool] = None
    finished_s: Optional[float] = None
    lock: Optional[LockHold] = None
    error: Optional[str] = None
    detail: Optional[str] = None
    serving_previous_version: Optional[bool] = None
    preflight: Optional[PreflightRecord] = None
    compile: Optional[CompileRecord] = None
    timings: Timings = dataclasses.field(default_factory=Timings)
    stale_temp_files_removed: List[str] = dataclasses.field(default_factory=list)
    interrupted_rewrite_restored: Optional[str] = None
    rewarm: Optional[str] = None
    rewarm_reason: Optional[str] = None
    in_place_runs: Optional[int] = None

    _NESTED = {
        "status": Status,
        "lock": LockHold.from_dict,
        "preflight": PreflightRecord.from_dict,
        "compile": CompileRecord.from_dict,
        "timings": Timings.from_dict,
    }

    @property
    def ready(self) -> bool:
        return self.status == Status.READY



@dataclasses.dataclass
class WarmupReport(_Record):
    """The helper's answer to one request.

    Attributes:
        models: one entry per model, in request order.
        mode: "load" or "requests"; mode_reason: why.
        limitation: what the requests mode cannot promise; ``None`` in load mode.
        seconds_total: from the first model's start to the last one's end.
        plan_s: checking the request and planning every model, before any write.
    """

    models: List[ModelEntry] = dataclasses.field(default_factory=list)
    mode: str = "load"
    mode_reason: str = ""
    limitation: Optional[str] = None
    seconds_total: Optional[float] = None
    plan_s: Optional[float] = None

    _NESTED = {"models": lambda entries: [ModelEntry.from_dict(entry) for entry in entries]}

    @property
    def loaded(self) -> List[str]:
        return [entry.name for entry in self.models if entry.ready]

    @property
    def failed(self) -> List[str]:
        return [entry.name for entry in self.models if not entry.ready]

    def entry(self, name: str) -> ModelEntry:
        """The entry of model ``name``; KeyError when the report has none."""
        for entry in self.models:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def to_dict(self) -> Dict[str, Any]:
        # loaded and failed travel too, for readers of the JSON that do not
        # use this class (jq in a deployment script).
        return {**_plain(self), "loaded": self.loaded, "failed": self.failed}
