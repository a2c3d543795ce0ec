"""Whether a repository needs Triton's config auto-complete, or can start
with ``--disable-auto-complete-config`` and save a second per Python model.

Why a second (Triton's Python backend, r24.10, ``python_be.cc``
``ModelState::Create``): with auto-complete on, every Python model, and every
model of a Python-based backend such as the PyTorch 2 runtime, first gets a
stub process of its own that is asked for ``auto_complete_config``; the
backend then calls ``StubLauncher::UpdateHealth``, which sleeps one second
(``sleep(1)``, "so that the child process has a chance to change the health
variable") before it ends that stub. The helper is a Python model, and on a
restart its load comes before every other model's: Triton takes load
requests only once the server is ready (``InferenceServer::LoadModel``).

What the flag changes (core r24.10): every model folder must hold a
``config.pbtxt``, its inputs and outputs are validated when the repository
is read rather than after the backend filled them in, and no backend is
asked to fill anything in. So the flag is safe exactly where every config is
already complete and no backend would change it:

* the Python backend changes a config only through the model's own
  ``auto_complete_config``;
* the PyTorch backend fills nothing in (libtorch only logs a warning; the
  PyTorch 2 runtime defines no ``auto_complete_config``);
* ensembles have no backend;
* every other backend (ONNX Runtime, TensorRT, TensorFlow, OpenVINO, custom
  ones) may fill in fields of its own, ``max_batch_size`` among them, so a
  repository that holds one keeps Triton's default.

The rule is pure: ``client.auto_complete_flag`` reads a repository's folders
for it, and the launcher, ``triton-warmup-serve`` and ``deploy/entrypoint.sh``
apply it (docs/scaling.md, "What to tune").
"""

import ast
import dataclasses
from typing import Mapping, Optional, Sequence

from tritonclient.grpc import model_config_pb2

DISABLE_FLAG = "--disable-auto-complete-config"
# tritonserver's older spelling of the same choice; a user who gives either
# has decided, and the launchers add nothing.
DEPRECATED_FLAG = "--strict-model-config"
# The Python model method that auto-complete calls.
AUTO_COMPLETE_METHOD = "auto_complete_config"
PYTHON_MODEL_CLASS = "TritonPythonModel"
PYTHON_MODEL_FILE = "model.py"
# Backends whose auto-complete changes nothing in a complete config, apart
# from the Python models' own method, which ``ModelFolder.python_sources``
# shows.
_PYTHON_BACKEND = "python"
_FILLS_NOTHING = ("pytorch", "pytorch_libtorch", "ensemble")


@dataclasses.dataclass(frozen=True)
class ModelFolder:
    """What the rule needs to know of one model folder.

    Attributes:
        name: the folder's name.
        config: its parsed ``config.pbtxt``; ``None`` when there is none.
        config_error: why the config could not be read, when it could not.
        python_sources: for a Python model, the text of its model file in
            each version folder, by version.
    """

    name: str
    config: Optional[model_config_pb2.ModelConfig]
    config_error: Optional[str] = None
    python_sources: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AutoCompleteSetting:
    """The launcher's choice: ``disable`` adds ``DISABLE_FLAG``; ``reason`` says why, in a sentence."""

    disable: bool
    reason: str

    @property
    def flags(self) -> Sequence[str]:
        return (DISABLE_FLAG,) if self.disable else ()


def defines_auto_complete(source: str) -> Optional[bool]:
    """Whether a Python model file's ``TritonPythonModel`` defines ``auto_complete_config``.

    ``None`` when that cannot be told from the file alone: it does not parse,
    it has no ``TritonPythonModel`` class, or the class inherits from another
    one, which may define the method.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == PYTHON_MODEL_CLASS:
            if node.bases:
                return None
            return any(
                isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == AUTO_COMPLETE_METHOD
                for item in node.body
            )
    # The class may come from an import; only running the file would tell.
    return None


def _backend(config: model_config_pb2.ModelConfig) -> str:
    return config.backend or config.platform


def _incomplete_tensor(config: model_config_pb2.ModelConfig) -> Optional[str]:
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            if tensor.data_type == model_config_pb2.TYPE_INVALID:
                return f"its {kind} {tensor.name!r} has no data_type"
            if not tensor.dims:
                return f"its {kind} {tensor.name!r} has no dims"
    return None


def why_auto_complete(model: ModelFolder) -> Optional[str]:
    """Why Triton's auto-complete may change ``model``'s config; ``None`` when it cannot."""
    if model.config is None:
        if model.config_error:
            return f"its config.pbtxt could not be read ({model.config_error})"
        return "it has no config.pbtxt, which Triton then writes"
    config = model.config
    backend = _backend(config)
    if not backend:
        return "its config names no backend or platform"
    if backend != _PYTHON_BACKEND and backend not in _FILLS_NOTHING:
        return f"backend {backend!r} may fill in fields of its own"
    if backend != "ensemble" and (not config.input or not config.output):
        return "it declares no inputs" if not config.input else "it declares no outputs"
    incomplete = _incomplete_tensor(config)
    if incomplete:
        return incomplete
    if backend == _PYTHON_BACKEND:
        if not model.python_sources:
            return "its model file was not found in any version folder"
        for version, source in sorted(model.python_sources.items()):
            defined = defines_auto_complete(source)
            if defined is None:
                return f"version {version}'s model file does not show whether it defines {AUTO_COMPLETE_METHOD}"
            if defined:
                return f"version {version}'s {PYTHON_MODEL_CLASS} defines {AUTO_COMPLETE_METHOD}"
    return None


def user_decided(server_flags: Sequence[str]) -> bool:
    """Whether tritonserver's flags already choose auto-complete (either spelling)."""
    return any(flag == DISABLE_FLAG or flag.split("=", 1)[0] == DEPRECATED_FLAG for flag in server_flags)


def auto_complete_setting(models: Sequence[ModelFolder]) -> AutoCompleteSetting:
    """``DISABLE_FLAG`` where no model needs auto-complete, Triton's default otherwise."""
    if not models:
        return AutoCompleteSetting(False, "the repository holds no model folder")
    needing = [(model.name, why) for model in models for why in [why_auto_complete(model)] if why]
    if needing:
        name, why = needing[0]
        more = f" (and {len(needing) - 1} more model(s))" if len(needing) > 1 else ""
        return AutoCompleteSetting(False, f"Triton's auto-complete kept: model {name!r} may need it: {why}{more}")
    configs = [model.config for model in models if model.config is not None]
    python_models = sum(1 for config in configs if _backend(config) == _PYTHON_BACKEND)
    # A Python-based backend (the PyTorch 2 runtime) names its runtime file.
    python_based = sum(1 for config in configs if _backend(config) != _PYTHON_BACKEND and config.runtime.endswith(".py"))
    return AutoCompleteSetting(
        True,
        f"no config of the {len(models)} models needs auto-complete, for which Triton's Python backend "
        f"waits a second at each load of a Python model ({python_models} here) or a PyTorch 2 model "
        f"({python_based} here)",
    )
