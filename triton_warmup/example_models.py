#!/usr/bin/env python3
"""Write the example models ``model-v1``..``model-v3``, ``text-encoder``, ``session-encoder`` and ``compiled-encoder``'s weights.

model-v1..v3 are the same small network with a different feature dimension.
Each request carries a group of ``G`` feature vectors ``x`` ``[G, D]`` and a
``mask`` ``[G]`` that says which of them are real; the model pools the real
ones and projects them to ``OUTPUT_DIM`` values. Triton adds the batch
dimension, so the scripted ``forward`` sees ``x`` ``[B, G, D]`` and ``mask``
``[B, G]``. Their steady compute is about 0.1 ms.

``text-encoder`` is a small transformer sentence encoder: token ids and an
attention mask ``[S]`` (S up to ``MAX_SEQUENCE_LENGTH``) in, an embedding of
``EMBEDDING_DIM`` out. Its steady compute is a few milliseconds on one
thread, so first-request ratios measure warmup rather than timer noise.

``session-encoder`` is a stateful (sequence-batched) model: each request is one
step of a session, a group of feature vectors ``[G, SESSION_FEATURE_DIM]``, and
the answer is the running mean of the session's pooled encodings. Triton's
sequence batcher adds the ``START`` and ``READY`` control inputs; the model
keeps each batch slot's running sum in a buffer.

``compiled-encoder`` is model-v1's network as a PyTorch 2 model: a Python
class in its ``1/model.py`` that Triton's PyTorch 2 runtime compiles with
``torch.compile``. Only its weights (``1/model.pt``, a state dict) are
written here, from that class.

The example repository also holds Python and ensemble models that need no
file written here: ``tokenizer`` and ``embed`` (tokenizer -> text-encoder).

Usage::

    python gen_model.py --model-repository model_repository
"""

import argparse
import importlib.util
import pathlib
import sys
import warnings

import torch

FEATURE_DIMS = {"model-v1": 64, "model-v2": 128, "model-v3": 256}
HIDDEN_DIM = 128
OUTPUT_DIM = 16
DEFAULT_SEED = 0

TEXT_ENCODER = "text-encoder"
VOCABULARY_SIZE = 1000
# Positions beyond this have no embedding: a longer sequence fails in
# forward, as it does in real transformers.
MAX_SEQUENCE_LENGTH = 128
MODEL_DIM = 256
ATTENTION_HEADS = 4
FEED_FORWARD_DIM = 1024
# Six layers put the smallest shape's steady compute above 1 ms on one
# thread of this project's 2-core machine (four gave about 0.7 ms).
ENCODER_LAYERS = 6
EMBEDDING_DIM = 64


class MaskedPoolingEncoder(torch.nn.Module):
    """Encode every item of a group, then average the items the mask keeps."""

    def __init__(self, feature_dim: int):
        super().__init__()
        self.encode = torch.nn.Sequential(
            torch.nn.Linear(feature_dim, HIDDEN_DIM),
            torch.nn.GELU(),
            torch.nn.Linear(HIDDEN_DIM, HIDDEN_DIM),
        )
        self.head = torch.nn.Linear(HIDDEN_DIM, OUTPUT_DIM)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        encoded = self.encode(x)
        weights = (mask != 0).to(encoded.dtype).unsqueeze(-1)
        # A group whose mask is all zeros (warmup sends zero_data for integer
        # inputs) pools to zeros instead of dividing by zero.
        kept = weights.sum(dim=-2).clamp(min=1.0)
        pooled = (encoded * weights).sum(dim=-2) / kept
        return self.head(pooled)


class TextEncoder(torch.nn.Module):
    """Token and position embeddings, a transformer encoder, then the mean of
    the unpadded positions projected to ``EMBEDDING_DIM``."""

    def __init__(self):
        super().__init__()
        self.tokens = torch.nn.Embedding(VOCABULARY_SIZE, MODEL_DIM)
        self.positions = torch.nn.Embedding(MAX_SEQUENCE_LENGTH, MODEL_DIM)
        layer = torch.nn.TransformerEncoderLayer(
            MODEL_DIM, ATTENTION_HEADS, FEED_FORWARD_DIM, dropout=0.0, batch_first=True
        )
        self.encoder = torch.nn.TransformerEncoder(layer, ENCODER_LAYERS, enable_nested_tensor=False)
        self.head = torch.nn.Linear(MODEL_DIM, EMBEDDING_DIM)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.size(1), device=input_ids.device).unsqueeze(0)
        hidden = self.tokens(input_ids) + self.positions(positions)
        padding = attention_mask == 0
        # A sequence without a real token (warmup's zero data) attends to all
        # positions instead of none, which would give NaN.
        padding = padding & padding.logical_not().any(dim=1, keepdim=True)
        hidden = self.encoder(hidden, src_key_padding_mask=padding)
        weights = (attention_mask != 0).to(hidden.dtype).unsqueeze(-1)
        return self.head((hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0))


SESSION_ENCODER = "session-encoder"
SESSION_FEATURE_DIM = 16
SESSION_HIDDEN_DIM = 32
# Batch slots of the sequence batcher (its max_batch_size): one session per slot.
SESSION_SLOTS = 4


class SessionEncoder(torch.nn.Module):
    """One step of a session per batch slot: encode the step's group, pool it,
    and answer the mean over the session's steps so far. ``start`` clears the
    slot, ``ready`` says whether the slot holds a request this time (the
    direct strategy keeps a session in one slot)."""

    def __init__(self):
        super().__init__()
        self.encode = torch.nn.Sequential(
            torch.nn.Linear(SESSION_FEATURE_DIM, SESSION_HIDDEN_DIM),
            torch.nn.GELU(),
            torch.nn.Linear(SESSION_HIDDEN_DIM, SESSION_HIDDEN_DIM),
        )
        self.register_buffer("total", torch.zeros(SESSION_SLOTS, SESSION_HIDDEN_DIM))
        self.register_buffer("steps", torch.zeros(SESSION_SLOTS, 1))

    def forward(self, x: torch.Tensor, start: torch.Tensor, ready: torch.Tensor) -> torch.Tensor:
        slots = x.size(0)
        start = start.reshape(slots, 1).to(x.dtype)
        ready = ready.reshape(slots, 1).to(x.dtype)
        pooled = self.encode(x).mean(dim=1)
        total = self.total[:slots] * (1.0 - start) + pooled * ready
        steps = self.steps[:slots] * (1.0 - start) + ready
        self.total[:slots] = total
        self.steps[:slots] = steps
        return total / steps.clamp(min=1.0)


COMPILED_ENCODER = "compiled-encoder"


def compiled_encoder_weights(model_repository: pathlib.Path, seed: int = DEFAULT_SEED) -> dict:
    """The seeded state dict of the class in ``compiled-encoder/1/model.py``,
    built from that file as Triton's runtime builds it: the first
    ``torch.nn.Module`` subclass, with no arguments."""
    source = model_repository / COMPILED_ENCODER / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(COMPILED_ENCODER.replace("-", "_"), source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classes = [
        value
        for _, value in sorted(vars(module).items())
        if isinstance(value, type) and issubclass(value, torch.nn.Module) and value is not torch.nn.Module
    ]
    if not classes:
        raise FileNotFoundError(f"{source} defines no torch.nn.Module")
    torch.manual_seed(seed)
    return classes[0]().state_dict()


def _script(model: torch.nn.Module) -> torch.jit.ScriptModule:
    # torch 2.13 marks torch.jit.script deprecated, but TorchScript is the
    # format Triton's libtorch backend loads, so it is the one to write.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=DeprecationWarning)
        return torch.jit.script(model.eval())


def build_model(feature_dim: int, seed: int = DEFAULT_SEED) -> torch.jit.ScriptModule:
    """Return the scripted encoder for ``feature_dim`` with seeded weights."""
    torch.manual_seed(seed)
    return _script(MaskedPoolingEncoder(feature_dim))


def build_text_encoder(seed: int = DEFAULT_SEED) -> torch.jit.ScriptModule:
    """Return the scripted ``text-encoder`` with seeded weights."""
    torch.manual_seed(seed)
    return _script(TextEncoder())


def build_session_encoder(seed: int = DEFAULT_SEED) -> torch.jit.ScriptModule:
    """Return the scripted ``session-encoder`` with seeded weights."""
    torch.manual_seed(seed)
    return _script(SessionEncoder())


# Real sample data for the example plan (plans/example.yaml): a mask that keeps
# every item, for groups of up to this many items. Triton reads a sample's
# input_data_file from the model's warmup/ folder and takes its first bytes.
MASK_FILE = "mask_all_items.bin"
MASK_FILE_ITEMS = 64


def _model_file(model_repository: pathlib.Path, model_name: str) -> pathlib.Path:
    if not (model_repository / model_name / "config.pbtxt").is_file():
        raise FileNotFoundError(
            f"{model_repository / model_name / 'config.pbtxt'} is missing: "
            "--model-repository must point at this project's model_repository"
        )
    version_dir = model_repository / model_name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    return version_dir / "model.pt"


def write_models(model_repository: pathlib.Path, seed: int = DEFAULT_SEED) -> list:
    """Write ``<model>/1/model.pt`` for every example TorchScript model and
    ``<model>/warmup/mask_all_items.bin`` for model-v1..v3; return the paths."""
    written = []
    for model_name, feature_dim in FEATURE_DIMS.items():
        path = _model_file(model_repository, model_name)
        build_model(feature_dim, seed).save(str(path))
        written.append(path)
        warmup_dir = model_repository / model_name / "warmup"
        warmup_dir.mkdir(exist_ok=True)
        mask = warmup_dir / MASK_FILE
        mask.write_bytes(torch.ones(MASK_FILE_ITEMS, dtype=torch.int64).numpy().tobytes())
        written.append(mask)
    for model_name, build in ((TEXT_ENCODER, build_text_encoder), (SESSION_ENCODER, build_session_encoder)):
        path = _model_file(model_repository, model_name)
        build(seed).save(str(path))
        written.append(path)
    # A copy of the repository without the PyTorch 2 example (the tests'
    # template) gets the TorchScript models only.
    if (model_repository / COMPILED_ENCODER).is_dir():
        path = _model_file(model_repository, COMPILED_ENCODER)
        torch.save(compiled_encoder_weights(model_repository, seed), str(path))
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-repository",
        type=pathlib.Path,
        default=pathlib.Path("model_repository"),
        help="Model repository that holds model-v1..model-v3, text-encoder and session-encoder. "
        "Default is ./model_repository.",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"Weight seed. Default is {DEFAULT_SEED}."
    )
    args = parser.parse_args(argv)
    try:
        for path in write_models(args.model_repository, args.seed):
            print(f"wrote {path}")
    except FileNotFoundError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
