"""Turn recorded traffic into a plan file with listed samples.

Per model: every shape the config can take, ranked by how many requests had
it, cut by a sample count or by the share of recorded requests to cover, and
listed in warmup order: most frequent last by default (``ORDERS``). Each
sample can carry the data of the first request recorded at its shape,
written to the model's ``warmup/`` folder as Triton's ``input_data_file``.

Nothing is written until the whole plan is made and checked by the helper's
own validator and planner; the data files are written atomically under names
made from their content (so a second run writes nothing new and never
changes a file an older plan names), and removed again if a later write fails.
"""

import dataclasses
import hashlib
import math
import pathlib
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import yaml
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import serialize_byte_tensor, triton_to_np_dtype

from triton_warmup import HELPER_MODEL
from triton_warmup.helper.config_rewrite import read_config
from triton_warmup.helper.job_planning import WARMUP_DATA_FOLDER
from triton_warmup.helper.repository_guard import fsync_folder, write_atomically
from triton_warmup.helper.request import DATA_FILE_KEY, parse_plan_document
from triton_warmup.helper.warmup_plan import plan_listed_samples
from triton_warmup.traffic.shapes import ModelTraffic, Shape, TrafficProfile, counted_dicts, rejected_dicts
from triton_warmup.traffic.raw_text import BYTES_QUOTE, RAW_CHARACTER_DTYPES, raw_bytes
from triton_warmup.traffic.trace import TracedTensor

# recorded: each sample carries the data of its first recorded request;
# auto: floats random, everything else zeros (the helper's default);
# random / zero: that policy for every input.
DATA_CHOICES = ("recorded", "auto", "random", "zero")

# The order Triton runs the samples in. TorchScript (torch 2.13, Triton's
# libtorch backend) kept the shapes warmed last fast and let shapes warmed
# early go slow again: on model-v1 with 161 recorded shapes, most frequent
# last left 1.9% of the recorded requests on a shape whose first request was
# still slow, most frequent first 96.7% (bench/results/traffic_benchmark.md).
FREQUENT_LAST = "frequent-last"
FREQUENT_FIRST = "frequent-first"
ORDERS = (FREQUENT_LAST, FREQUENT_FIRST)

# Where the recorded data goes inside the model's warmup/ folder.
TRAFFIC_DATA_FOLDER = "traffic"

# A recorded input above this many bytes (one request's worth) keeps the
# default data: one huge request must not put gigabytes into a repository
# that ships in images and git. 4 MiB holds a [512, 2048] FP32 input.
DEFAULT_MAX_DATA_BYTES = 4 * 2**20

# Triton's trace writer leaves these without values (server src/tracer.cc).
_NO_RECORDED_DATA = {
    "FP16": "Triton's trace holds no values for FP16",
    "BF16": "Triton's trace holds no values for BF16",
}

# Recorded strings are what users typed (a tokenizer's input), and a string
# model's shape is its count of strings, not their content: the plan keeps
# the helper's policy for them (zero data, empty strings), as it always has.
STRINGS_KEEP_THE_POLICY = (
    "its recorded strings are what users sent, and a string's shape does not depend on them"
)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


class TrafficPlanError(ValueError):
    """The plan cannot be made or written; nothing was left on disk."""


@dataclasses.dataclass
class ModelSelection:
    """What the plan takes for one model.

    Attributes:
        shapes: the planned shapes with their request counts, in warmup order.
        requests: every recorded request of the model.
        covered: the recorded requests whose shape is planned.
        left_out: shapes the cut left out, with their counts.
        rejected: requests the config cannot take, as (raw shapes, reason, count).
        data_notes: inputs whose recorded data could not be used, and why.
    """

    model: str
    shapes: List[Tuple[Shape, int]]
    requests: int
    covered: int
    left_out: List[Tuple[Shape, int]]
    rejected: List[Tuple[str, str, int]]
    data_notes: Dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.covered / self.requests if self.requests else 0.0

    def to_dict(self) -> Dict:
        return {
            "model": self.model,
            "requests": self.requests,
            "covered": self.covered,
            "share": self.share,
            "samples": counted_dicts(self.shapes),
            "left_out": counted_dicts(self.left_out),
            "rejected": rejected_dicts(self.rejected),
            "data_notes": dict(self.data_notes),
        }


def select_shapes(
    traffic: ModelTraffic, max_samples: Optional[int] = None, cover: Optional[float] = None
) -> Tuple[List[Tuple[Shape, int]], List[Tuple[Shape, int]]]:
    """The shapes to warm, most frequent first, and those left out.

    ``cover`` keeps the fewest shapes whose requests reach that share of the
    model's recorded requests (rejected ones count in the total, so a model
    with rejected requests may need every shape); ``max_samples`` caps the
    count. Both may be given; the smaller cut wins.
    """
    ranked = traffic.most_frequent()
    keep = len(ranked)
    if cover is not None:
        # The smallest prefix that reaches the share; a tiny tolerance keeps
        # 0.99 of 100 requests at 99, not 100, despite float rounding.
        needed = math.ceil(cover * traffic.requests - 1e-9)
        running = 0
        for index, (_, count) in enumerate(ranked):
            running += count
            if running >= needed:
                keep = index + 1
                break
    if max_samples is not None:
        keep = min(keep, max_samples)
    return ranked[:keep], ranked[keep:]


def _recorded_array(tensor: TracedTensor, elements: int) -> np.ndarray:
    """The tensor's values, flat, from the text Triton wrote."""
    if tensor.dtype in RAW_CHARACTER_DTYPES:
        # One raw character per element, a comma between two.
        raw = raw_bytes(tensor.data)
        if len(raw) != max(2 * elements - 1, 0) or raw[1::2] != b"," * max(elements - 1, 0):
            raise ValueError(f"the trace's {tensor.dtype} text does not hold {elements} values")
        return np.frombuffer(raw[0::2], dtype=triton_to_np_dtype(tensor.dtype))
    if tensor.dtype == "BYTES":
        return np.array(traced_strings(tensor, elements), dtype=np.object_)
    values = tensor.data.split(",") if tensor.data else []
    if len(values) != elements:
        raise ValueError(f"the trace holds {len(values)} values for shape {list(tensor.shape)}")
    dtype = np.dtype(triton_to_np_dtype(tensor.dtype))
    if dtype == np.bool_:
        # "0" and "1" are both non-empty strings: parse them as numbers.
        return np.array(values, dtype=np.int64).astype(np.bool_)
    return np.array(values, dtype=dtype)


def traced_strings(tensor: TracedTensor, elements: int) -> List[bytes]:
    """The BYTES elements Triton wrote as ``\\"<bytes>\\"`` joined by commas.

    Raises:
        ValueError: the elements hold the very separator Triton puts between
            them, so where one ends cannot be told.
    """
    raw = raw_bytes(tensor.data)
    if elements == 0:
        return []
    quote = len(BYTES_QUOTE)
    parts = raw[quote:-quote].split(BYTES_QUOTE + b"," + BYTES_QUOTE) if len(raw) >= 2 * quote else []
    if elements == 1:
        parts = [raw[quote:-quote]]
    if len(parts) != elements:
        raise ValueError(
            f"its {elements} strings hold the separator Triton writes between them unescaped, "
            "so where each ends cannot be told"
        )
    return parts


def recorded_bytes(tensor: TracedTensor, batching: bool) -> bytes:
    """One request's worth (the first item of the batch) of the recorded
    values, in the tensor's dtype (which ``request_shape`` checked against
    the config), as Triton reads ``input_data_file``: raw values for
    numbers, each string as a 4-byte little-endian length and its bytes.

    Raises:
        ValueError: the trace holds no usable values for this tensor.
    """
    reason = _NO_RECORDED_DATA.get(tensor.dtype)
    if reason:
        raise ValueError(reason)
    elements = 1
    for dim in tensor.shape:
        elements *= dim
    array = _recorded_array(tensor, elements).reshape(tensor.shape)
    if batching:
        array = array[0]
    if tensor.dtype == "BYTES":
        return serialize_byte_tensor(np.ascontiguousarray(array)).item()
    return np.ascontiguousarray(array).tobytes()


def data_file_name(input_name: str, payload: bytes) -> str:
    """The file's path under ``warmup/``: named by the input and the content,
    so the same data always gets the same name and another never replaces it."""
    digest = hashlib.sha256(payload).hexdigest()[:16]
    safe = _SAFE_NAME.sub("_", input_name)[:64] or "input"
    return f"{TRAFFIC_DATA_FOLDER}/{safe}-{digest}.bin"


@dataclasses.dataclass
class TrafficPlan:
    """A plan made from traffic, not yet written.

    Attributes:
        document: the plan document (what the plan file holds).
        selections: per model, what was taken and left out.
        data_files: file path (in a model's ``warmup/``) to its bytes.
    """

    document: Dict
    selections: List[ModelSelection]
    data_files: Dict[pathlib.Path, bytes]

    @property
    def samples(self) -> int:
        return sum(len(selection.shapes) for selection in self.selections)


def make_plan(
    profile: TrafficProfile,
    configs: Mapping[str, model_config_pb2.ModelConfig],
    repository: pathlib.Path,
    max_samples: Optional[int] = None,
    cover: Optional[float] = None,
    data: str = "auto",
    count: Optional[int] = None,
    order: str = FREQUENT_LAST,
    max_data_bytes: int = DEFAULT_MAX_DATA_BYTES,
) -> TrafficPlan:
    """The plan for every model of ``profile``, checked as the helper checks it.

    Raises:
        TrafficPlanError: no model of the repository in the trace, or a
            plan the helper would refuse.
    """
    if data not in DATA_CHOICES:
        raise TrafficPlanError(f"data must be one of {list(DATA_CHOICES)}, got {data!r}")
    if order not in ORDERS:
        raise TrafficPlanError(f"order must be one of {list(ORDERS)}, got {order!r}")
    models: Dict[str, Dict] = {}
    selections = []
    data_files: Dict[pathlib.Path, bytes] = {}
    for name, traffic in sorted(profile.models.items()):
        if not traffic.shapes:
            selections.append(
                ModelSelection(name, [], traffic.requests, 0, [], traffic.rejected_list())
            )
            continue
        config = configs[name]
        chosen, left_out = select_shapes(traffic, max_samples, cover)
        selection = ModelSelection(
            name, chosen, traffic.requests, sum(count for _, count in chosen), left_out, traffic.rejected_list()
        )
        entry: Dict = {}
        if count is not None:
            entry["count"] = count
        if data in ("random", "zero"):
            entry["data"] = {model_input.name: data for model_input in config.input}
        samples = []
        for shape, requests in (reversed(chosen) if order == FREQUENT_LAST else chosen):
            sample: Dict = {"batch_size": shape.batch_size, "inputs": {key: list(dims) for key, dims in shape.inputs}}
            if data == "recorded":
                files = _sample_files(
                    config, traffic.recorded[shape], repository / name, selection.data_notes, data_files, max_data_bytes
                )
                if files:
                    sample["data"] = {key: {DATA_FILE_KEY: file_name} for key, file_name in files.items()}
            sample["requests"] = requests
            samples.append(sample)
        entry["samples"] = samples
        models[name] = entry
        selections.append(selection)
    if not models:
        raise TrafficPlanError(
            "the trace holds no request that a model of the repository can take as a warmup sample"
            + (f" (other models in it: {sorted(profile.other_models)})" if profile.other_models else "")
        )
    document = {"models": models}
    _check_with_helper(document, configs, data_files)
    return TrafficPlan(document, selections, data_files)


def _sample_files(
    config: model_config_pb2.ModelConfig,
    inputs: Mapping[str, TracedTensor],
    model_dir: pathlib.Path,
    notes: Dict[str, str],
    data_files: Dict[pathlib.Path, bytes],
    max_data_bytes: int = DEFAULT_MAX_DATA_BYTES,
) -> Dict[str, str]:
    """Input name to the data file (under ``warmup/``) holding its recorded values."""
    files = {}
    batching = config.max_batch_size > 0
    for model_input in config.input:
        tensor = inputs.get(model_input.name)
        if tensor is None:
            continue
        if tensor.dtype == "BYTES":
            notes.setdefault(model_input.name, f"{STRINGS_KEEP_THE_POLICY}: its samples use the default data policy")
            continue
        try:
            payload = recorded_bytes(tensor, batching)
        except ValueError as reason:
            notes.setdefault(model_input.name, f"{reason}: its samples use the default data policy")
            continue
        if len(payload) > max_data_bytes:
            notes.setdefault(
                model_input.name,
                f"a recorded request holds {len(payload)} bytes, above --max-data-bytes {max_data_bytes}: "
                "samples of that size use the default data policy",
            )
            continue
        file_name = data_file_name(model_input.name, payload)
        data_files[model_dir / WARMUP_DATA_FOLDER / file_name] = payload
        files[model_input.name] = file_name
    return files


def _check_with_helper(document: Dict, configs, data_files) -> None:
    """Run the helper's own checks on the plan before anything is written:
    a plan this command writes must never come back refused."""
    try:
        request = parse_plan_document(document, HELPER_MODEL)
        for plan in request.plans:
            plan_listed_samples(
                configs[plan.name],
                plan.samples,
                count=plan.count or 1,
                data=plan.data,
                plan_path=plan.plan_path,
            )
    except ValueError as error:
        raise TrafficPlanError(f"the plan made from the trace would be refused: {error}") from None


def render_plan(plan: TrafficPlan, header: Sequence[str] = ()) -> str:
    """The plan file's text: comment lines, then the document as YAML."""
    comments = "".join(f"# {line}\n" for line in header)
    body = yaml.safe_dump(plan.document, sort_keys=False, default_flow_style=None, width=120)
    return comments + body


def write_plan(plan: TrafficPlan, output: pathlib.Path, header: Sequence[str] = ()) -> List[pathlib.Path]:
    """Write the data files, then the plan file; return the data files written.

    Every file is written atomically; a data file that already holds the
    same bytes is left alone. If a write fails, the files and folders this
    call created are removed again and ``TrafficPlanError`` says why.
    """
    created_files: List[pathlib.Path] = []
    created_folders: List[pathlib.Path] = []
    try:
        for path, payload in sorted(plan.data_files.items()):
            if path.is_file() and path.read_bytes() == payload:
                continue
            for folder in reversed(path.parents):
                if not folder.exists():
                    folder.mkdir()
                    created_folders.append(folder)
            write_atomically(path, payload)
            created_files.append(path)
        output.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(output, render_plan(plan, header).encode("utf-8"))
    except OSError as error:
        for path in created_files:
            path.unlink(missing_ok=True)
        for folder in reversed(created_folders):
            try:
                folder.rmdir()
                fsync_folder(folder.parent)
            except OSError:
                pass
        raise TrafficPlanError(f"writing the plan failed, nothing was kept: {error}") from None
    return created_files


def named_data_files(document: Any, models: Iterable[str]) -> Dict[str, Set[str]]:
    """Per model, the data files (paths under ``warmup/``) a plan document names,
    its defaults' included."""
    named: Dict[str, Set[str]] = {name: set() for name in models}
    if not isinstance(document, Mapping):
        return named

    def files_of(data: Any) -> Set[str]:
        if not isinstance(data, Mapping):
            return set()
        return {
            str(spec[DATA_FILE_KEY])
            for spec in data.values()
            if isinstance(spec, Mapping) and DATA_FILE_KEY in spec
        }

    defaults = files_of((document.get("defaults") or {}).get("data")) if isinstance(document.get("defaults"), Mapping) else set()
    for name in named:
        named[name] |= defaults
        entry = (document.get("models") or {}).get(name) if isinstance(document.get("models"), Mapping) else None
        if not isinstance(entry, Mapping):
            continue
        named[name] |= files_of(entry.get("data"))
        for sample in entry.get("samples") or []:
            if isinstance(sample, Mapping):
                named[name] |= files_of(sample.get("data"))
    return named


def prune_data_files(
    repository: pathlib.Path,
    configs: Mapping[str, model_config_pb2.ModelConfig],
    keep: Mapping[str, Set[str]],
) -> List[pathlib.Path]:
    """Remove the files of each model's ``warmup/traffic/`` that neither
    ``keep`` nor the model's ``config.pbtxt`` on disk names; return them.

    Only ``warmup/traffic/`` is looked at: that folder is this command's,
    and a hand-written data file elsewhere in ``warmup/`` is never touched.
    """
    removed = []
    for name in sorted(configs):
        folder = repository / name / WARMUP_DATA_FOLDER / TRAFFIC_DATA_FOLDER
        if not folder.is_dir():
            continue
        try:
            _, on_disk = read_config(repository / name)
        except (OSError, ValueError):
            continue  # a config that cannot be read could name anything: keep every file
        named = set(keep.get(name, ())) | {
            sample_input.input_data_file
            for sample in on_disk.model_warmup
            for sample_input in sample.inputs.values()
            if sample_input.input_data_file
        }
        unnamed = [
            path for path in sorted(folder.iterdir())
            if path.is_file() and path.relative_to(folder.parent).as_posix() not in named
        ]
        for path in unnamed:
            path.unlink()
        if unnamed:
            fsync_folder(folder)
        removed.extend(unnamed)
    return removed
