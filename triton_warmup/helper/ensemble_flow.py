"""Learn the shapes an ensemble sends its composing models, by running it.

An ensemble has no model of its own: Triton refuses ``model_warmup`` in its
config and runs its steps' models. What those models see depends on the
data: a tokenizer's output length follows the text. So the shapes of the
tensors between steps are learned the only way they can be: each of the
ensemble's planned samples flows through the steps, step by step, as
requests to the composing models once those are warm, and the shapes each
step receives become warmup samples of that step's model.

* A step that reads only the ensemble's own inputs gets the planned shapes
  as they are, before anything runs.
* A step that reads another step's outputs waits until that step's model is
  warm and has run every sample (``advance``); then its inputs are known.
* A nested ensemble is flattened into its parent: its steps read and write
  the parent's tensors.

The limit: the shapes are those the planned samples produce. With zero data
(empty strings) a tokenizer yields its shortest output every time; give the
ensemble's inputs data files of real requests, or plan the composing models
from recorded traffic (docs/model-kinds.md).

Pure Python and numpy: the caller passes the function that sends a request.
"""

import dataclasses
import pathlib
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Set, Tuple

import numpy as np
from tritonclient.grpc import model_config_pb2

from triton_warmup.helper.model_kind import EnsembleStep, Infer, ModelKind, requests_for
from triton_warmup.helper.request import ListedSample
from triton_warmup.helper.requests_mode import sample_arrays
from triton_warmup.report import one_line

# A member's config and kind, by name; raises KeyError for a model the
# repository does not hold.
MemberLookup = Callable[[str], Tuple[model_config_pb2.ModelConfig, ModelKind]]


class EnsembleError(ValueError):
    """An ensemble whose steps cannot be followed (a cycle, a tensor no step
    writes, a composing model that is missing)."""


@dataclasses.dataclass(frozen=True)
class FlatStep:
    """A step of a flattened ensemble: a model that is not an ensemble, and
    the tensors it reads and writes, named in the outermost ensemble."""

    model: str
    version: str
    inputs: Tuple[Tuple[str, str], ...]
    outputs: Tuple[Tuple[str, str], ...]


def flatten(
    name: str, kind: ModelKind, lookup: MemberLookup, _outer: Tuple[str, ...] = ()
) -> Tuple[List[FlatStep], List[str]]:
    """The ensemble's steps with nested ensembles replaced by their own
    steps, and the nested ensembles met on the way (innermost first).

    Raises:
        EnsembleError: an ensemble that contains itself, or a missing member.
    """
    if name in _outer:
        raise EnsembleError(f"ensemble '{name}' contains itself through {' -> '.join(_outer + (name,))}")
    steps: List[FlatStep] = []
    nested: List[str] = []
    for index, step in enumerate(kind.steps):
        try:
            _, member_kind = lookup(step.model)
        except KeyError as reason:
            raise EnsembleError(f"its step {index + 1} runs model '{step.model}': {reason.args[0]}") from None
        if not member_kind.ensemble:
            steps.append(FlatStep(step.model, step.version, step.inputs, step.outputs))
            continue
        inner, inner_nested = flatten(step.model, member_kind, lookup, _outer + (name,))
        rename = _nested_names(step, index)
        for inner_step in inner:
            steps.append(
                FlatStep(
                    inner_step.model,
                    inner_step.version,
                    tuple((key, rename(tensor)) for key, tensor in inner_step.inputs),
                    tuple((key, rename(tensor)) for key, tensor in inner_step.outputs),
                )
            )
        nested.extend(inner_nested + [step.model])
    return steps, nested


def _nested_names(step: EnsembleStep, index: int) -> Callable[[str], str]:
    """How a nested ensemble's tensor is named in its parent: its inputs and
    outputs by the parent's tensors they map to, its own tensors under a
    prefix no parent tensor has."""
    outer = dict(step.inputs)
    outer.update(step.outputs)
    return lambda tensor: outer.get(tensor, f"{step.model}#{index}/{tensor}")


def ordered(steps: List[FlatStep], inputs: Set[str]) -> List[FlatStep]:
    """The steps in an order where each reads only tensors written before it.

    Raises:
        EnsembleError: a step reads a tensor nothing writes.
    """
    known = set(inputs)
    remaining = list(steps)
    order = []
    while remaining:
        runnable = [step for step in remaining if all(tensor in known for _, tensor in step.inputs)]
        if not runnable:
            missing = sorted({tensor for step in remaining for _, tensor in step.inputs} - known)
            raise EnsembleError(f"no step writes the tensors {missing} that its steps read")
        for step in runnable:
            order.append(step)
            remaining.remove(step)
            known.update(tensor for _, tensor in step.outputs)
    return order


def _batch_and_dims(config: model_config_pb2.ModelConfig, arrays: Mapping[str, np.ndarray]) -> Tuple[int, Dict]:
    """A request's arrays as a sample's batch size and dims per input."""
    if config.max_batch_size <= 0:
        return 1, {name: tuple(array.shape) for name, array in arrays.items()}
    batches = {array.shape[0] for array in arrays.values()}
    if len(batches) != 1:
        raise EnsembleError(f"its inputs to '{config.name}' disagree on the batch size: {sorted(batches)}")
    return batches.pop(), {name: tuple(array.shape[1:]) for name, array in arrays.items()}


class EnsembleFlow:
    """The planned samples of one ensemble, followed through its steps.

    Args:
        name: the ensemble.
        config, kind: its config and kind.
        samples: its planned samples (never written: Triton refuses them).
        model_dir: its folder, whose ``warmup/`` holds data files it names.
        lookup: members' configs and kinds.
        rng: for random data.
    """

    def __init__(
        self,
        name: str,
        config: model_config_pb2.ModelConfig,
        kind: ModelKind,
        samples: List[model_config_pb2.ModelWarmup],
        model_dir: pathlib.Path,
        lookup: MemberLookup,
        rng: Optional[np.random.Generator] = None,
    ):
        self.name = name
        self.config = config
        self.model_dir = model_dir
        self.samples = list(samples)
        flat, self.nested = flatten(name, kind, lookup)
        self.steps = ordered(flat, {model_input.name for model_input in config.input})
        self._configs = {step.model: lookup(step.model)[0] for step in self.steps}
        self._kinds = {step.model: lookup(step.model)[1] for step in self.steps}
        rng = rng or np.random.default_rng()
        # Per sample: every tensor known so far, by its name in the ensemble.
        self._tensors: List[Dict[str, np.ndarray]] = [
            sample_arrays(config, sample, model_dir, rng) for sample in self.samples
        ]
        self._ran: Set[int] = set()
        # Why the flow stopped; None while it goes on.
        self.error: Optional[str] = None

    @property
    def members(self) -> List[str]:
        """The composing models that are not ensembles, in step order, once each."""
        return list(dict.fromkeys(step.model for step in self.steps))

    def _inputs_known(self, step: FlatStep) -> bool:
        return all(tensor in self._tensors[0] for _, tensor in step.inputs) if self._tensors else True

    def waits_for_outputs(self, model: str) -> bool:
        """Whether a step of ``model`` still waits for an earlier step's outputs."""
        if self.error is not None:
            return False
        return any(step.model == model and not self._inputs_known(step) for step in self.steps)

    def samples_for(self, model: str) -> List[ListedSample]:
        """The samples ``model`` gets from this ensemble: the shapes each of
        its steps receives, once each, in the ensemble's sample order."""
        if self.error is not None or model not in self._configs:
            return []
        config = self._configs[model]
        found: Dict[Tuple, ListedSample] = {}
        for step in self.steps:
            if step.model != model or not self._inputs_known(step):
                continue
            for tensors in self._tensors:
                batch, dims = _batch_and_dims(config, {key: tensors[tensor] for key, tensor in step.inputs})
                inputs = tuple(sorted(dims.items()))
                found.setdefault((batch, inputs), ListedSample(batch, inputs))
        return list(found.values())

    def advance(
        self,
        warm: Callable[[str], bool],
        failed: Callable[[str], Optional[str]],
        infer: Infer,
        ids: Iterator[int],
    ) -> None:
        """Run every step whose model is warm and whose inputs are known, for
        every sample, and keep its outputs. A failing request, or a step
        whose model failed (``failed`` gives why), stops the flow with
        ``error`` set."""
        progressed = True
        while progressed and self.error is None:
            progressed = False
            for index, step in enumerate(self.steps):
                if index in self._ran or not self._inputs_known(step):
                    continue
                reason = failed(step.model)
                if reason is not None:
                    self.error = f"its composing model '{step.model}' failed: {reason}"
                    return
                if not warm(step.model):
                    continue
                for number, tensors in enumerate(self._tensors):
                    try:
                        tensors.update(self._run(step, tensors, infer, ids))
                    except Exception as error:  # noqa: BLE001 - Triton's answer goes into the report
                        self.error = f"its sample {number + 1} failed at step '{step.model}': {one_line(str(error))}"
                        return
                self._ran.add(index)
                progressed = True

    def _run(self, step: FlatStep, tensors: Dict[str, np.ndarray], infer: Infer, ids) -> Dict[str, np.ndarray]:
        config, kind = self._configs[step.model], self._kinds[step.model]
        arrays = {key: tensors[tensor] for key, tensor in step.inputs}
        outputs: Dict[str, List[np.ndarray]] = {}
        for request in requests_for(kind, step.model, step.version, config, arrays, ids):
            # A decoupled model may answer several times: its last answer
            # with outputs is what the ensemble hands on.
            answered = [response for response in infer(request) if response]
            for key, value in (answered[-1] if answered else {}).items():
                outputs.setdefault(key, []).append(value)
        written = {}
        for key, tensor in step.outputs:
            if key not in outputs:
                raise EnsembleError(f"'{step.model}' answered without output '{key}'")
            parts = outputs[key]
            written[tensor] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return written
