"""What kind of model a config describes, and how a request reaches it.

Triton serves four kinds that a warmup must treat differently:

* **plain**: one request, one response;
* **sequence** (``sequence_batching``): every request belongs to a sequence
  and carries a correlation ID and start/end flags; the sequence batcher
  adds the control inputs (``START``, ``END``, ``READY``, ``CORRID``) that
  the model declares. Triton's warmup bypasses that batcher, so a warmup
  sample must carry the control inputs itself (as Triton's own
  ``qa/L0_warmup`` does); a request must be batch size 1;
* **decoupled** (``model_transaction_policy { decoupled: true }``): any
  number of responses per request, then a final flag;
* **ensemble**: no model of its own; Triton refuses ``model_warmup`` in its
  config, and its composing models are what runs (``ensemble_flow``).

``kind_of`` reads the kind from a config; ``requests_for`` turns a sample's
arrays into the requests that kind needs. Pure Python and numpy.
"""

import dataclasses
import enum
import hashlib
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from tritonclient.grpc import model_config_pb2

DataType = model_config_pb2.DataType
ControlKind = model_config_pb2.ModelSequenceBatching.Control.Kind

ENSEMBLE_PLATFORM = "ensemble"

# The correlation ID a warmup sample's CORRID control carries: a sample is a
# sequence of one request, and Triton's warmup runs it outside the batcher,
# so the value only has to be a valid ID of the control's type.
WARMUP_CORRELATION_ID = 1
WARMUP_CORRELATION_STRING = b"warmup_helper"

# Where the helper writes the control values that samples read, under the
# model's warmup/ folder (Triton reads input_data_file from there).
CONTROL_DATA_FOLDER = "warmup_helper_controls"


class Kind(str, enum.Enum):
    """A model's kind; a ``str``, so it is its JSON value."""

    PLAIN = "plain"
    SEQUENCE = "sequence"
    DECOUPLED = "decoupled"
    ENSEMBLE = "ensemble"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class Control:
    """One control input of a sequence model and the value a one-request
    sequence gives it: true for START, END and READY, an ID for CORRID."""

    name: str
    kind: str
    data_type: int
    value: bytes

    @property
    def file_name(self) -> str:
        """The data file (under ``warmup/``) a sample reads the value from:
        named by the content, so the same value always has the same name."""
        digest = hashlib.sha256(self.value).hexdigest()[:16]
        return f"{CONTROL_DATA_FOLDER}/{DataType.Name(self.data_type)[len('TYPE_'):].lower()}-{digest}.bin"

    @property
    def all_zero(self) -> bool:
        return not any(self.value)


@dataclasses.dataclass(frozen=True)
class EnsembleStep:
    """One step of an ensemble: a model and its tensors' names in the ensemble."""

    model: str
    # "" for the version Triton picks (model_version -1).
    version: str
    # (the model's input, the ensemble tensor it reads)
    inputs: Tuple[Tuple[str, str], ...]
    # (the model's output, the ensemble tensor it writes)
    outputs: Tuple[Tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """A model's kind and what it takes to talk to it.

    Attributes:
        kind: sequence wins over decoupled, which it can also be.
        decoupled: responses come as a stream ending with a final flag.
        controls: a sequence model's control inputs.
        states: a sequence model's implicit state inputs.
        steps: an ensemble's steps, as its config lists them.
    """

    kind: Kind = Kind.PLAIN
    decoupled: bool = False
    controls: Tuple[Control, ...] = ()
    states: Tuple[str, ...] = ()
    steps: Tuple[EnsembleStep, ...] = ()

    @property
    def label(self) -> str:
        """The kind as the report shows it (``sequence, decoupled``)."""
        if self.kind == Kind.SEQUENCE and self.decoupled:
            return "sequence, decoupled"
        return str(self.kind)

    @property
    def sequence(self) -> bool:
        return self.kind == Kind.SEQUENCE

    @property
    def ensemble(self) -> bool:
        return self.kind == Kind.ENSEMBLE

    def cannot_warm(self) -> Optional[str]:
        """Why Triton's warmup cannot run this model at all, or ``None``."""
        if self.states:
            return (
                f"its sequence_batching.state ({', '.join(self.states)}) is implicit state, which Triton's "
                "warmup cannot carry: warmup requests have no sequence, so the backend's "
                "TRITONBACKEND_StateNew refuses them (core src/backend_model.cc) and the load would fail. "
                "Warm it with the requests mode once it is loaded, or leave it out of the plan"
            )
        return None


def _true_value(control: model_config_pb2.ModelSequenceBatching.Control) -> Tuple[int, bytes]:
    """The data type and bytes of a boolean control's true value."""
    if len(control.int32_false_true) == 2:
        return DataType.TYPE_INT32, np.int32(control.int32_false_true[1]).tobytes()
    if len(control.fp32_false_true) == 2:
        return DataType.TYPE_FP32, np.float32(control.fp32_false_true[1]).tobytes()
    if len(control.bool_false_true) == 2:
        return DataType.TYPE_BOOL, np.bool_(control.bool_false_true[1]).tobytes()
    raise ValueError(f"control {ControlKind.Name(control.kind)} gives no false/true values")


def _correlation_value(data_type: int) -> bytes:
    if data_type == DataType.TYPE_STRING:
        # Triton's BYTES layout: a 4-byte little-endian length, then the bytes.
        return len(WARMUP_CORRELATION_STRING).to_bytes(4, "little") + WARMUP_CORRELATION_STRING
    dtypes = {
        DataType.TYPE_UINT64: np.uint64,
        DataType.TYPE_INT64: np.int64,
        DataType.TYPE_UINT32: np.uint32,
        DataType.TYPE_INT32: np.int32,
    }
    if data_type not in dtypes:
        raise ValueError(f"CORRID control of type {DataType.Name(data_type)}, which Triton does not take")
    return dtypes[data_type](WARMUP_CORRELATION_ID).tobytes()


def _controls(batching: model_config_pb2.ModelSequenceBatching) -> Tuple[Control, ...]:
    controls = []
    for control_input in batching.control_input:
        for control in control_input.control:
            kind = ControlKind.Name(control.kind)[len("CONTROL_SEQUENCE_"):]
            if kind == "CORRID":
                data_type, value = control.data_type, _correlation_value(control.data_type)
            else:
                data_type, value = _true_value(control)
            controls.append(Control(control_input.name, kind, data_type, value))
    return tuple(controls)


def kind_of(config: model_config_pb2.ModelConfig) -> ModelKind:
    """The kind of model ``config`` describes.

    Raises:
        ValueError: a sequence control Triton itself would refuse.
    """
    if config.platform == ENSEMBLE_PLATFORM or config.HasField("ensemble_scheduling"):
        steps = tuple(
            EnsembleStep(
                model=step.model_name,
                version="" if step.model_version < 0 else str(step.model_version),
                inputs=tuple(sorted(step.input_map.items())),
                outputs=tuple(sorted(step.output_map.items())),
            )
            for step in config.ensemble_scheduling.step
        )
        return ModelKind(Kind.ENSEMBLE, steps=steps)
    decoupled = config.model_transaction_policy.decoupled
    if config.HasField("sequence_batching"):
        batching = config.sequence_batching
        return ModelKind(
            Kind.SEQUENCE,
            decoupled=decoupled,
            controls=_controls(batching),
            states=tuple(state.input_name for state in batching.state),
        )
    return ModelKind(Kind.DECOUPLED if decoupled else Kind.PLAIN, decoupled=decoupled)


def add_controls(sample: model_config_pb2.ModelWarmup, kind: ModelKind) -> Dict[str, bytes]:
    """Give ``sample`` the control inputs of a sequence model, as override
    inputs of dims ``[1]`` (the shape the sequence batcher gives them).

    Returns the data files the sample reads (path under ``warmup/`` to
    bytes); a value of zeros needs none (``zero_data``).
    """
    files = {}
    for control in kind.controls:
        data = sample.inputs[control.name]
        data.data_type = control.data_type
        del data.dims[:]
        data.dims.append(1)
        if control.all_zero:
            data.zero_data = True
        else:
            data.input_data_file = control.file_name
            files[control.file_name] = control.value
    return files


@dataclasses.dataclass
class InferRequest:
    """One inference request as the helper sends it.

    Attributes:
        model, version: where it goes ("" for the version Triton picks).
        inputs: input name to array (batch dim included where the model batches).
        outputs: the outputs to ask for.
        correlation_id: a sequence's ID; 0 for none.
        start, end: the sequence's start and end flags.
        decoupled: read a stream of responses up to the final flag.
    """

    model: str
    version: str
    inputs: Dict[str, np.ndarray]
    outputs: Sequence[str]
    correlation_id: Union[int, str] = 0
    start: bool = False
    end: bool = False
    decoupled: bool = False


# Sends a request; returns each response's outputs (a decoupled model may
# answer with any number of responses, the final one often empty); raises
# with Triton's message when a response is an error.
Infer = Callable[[InferRequest], List[Dict[str, np.ndarray]]]


def correlation_ids(rng: np.random.Generator) -> Iterator[int]:
    """Correlation IDs for the helper's own sequences: random in the upper
    half of the 63-bit range, far from the small IDs clients count up from,
    so a sequence of the helper's never joins one of theirs."""
    while True:
        yield int(rng.integers(2**62, 2**63 - 1))


def requests_for(
    kind: ModelKind,
    model: str,
    version: str,
    config: model_config_pb2.ModelConfig,
    arrays: Dict[str, np.ndarray],
    ids: Iterator[int],
) -> List[InferRequest]:
    """The requests that run one sample on a model of this kind.

    A sequence model takes batch size 1 only: a sample of batch N goes as N
    sequences of one request each (start and end together, so no sequence
    slot stays taken), without the control inputs, which the sequence
    batcher adds. Any other kind takes the sample as one request.
    """
    outputs = [output.name for output in config.output]
    declared = {model_input.name for model_input in config.input}
    arrays = {name: array for name, array in arrays.items() if name in declared}
    if not kind.sequence:
        return [InferRequest(model, version, arrays, outputs, decoupled=kind.decoupled)]
    batched = config.max_batch_size > 0
    items = len(next(iter(arrays.values()))) if batched and arrays else 1
    requests = []
    for item in range(items):
        one = {name: array[item : item + 1] for name, array in arrays.items()} if batched else arrays
        requests.append(
            InferRequest(model, version, one, outputs, next(ids), start=True, end=True, decoupled=kind.decoupled)
        )
    return requests
