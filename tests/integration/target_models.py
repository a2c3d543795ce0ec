"""Target models that misbehave on purpose, written into a test's repository.

Real models only: a TorchScript file that Triton's libtorch backend runs, or
a Python backend model. Each one fails (or dawdles) in one specific way that a
user's model can, so the tests can show what the helper does about it; the
recording model instead reports what data reached it.
"""

import pathlib
import shutil
import textwrap
import warnings
from typing import Dict

import torch

# A Python backend model with one batched input x [-1, 4] -> y [-1]. Its config
# parameters make it slow to initialize or refuse to initialize.
_PYTHON_MODEL = '''
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        def setting(key):
            return parameters.get(key, {}).get("string_value", "")

        time.sleep(float(setting("initialize_seconds") or 0))
        refuses = setting("fail_initialize")
        # Instance names end in their index in the group: "<model>_0_1" is the second.
        if refuses == "yes" or (refuses == "second-instance" and not args["model_instance_name"].endswith("_0")):
            raise RuntimeError("this instance refuses to initialize")

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            y = pb_utils.Tensor("y", x.sum(axis=-1).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[y]))
        return responses
'''

_PYTHON_CONFIG = '''
name: "{name}"
backend: "python"
max_batch_size: 4
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1, 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
parameters {{ key: "initialize_seconds" value {{ string_value: "{initialize_seconds}" }} }}
parameters {{ key: "fail_initialize" value {{ string_value: "{fail_initialize}" }} }}
'''


def write_python_target(
    repository: pathlib.Path,
    name: str,
    initialize_seconds: float = 0,
    fail_initialize: bool = False,
    fail_second_instance: bool = False,
) -> pathlib.Path:
    """A Python backend target. ``fail_second_instance`` gives it two
    instances of which the second refuses to start, as a second copy that
    does not fit in memory would: one instance alone loads."""
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.py").write_text(_PYTHON_MODEL)
    (model_dir / "config.pbtxt").write_text(
        textwrap.dedent(_PYTHON_CONFIG).format(
            name=name,
            initialize_seconds=initialize_seconds,
            fail_initialize="yes" if fail_initialize else "second-instance" if fail_second_instance else "no",
            instances=2 if fail_second_instance else 1,
        )
    )
    return model_dir


def copy_example_config(repository: pathlib.Path, example: str, name: str) -> pathlib.Path:
    """A new model folder with ``example``'s config under a new name, no model file."""
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True)
    config = (repository / example / "config.pbtxt").read_text()
    (model_dir / "config.pbtxt").write_text(config.replace(f'name: "{example}"', f'name: "{name}"'))
    return model_dir


class _PickyEncoder(torch.nn.Module):
    """Refuses groups larger than ``largest_group``, as a model with a fixed
    maximum sequence length does."""

    def __init__(self, largest_group: int):
        super().__init__()
        self.largest_group = largest_group

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if x.size(1) > self.largest_group:
            raise RuntimeError("group size above the model's maximum")
        return x[:, 0, :16] * mask[:, :1].to(x.dtype)


def write_picky_model(repository: pathlib.Path, name: str, largest_group: int) -> pathlib.Path:
    """model-v1's interface; TorchScript that raises for groups above ``largest_group``."""
    model_dir = copy_example_config(repository, "model-v1", name)
    torch.jit.script(_PickyEncoder(largest_group)).save(str(model_dir / "1" / "model.pt"))
    return model_dir


def write_model_without_file(repository: pathlib.Path, name: str) -> pathlib.Path:
    return copy_example_config(repository, "model-v1", name)


def write_corrupt_model(repository: pathlib.Path, name: str) -> pathlib.Path:
    model_dir = copy_example_config(repository, "model-v1", name)
    (model_dir / "1" / "model.pt").write_bytes(b"this is not a TorchScript archive")
    return model_dir


def copy_model(repository: pathlib.Path, example: str, name: str) -> pathlib.Path:
    """``example`` under a new name, model file included."""
    model_dir = copy_example_config(repository, example, name)
    shutil.copy(repository / example / "1" / "model.pt", model_dir / "1" / "model.pt")
    return model_dir


class _RecordingModel(torch.nn.Module):
    """An example model that also reports, per forward, its inputs' shapes and
    the mask's sum (which tells zeros, ones and random data apart; ``x`` may be
    random bits, even NaN) as a torch warning: the libtorch backend runs TorchScript inside the
    server, so the line lands in the server's log, stamped by torch
    (``live_server.recorded_inputs`` reads it)."""

    def __init__(self, inner: torch.jit.ScriptModule, model_name: str):
        super().__init__()
        self.inner = inner
        self.model_name = model_name

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        warnings.warn(
            'recorded {"model": "' + self.model_name + '", "shapes": {"x": ' + str(x.shape)
            + ', "mask": ' + str(mask.shape) + '}, "sums": {"mask": ' + str(int(mask.sum().item())) + "}}"
        )
        return self.inner(x, mask)


def write_recording_model(repository: pathlib.Path, name: str) -> pathlib.Path:
    """Replace ``name``'s model file (an example model's interface) with one
    that computes the same and records what it received."""
    path = repository / name / "1" / "model.pt"
    inner = torch.jit.load(str(path))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.script(_RecordingModel(inner, name)).save(str(path))
    return repository / name


def write_variable_feature_model(repository: pathlib.Path, name: str) -> pathlib.Path:
    """model-v1 under a new name whose config leaves the feature dimension
    variable, so a plan may ask for any: its Linear(64) rejects all but 64."""
    model_dir = copy_model(repository, "model-v1", name)
    config = model_dir / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ -1, 64 ]", "dims: [ -1, -1 ]", 1))
    return model_dir


# The witness's vocabulary: token ids of recorded traffic stay below it.
WITNESS_VOCABULARY = 100

_WITNESS_CONFIG = """
name: "{name}"
platform: "pytorch_libtorch"
max_batch_size: 4
input [ {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }} ]
output [
  {{ name: "embedding" data_type: TYPE_FP32 dims: [ 8 ] }},
  {{ name: "checksum_before" data_type: TYPE_INT64 dims: [ 1 ] }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


class _Witness(torch.nn.Module):
    """Token ids in, an embedding out; and, as a second output, the running
    sum of ``checksum(ids)`` over every forward this instance ran before
    this one. The first request after a load therefore returns exactly what
    the warmup fed the instance, data included."""

    def __init__(self):
        super().__init__()
        self.register_buffer("total", torch.zeros(1, dtype=torch.int64))
        self.tokens = torch.nn.Embedding(WITNESS_VOCABULARY, 8)

    def forward(self, input_ids: torch.Tensor):
        before = self.total.clone()
        positions = torch.arange(1, input_ids.shape[1] + 1, dtype=torch.int64)
        self.total.add_((input_ids * positions).sum())
        return self.tokens(input_ids).mean(1), before.expand(input_ids.shape[0], 1).contiguous()


def witness_checksum(ids) -> int:
    """What the witness adds for one request of one item: the ids weighted
    by their 1-based position (a permutation of the ids changes it)."""
    return int(sum(int(token) * (index + 1) for index, token in enumerate(ids)))


def write_witness_model(repository: pathlib.Path, name: str) -> pathlib.Path:
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(_WITNESS_CONFIG.format(name=name))
    torch.jit.script(_Witness()).save(str(model_dir / "1" / "model.pt"))
    return model_dir


# --- Triton's own warmup QA cases (server qa/L0_warmup), as real models ----

class _AddSub(torch.nn.Module):
    """qa_model_repository's float32 addsub: the sum and the difference."""

    def forward(self, INPUT__0: torch.Tensor, INPUT__1: torch.Tensor):
        return INPUT__0 + INPUT__1, INPUT__0 - INPUT__1


_ADDSUB_CONFIG = """
name: "{name}"
platform: "pytorch_libtorch"
max_batch_size: 8
input [
  {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 16 ] }},
  {{ name: "INPUT__1" data_type: TYPE_FP32 dims: [ 16 ] }}
]
output [
  {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 16 ] }},
  {{ name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ 16 ] }}
]
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
"""


def write_addsub_model(repository: pathlib.Path, name: str) -> pathlib.Path:
    """A libtorch float32 add/sub model with two instances, as QA's."""
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(_ADDSUB_CONFIG.format(name=name))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.script(_AddSub()).save(str(model_dir / "1" / "model.pt"))
    return model_dir


def _python_model(repository: pathlib.Path, name: str, config: str, code: str, **settings) -> pathlib.Path:
    """A Python backend model: ``config`` (formatted with its name and
    ``settings``) and ``1/model.py``."""
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(textwrap.dedent(config).format(name=name, **settings))
    (model_dir / "1" / "model.py").write_text(textwrap.dedent(code))
    return model_dir


# A Python sequence model with a string input (QA's sequence_object): it
# answers the running count of characters of its sequence, and checks that
# the sequence batcher (or the warmup sample) gave it START and READY.
_SEQUENCE_STRING_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
sequence_batching {{
  max_sequence_idle_microseconds: 5000000
  direct {{ }}
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "READY" control [ {{ kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] }} ] }}
  ]
}}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

_SEQUENCE_STRING_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.totals = {}

    def execute(self, requests):
        responses = []
        for slot, request in enumerate(requests):
            start = pb_utils.get_input_tensor_by_name(request, "START")
            ready = pb_utils.get_input_tensor_by_name(request, "READY")
            if start is None or ready is None:
                raise pb_utils.TritonModelException("START and READY are required")
            text = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().reshape(-1)
            if int(start.as_numpy().reshape(-1)[0]):
                self.totals[slot] = 0
            self.totals[slot] = self.totals.get(slot, 0) + sum(len(item) for item in text)
            output = np.full((len(text), 1), self.totals[slot], np.int32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", output)]))
        return responses
'''


def write_sequence_string_model(repository: pathlib.Path, name: str) -> pathlib.Path:
    """QA's string sequence model, with its data file: one element, "233"."""
    model_dir = _python_model(repository, name, _SEQUENCE_STRING_CONFIG, _SEQUENCE_STRING_MODEL)
    (model_dir / "warmup").mkdir()
    (model_dir / "warmup" / "raw_string_data").write_bytes(b"\x03\x00\x00\x00233")
    return model_dir


# QA's string identity (zero_1_object): 16 strings in, the same out.
_IDENTITY_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_STRING dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_STRING dims: [ 16 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

_IDENTITY_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy())]
            )
            for request in requests
        ]
'''


def write_string_identity_model(repository: pathlib.Path, name: str) -> pathlib.Path:
    return _python_model(repository, name, _IDENTITY_CONFIG, _IDENTITY_MODEL)


# QA's decoupled model, which answers only through its response sender: here
# two responses, then the final flag.
_DECOUPLED_CONFIG = """
name: "{name}"
backend: "python"
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ kind: KIND_CPU }} ]
model_transaction_policy {{ decoupled: true }}
"""

_DECOUPLED_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            sender = request.get_response_sender()
            for step in range(2):
                sender.send(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", values + step)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


def write_decoupled_model(repository: pathlib.Path, name: str) -> pathlib.Path:
    return _python_model(repository, name, _DECOUPLED_CONFIG, _DECOUPLED_MODEL)


# QA's failing_infer: every request fails with "An Error Occurred".
_FAILING_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ kind: KIND_CPU }} ]
"""

_FAILING_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError("An Error Occurred")) for _ in requests]
'''


def write_failing_infer_model(repository: pathlib.Path, name: str) -> pathlib.Path:
    return _python_model(repository, name, _FAILING_CONFIG, _FAILING_MODEL)


def write_two_version_model(repository: pathlib.Path, example: str, name: str) -> pathlib.Path:
    """``example`` under a new name with versions 1 and 2, both served."""
    model_dir = copy_model(repository, example, name)
    shutil.copytree(model_dir / "1", model_dir / "2")
    config = model_dir / "config.pbtxt"
    config.write_text(config.read_text() + "\nversion_policy { all { } }\n")
    return model_dir


def write_ensemble(repository: pathlib.Path, name: str, steps, inputs: str, outputs: str) -> pathlib.Path:
    """An ensemble named ``name``: each of ``steps`` is one step's fields,
    ``inputs`` and ``outputs`` the text of its tensors."""
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True)
    listed = ", ".join(f"{{ {step} }}" for step in steps)
    (model_dir / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 8\ninput [ {inputs} ]\noutput [ {outputs} ]\n'
        f"ensemble_scheduling {{ step [ {listed} ] }}\n"
    )
    return model_dir


# A Python model with an INT8 input, whose values Triton's trace writes as
# raw characters: it answers their sum.
_INT8_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 4
input [ {{ name: "codes" data_type: TYPE_INT8 dims: [ -1 ] }} ]
output [ {{ name: "total" data_type: TYPE_INT32 dims: [ 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

_INT8_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            codes = pb_utils.get_input_tensor_by_name(request, "codes").as_numpy().astype(np.int32)
            total = codes.sum(axis=1, keepdims=True)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("total", total)]))
        return responses
'''


def write_int8_model(repository: pathlib.Path, name: str) -> pathlib.Path:
    return _python_model(repository, name, _INT8_CONFIG, _INT8_MODEL)


class _PickySession(torch.nn.Module):
    """session-encoder's interface (a sequence model); raises for groups
    above ``largest_group``."""

    def __init__(self, largest_group: int):
        super().__init__()
        self.largest_group = largest_group

    def forward(self, x: torch.Tensor, start: torch.Tensor, ready: torch.Tensor) -> torch.Tensor:
        if x.size(1) > self.largest_group:
            raise RuntimeError("group size above the model's maximum")
        return x.mean(dim=1).repeat(1, 2) * ready.to(x.dtype) + start.to(x.dtype)


def write_picky_sequence_model(repository: pathlib.Path, name: str, largest_group: int) -> pathlib.Path:
    """A sequence model (session-encoder's config) that rejects large groups."""
    model_dir = copy_example_config(repository, "session-encoder", name)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.script(_PickySession(largest_group)).save(str(model_dir / "1" / "model.pt"))
    return model_dir


_PICKY_STREAM_CONFIG = """
name: "{name}"
backend: "python"
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU }} ]
model_transaction_policy {{ decoupled: true }}
parameters {{ key: "largest_group" value {{ string_value: "{largest_group}" }} }}
"""

_PICKY_STREAM_MODEL = '''
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.largest_group = int(parameters["largest_group"]["string_value"])

    def execute(self, requests):
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            sender = request.get_response_sender()
            if x.shape[-1] > self.largest_group:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("group size above the model's maximum")))
            else:
                sender.send(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("y", x)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


def write_picky_decoupled_model(repository: pathlib.Path, name: str, largest_group: int) -> pathlib.Path:
    """A decoupled Python model whose stream answers an error for large groups."""
    return _python_model(repository, name, _PICKY_STREAM_CONFIG, _PICKY_STREAM_MODEL, largest_group=largest_group)


# --- Which instance ran which shape: the re-warm tests ----------------------

_SHAPE_COUNTER_CONFIG = """
name: "{name}"
platform: "pytorch_libtorch"
max_batch_size: 8
input [
  {{ name: "x" data_type: TYPE_FP32 dims: [ -1, 64 ] }},
  {{ name: "mask" data_type: TYPE_INT64 dims: [ -1 ] }}
]
output [
  {{ name: "output" data_type: TYPE_FP32 dims: [ 16 ] }},
  {{ name: "seen" data_type: TYPE_INT64 dims: [ 1 ] }},
  {{ name: "instance" data_type: TYPE_INT64 dims: [ 1 ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: 100 }}
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
parameters {{ key: "INTRA_OP_THREAD_COUNT" value {{ string_value: "1" }} }}
"""


class _ShapeCounter(torch.nn.Module):
    """model-v1's interface; beside its output, how many times this instance
    has run the request's shape (this run included) and a number that tells
    the instance apart (random, drawn at its first run). Each instance loads
    its own copy of the module, so both counts are per instance."""

    seen: Dict[str, int]

    def __init__(self):
        super().__init__()
        self.seen = {}
        self.identity = 0

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        if self.identity == 0:
            self.identity = int(torch.randint(1, 1 << 62, [1]).item())
        key = str(x.size(0)) + "x" + str(x.size(1))
        count = self.seen.get(key, 0) + 1
        self.seen[key] = count
        batch = x.size(0)
        return (
            x[:, 0, :16] * mask[:, :1].to(x.dtype),
            torch.full([batch, 1], count, dtype=torch.int64),
            torch.full([batch, 1], self.identity, dtype=torch.int64),
        )


def write_shape_counter_model(repository: pathlib.Path, name: str, instances: int) -> pathlib.Path:
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(_SHAPE_COUNTER_CONFIG.format(name=name, instances=instances))
    torch.jit.script(_ShapeCounter()).save(str(model_dir / "1" / "model.pt"))
    return model_dir
