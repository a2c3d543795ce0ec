"""Read the requests in Triton's trace files, as a stream.

``tritonserver --trace-config triton,file=PATH --trace-config level=TIMESTAMPS
--trace-config level=TENSORS`` writes one JSON array of records. Each request
(trace id) gives a record with ``model_name``, timestamp records and, at level
``TENSORS``, a ``TENSOR_QUEUE_INPUT`` record per input: its name, dtype, shape
as ``"2,5,64"`` (batch dim included where the model batches) and its values as
comma-separated text. Triton writes the records of one trace together when the
trace ends, so a request's records are near each other, but the reader does
not rely on that: it keys every record by id.

The file can be gigabytes: it is parsed record by record (``ijson``) and a
request's tensor text is handed on, not kept. With ``log_frequency`` or a
``count`` Triton writes ``PATH.0``, ``PATH.1``, ...: pass them all.
"""

import dataclasses
import pathlib
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import ijson

from triton_warmup.traffic.raw_text import RawTextError, RawTextReader

INPUT_ACTIVITY = "TENSOR_QUEUE_INPUT"

# Triton writes a request's model record before its tensors; this many
# requests with tensors but no model record yet is a trace without model
# records (level=TENSORS alone), whose inputs are then counted, not kept.
_MAX_UNNAMED = 10_000


def recording_flags(path: pathlib.Path, rate: int = 1) -> List[str]:
    """The tritonserver flags that record every ``rate``-th request with its
    model name (``TIMESTAMPS``) and its input tensors (``TENSORS``) to
    ``path``; the file is complete once the server shuts down cleanly."""
    settings = [f"triton,file={path}", "level=TIMESTAMPS", "level=TENSORS", f"rate={rate}", "count=-1"]
    return [f"--trace-config={setting}" for setting in settings]


class TraceError(ValueError):
    """A trace file that cannot be read as Triton's trace output."""


@dataclasses.dataclass(frozen=True)
class TracedTensor:
    """One input of one request as the trace recorded it.

    Attributes:
        name: the input's name.
        dtype: Triton's spelling (``INT64``, ``FP32``, ``BYTES``).
        shape: the request's shape, batch dim included where the model batches.
        data: the values as Triton wrote them: numbers comma-separated;
            INT8/UINT8 characters and BYTES elements as raw text, one
            Latin-1 character per byte (``raw_text.raw_bytes`` and
            ``traffic.plan.recorded_bytes`` read them).
    """

    name: str
    dtype: str
    shape: Tuple[int, ...]
    data: str


# (the run of the server that wrote the record, Triton's id in that run)
TraceId = Tuple[int, int]


def _run_of(path: pathlib.Path) -> pathlib.Path:
    """The file a numbered part (``PATH.3``) belongs to; a file is its own run."""
    return path.with_suffix("") if path.suffix[1:].isdigit() else path


@dataclasses.dataclass
class TracedRequest:
    """One request to one model, with the inputs it sent.

    ``trace_id``: which run of the server wrote it (the index of its file,
    or of its numbered parts' base name, among those read) and Triton's id.
    Every tritonserver process numbers its requests from 1, so traces of
    replicas or of restarts reuse the same ids.
    ``parent_id``: the trace id of the ensemble request that sent it to a
    composing model (Triton records both); ``None`` for a client's request.
    ``request_id``: the id its sender gave it, if any (the helper marks its
    own requests so, and the live watch leaves them out).
    """

    trace_id: TraceId
    model: str
    inputs: Dict[str, TracedTensor]
    parent_id: Optional[TraceId] = None
    request_id: Optional[str] = None


@dataclasses.dataclass
class ReadSummary:
    """What reading the files found besides the requests.

    Attributes:
        files: the files read.
        bytes_read: their size in all.
        records: JSON records read.
        truncated: per file that ends inside the array, why (a server that
            was killed leaves its trace file without the closing ``]``); the
            records before that point count.
        tensors_without_model: trace ids with input records but no
            ``model_name`` record (``level=TENSORS`` without ``TIMESTAMPS``).
        requests_without_tensors: requests with a model but no input records
            (``level=TIMESTAMPS`` without ``TENSORS``; or, on Triton 2.51, a
            request its sequence batcher scheduled, whose inputs it never traces).
        models_without_tensors: those requests per model.
        values_escaped: tensor data and request ids that Triton wrote
            without escaping and that needed it (``raw_text``).
    """

    files: List[str] = dataclasses.field(default_factory=list)
    bytes_read: int = 0
    records: int = 0
    truncated: Dict[str, str] = dataclasses.field(default_factory=dict)
    tensors_without_model: int = 0
    requests_without_tensors: int = 0
    values_escaped: int = 0
    models_without_tensors: Dict[str, int] = dataclasses.field(default_factory=dict)


def _shape(text: str, path: str) -> Tuple[int, ...]:
    try:
        return tuple(int(dim) for dim in text.split(",")) if text else ()
    except ValueError:
        raise TraceError(f"{path}: a tensor shape {text!r} is not a list of integers") from None


def _records(path: pathlib.Path, summary: ReadSummary, progress) -> Iterator[dict]:
    with open(path, "rb") as handle:
        reader = RawTextReader(handle, progress.update)
        try:
            for record in ijson.items(reader, "item", use_float=True):
                summary.records += 1
                if isinstance(record, dict):
                    yield record
        except RawTextError as error:
            raise TraceError(f"{path}: {error}") from None
        except ijson.JSONError as error:
            # The parser says "premature EOF" for a file that ends inside the
            # array; anything else is broken where the parser stopped.
            if reader.at_end and "premature EOF" in str(error):
                summary.truncated[str(path)] = f"ends inside the array ({error})"
                return
            raise TraceError(
                f"{path}: not Triton's trace format near byte {reader.offset}: {_first_line(error)}"
            ) from None
        finally:
            summary.values_escaped += reader.values_escaped


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def read_requests(
    paths: Sequence[pathlib.Path],
    required_inputs: Optional[Callable[[str], Optional[Set[str]]]] = None,
    summary: Optional[ReadSummary] = None,
    show_progress: Optional[bool] = None,
) -> Iterator[TracedRequest]:
    """Every request of the trace files that names a model and sent inputs.

    Args:
        paths: trace files, in any order.
        required_inputs: the inputs a model's config requires, or ``None``
            for a model the caller does not plan (its requests are handed on
            without inputs, at once). A request is handed on as soon as its
            model and those inputs are seen, so memory holds only the
            requests still being read. Without it every request is kept
            until the files end.
        summary: filled in while reading.
        show_progress: a progress bar of bytes read on stderr; ``None``
            shows it only on a terminal.

    Raises:
        TraceError: a file that is missing, not JSON, or not Triton's format.
    """
    summary = summary if summary is not None else ReadSummary()
    files = [pathlib.Path(path) for path in paths]
    for path in files:
        if not path.is_file():
            raise TraceError(f"{path}: no such trace file")
    summary.files = [str(path) for path in files]
    summary.bytes_read = sum(path.stat().st_size for path in files)
    pending: Dict[TraceId, TracedRequest] = {}
    # Inputs read before their request's model record, and the ids whose
    # inputs were dropped because too many such requests were open at once
    # (a trace without model records would otherwise end up in memory).
    unnamed: Dict[TraceId, Dict[str, TracedTensor]] = {}
    unnamed_dropped: Set[TraceId] = set()
    # Requests already handed on: their later records (outputs, timestamps)
    # are of no use.
    done: Set[TraceId] = set()
    runs: Dict[pathlib.Path, int] = {}

    # Imported here: the helper's traffic watch reads traces without a bar,
    # and its imports delay the server's READY.
    import tqdm  # noqa: PLC0415

    # tqdm's disable=None means "only on a terminal".
    disable = None if show_progress is None else not show_progress
    with tqdm.tqdm(
        total=summary.bytes_read, unit="B", unit_scale=True, desc="reading trace", disable=disable, leave=False
    ) as progress:
        for path in files:
            run = runs.setdefault(_run_of(path), len(runs))
            for record in _records(path, summary, progress):
                trace_id = (run, record.get("id"))
                if trace_id in done:
                    continue
                if "model_name" in record:
                    model = str(record["model_name"])
                    parent_id = (run, record["parent_id"]) if record.get("parent_id") is not None else None
                    request_id = str(record["request_id"]) if record.get("request_id") else None
                    unnamed_dropped.discard(trace_id)
                    request = TracedRequest(trace_id, model, unnamed.pop(trace_id, {}), parent_id, request_id)
                    if required_inputs is not None and required_inputs(model) is None:
                        # A model the caller does not plan: only counted.
                        done.add(trace_id)
                        yield TracedRequest(trace_id, model, {}, parent_id, request_id)
                        continue
                    pending[trace_id] = request
                elif record.get("activity") == INPUT_ACTIVITY:
                    traced = _tensor(record, path)
                    if trace_id in pending:
                        pending[trace_id].inputs[traced.name] = traced
                    elif trace_id in unnamed or len(unnamed) < _MAX_UNNAMED:
                        unnamed.setdefault(trace_id, {})[traced.name] = traced
                        continue
                    else:
                        unnamed_dropped.add(trace_id)
                        continue
                else:
                    continue
                request = pending[trace_id]
                if required_inputs is not None and required_inputs(request.model) <= set(request.inputs):
                    done.add(trace_id)
                    yield pending.pop(trace_id)
    for request in pending.values():
        if request.inputs:
            yield request
        else:
            summary.requests_without_tensors += 1
            summary.models_without_tensors[request.model] = summary.models_without_tensors.get(request.model, 0) + 1
    summary.tensors_without_model = len(unnamed) + len(unnamed_dropped)


def _tensor(record: dict, path: pathlib.Path) -> TracedTensor:
    tensor = record.get("tensor") or {}
    try:
        return TracedTensor(
            str(tensor["name"]), str(tensor["dtype"]), _shape(str(tensor["shape"]), str(path)), str(tensor.get("data", ""))
        )
    except KeyError as missing:
        raise TraceError(f"{path}: a {INPUT_ACTIVITY} record lacks {missing}") from None


def expand_paths(paths: Iterable[str]) -> List[pathlib.Path]:
    """The files named, with Triton's numbered parts: a path that is not a
    file but has ``PATH.0``, ``PATH.1``, ... beside it stands for all of them."""
    files = []
    for name in paths:
        path = pathlib.Path(name)
        if path.is_file():
            files.append(path)
            continue
        parts = sorted(
            (part for part in path.parent.glob(path.name + ".*") if part.suffix[1:].isdigit()),
            key=lambda part: int(part.suffix[1:]),
        )
        files.extend(parts or [path])
    return files
