"""Example tokenizer: one UTF-8 text per item in, token ids and a mask out.

A word-level tokenizer without a vocabulary file: each whitespace-separated
word maps to an id in 1..VOCABULARY_SIZE-1 by a stable hash, so the example
runs anywhere. A batch of texts is padded to its longest text with id 0 and
mask 0; at most MAX_TOKENS tokens per text, and an empty text gives one token
(the unknown word), as real tokenizers give at least their special tokens.
"""

import zlib

import numpy as np
import triton_python_backend_utils as pb_utils

# text-encoder's vocabulary and its longest sequence (triton_warmup/example_models.py).
VOCABULARY_SIZE = 1000
MAX_TOKENS = 128
UNKNOWN_ID = 1


def tokenize(text: bytes) -> list:
    words = text.decode("utf-8", "replace").split()[:MAX_TOKENS]
    return [1 + zlib.crc32(word.encode("utf-8")) % (VOCABULARY_SIZE - 1) for word in words] or [UNKNOWN_ID]


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            tokens = [tokenize(text) for text in texts]
            length = max(len(ids) for ids in tokens)
            input_ids = np.zeros((len(tokens), length), np.int64)
            attention_mask = np.zeros((len(tokens), length), np.int64)
            for row, ids in enumerate(tokens):
                input_ids[row, : len(ids)] = ids
                attention_mask[row, : len(ids)] = 1
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("input_ids", input_ids),
                        pb_utils.Tensor("attention_mask", attention_mask),
                    ]
                )
            )
        return responses
