"""A Python stand-in for Triton's libtorch backend, for the embedded server only.

The Triton that ships in the ``nvidia-pytriton`` wheel has no libtorch
backend. The launcher copies this file to ``<backend dir>/pytorch/model.py``;
Triton then runs every model whose config says ``platform:
"pytorch_libtorch"`` through the Python backend with this class, so the model
repository stays exactly what NVIDIA's container serves natively.

It behaves like the native backend wherever warmup can tell:

* all requests of one ``execute`` call are concatenated along the batch
  dimension and run in one forward pass under ``torch.inference_mode()``,
  then split back (Triton hands a warmup sample of batch size N over as N
  requests of batch 1);
* inputs are matched to ``forward``'s argument names, else to the
  ``<name>__<index>`` convention, else taken in config order; outputs follow
  ``<name>__<index>`` or config order, with the config's data types;
* a request whose shapes cannot join the batch gets its own error response;
* the parameters ``INTRA_OP_THREAD_COUNT`` and
  ``DISABLE_OPTIMIZED_EXECUTION`` mean what they mean natively.

The parameter ``STANDIN_EXECUTION: per_request`` runs one forward per request
instead; it exists only so that the benchmark can compare the two
(bench/warmup_benchmark.py, "Batched execution").

Each executed batch is logged at verbose level. When the environment names a
file in ``PYTORCH_STANDIN_RECORD``, each forward is also appended there as a
JSON line: ``time`` (the stub's clock when the forward began), ``seconds``
(how long it ran), the instance, model, request count and shapes. The log
reaches the server's log file asynchronously, so only this record proves that
a warmup shape ran before Triton logged the model as loaded.
"""

import importlib
import json
import os
import re
import time

import numpy as np
import triton_python_backend_utils as pb_utils

# torch is imported in initialize, not here: Triton also imports this file in
# a model-level stub only to auto-complete the config, and importing torch
# there cost about 2.4 s of every load on the project's 2-core machine.
torch = None


def _import_torch():
    global torch
    if torch is None:
        torch = importlib.import_module("torch")

_NAMED_INDEX = re.compile(r"^.+__(\d+)$")


def _order_by_named_index(names):
    """Positions from ``<name>__<index>`` names, or ``None`` if any name lacks one."""
    indices = []
    for name in names:
        match = _NAMED_INDEX.match(name)
        if match is None:
            return None
        indices.append(int(match.group(1)))
    return indices if sorted(indices) == list(range(len(names))) else None


def _parameter(config, key, default=""):
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def _finite_sum(array):
    """The sum of a numeric input as a float, or None (strings, or random
    bytes that overflow: Triton's random_data can be any bit pattern)."""
    if array.dtype == np.object_:
        return None
    with np.errstate(all="ignore"):
        total = float(array.sum(dtype=np.float64))
    return total if np.isfinite(total) else None


class TritonPythonModel:
    """Runs one TorchScript ``model.pt`` like Triton's libtorch backend."""

    def initialize(self, args):
        _import_torch()
        self.config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.instance_name = args.get("model_instance_name", self.model_name)
        self.max_batch_size = int(self.config.get("max_batch_size", 0))
        self.record_path = os.environ.get("PYTORCH_STANDIN_RECORD")
        self.per_request = _parameter(self.config, "STANDIN_EXECUTION") == "per_request"

        threads = _parameter(self.config, "INTRA_OP_THREAD_COUNT")
        if threads:
            torch.set_num_threads(int(threads))
        if _parameter(self.config, "DISABLE_OPTIMIZED_EXECUTION").lower() == "true":
            torch._C._set_graph_executor_optimize(False)

        if args.get("model_instance_kind") == "GPU" and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
        else:
            self.device = torch.device("cpu")

        filename = self.config.get("default_model_filename") or "model.pt"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        self.module = torch.jit.load(path, map_location=self.device).eval()

        self.inputs = self.config.get("input", [])
        for model_input in self.inputs:
            if model_input["data_type"] == "TYPE_STRING":
                raise pb_utils.TritonModelException(
                    f"{self.model_name}: input '{model_input['name']}' is TYPE_STRING, "
                    "which this stand-in backend does not support"
                )
        self.input_names = [model_input["name"] for model_input in self.inputs]
        self.input_order = self._forward_positions()
        self.outputs = self.config.get("output", [])
        self.output_dtypes = [
            pb_utils.triton_string_to_numpy(output["data_type"]) for output in self.outputs
        ]
        self.output_positions = _order_by_named_index(
            [output["name"] for output in self.outputs]
        ) or list(range(len(self.outputs)))
        pb_utils.Logger.log_info(
            f"pytorch stand-in: loaded {path} for '{self.instance_name}' on {self.device}"
        )

    def _forward_positions(self):
        """For each config input, its position among ``forward``'s arguments."""
        try:
            arguments = [argument.name for argument in self.module.forward.schema.arguments[1:]]
        except AttributeError:
            arguments = []
        if arguments and set(self.input_names) <= set(arguments):
            return [arguments.index(name) for name in self.input_names]
        return _order_by_named_index(self.input_names) or list(range(len(self.input_names)))

    def _forward(self, arrays):
        """Run the module on numpy inputs (config order); return numpy outputs (config order)."""
        ordered = [None] * len(arrays)
        for array, position in zip(arrays, self.input_order):
            ordered[position] = torch.from_numpy(array).to(self.device)
        with torch.inference_mode():
            result = self.module(*ordered)
        if isinstance(result, torch.Tensor):
            result = (result,)
        result = list(result)
        if len(result) != len(self.outputs):
            raise pb_utils.TritonModelException(
                f"{self.model_name} returned {len(result)} outputs, its config declares "
                f"{len(self.outputs)}"
            )
        return [
            result[position].detach().cpu().numpy().astype(dtype, copy=False)
            for position, dtype in zip(self.output_positions, self.output_dtypes)
        ]

    def _response(self, outputs):
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(output["name"], np.ascontiguousarray(array))
                for output, array in zip(self.outputs, outputs)
            ]
        )

    @staticmethod
    def _error(message):
        return pb_utils.InferenceResponse(
            output_tensors=[], error=pb_utils.TritonError(message)
        )

    def _log_batch(self, arrays, request_count, started, seconds):
        shapes = {name: list(array.shape) for name, array in zip(self.input_names, arrays)}
        pb_utils.Logger.log_verbose(
            f"pytorch stand-in: '{self.instance_name}' ran {request_count} request(s) "
            "in one forward: " + " ".join(f"{name}{shape}" for name, shape in shapes.items())
        )
        if self.record_path:
            line = json.dumps(
                {
                    "time": started,
                    "seconds": seconds,
                    "instance": self.instance_name,
                    "model": self.model_name,
                    "requests": request_count,
                    "shapes": shapes,
                    # Per input: the sum of its values, so a test can tell the
                    # data a warmup sample carried (zeros, a file) from random.
                    "sums": {name: _finite_sum(array) for name, array in zip(self.input_names, arrays)},
                }
            )
            # One write of one line on an O_APPEND file: instances in other
            # processes append to the same record without interleaving.
            with open(self.record_path, "a") as record:
                record.write(line + "\n")

    def execute(self, requests):
        responses = [None] * len(requests)
        request_arrays = {}
        for index, request in enumerate(requests):
            tensors = [pb_utils.get_input_tensor_by_name(request, name) for name in self.input_names]
            missing = [name for name, tensor in zip(self.input_names, tensors) if tensor is None]
            if missing:
                responses[index] = self._error(f"{self.model_name}: missing inputs {missing}")
            else:
                request_arrays[index] = [tensor.as_numpy() for tensor in tensors]

        if self.max_batch_size == 0 or self.per_request:
            # Without batching each request's first dim is a model dim, not a
            # batch dim, so requests cannot be concatenated. (per_request:
            # the benchmark's comparison, see the module docstring.)
            groups = [[index] for index in request_arrays]
        else:
            batch, reference = [], None
            for index, arrays in request_arrays.items():
                shapes = [array.shape[1:] for array in arrays]
                reference = shapes if reference is None else reference
                if shapes == reference:
                    batch.append(index)
                else:
                    responses[index] = self._error(
                        f"{self.model_name}: request shapes {[list(a.shape) for a in arrays]} "
                        "cannot be batched with the other requests of this execution "
                        f"(shapes after the batch dim {[list(s) for s in reference]})"
                    )
            groups = [batch] if batch else []

        for group in groups:
            if len(group) == 1:
                arrays = request_arrays[group[0]]
            else:
                arrays = [
                    np.concatenate([request_arrays[index][position] for index in group])
                    for position in range(len(self.input_names))
                ]
            started, clock = time.time(), time.perf_counter()
            try:
                outputs = self._forward(arrays)
            except Exception as error:  # noqa: BLE001 - every request gets an answer
                self._log_batch(arrays, len(group), started, time.perf_counter() - clock)
                for index in group:
                    responses[index] = self._error(f"{self.model_name}: forward failed: {error}")
                continue
            self._log_batch(arrays, len(group), started, time.perf_counter() - clock)
            if self.max_batch_size == 0:
                responses[group[0]] = self._response(outputs)
                continue
            offset = 0
            for index in group:
                size = request_arrays[index][0].shape[0]
                responses[index] = self._response(
                    [output[offset : offset + size] for output in outputs]
                )
                offset += size
        return responses
