"""
Embeddings and tokens for the llama.cpp worker.

The gateway sends token ids, not text, so the sequences are decoded
through llama.cpp's own C API (the calls llama-cpp-python binds) rather
than C{Llama.embed}, which takes text: several sequences per decode, as
many as the batch and the context's sequences allow, each pooled by
llama.cpp (or here, averaging its tokens, for a model that pools none).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hfendpoint import InvalidRequest

#: The poolings C{--pooling} names, as llama.cpp numbers them.
POOLINGS = {"mean": 1, "cls": 2, "last": 3}
NO_POOLING = 0


def tokenize(llama: Any, data: Any) -> dict[str, Any]:
    """
    The C{tokenize} call: each text's ids as the model reads it, its
    beginning-of-sequence token included where the model adds one; text
    is never read as control tokens.
    """
    texts = data.get("input") if isinstance(data, dict) else None
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise InvalidRequest("input must be a list of strings")
    return {
        "tokens": [
            llama.tokenize(text.encode("utf-8"), add_bos=True, special=False) for text in texts
        ]
    }


def token_lists(data: Any, vocabulary: int, longest: int) -> list[list[int]]:
    """
    The C{input} of an C{embeddings} call, checked: llama.cpp must never
    see an id outside its vocabulary.
    """
    inputs = data.get("input") if isinstance(data, dict) else None
    if not isinstance(inputs, list):
        raise InvalidRequest("input must be a list of token lists")
    for index, tokens in enumerate(inputs):
        if not isinstance(tokens, list) or not all(
            isinstance(token, int) and not isinstance(token, bool) for token in tokens
        ):
            raise InvalidRequest(f"input {index} must be a list of token ids")
        if not tokens:
            raise InvalidRequest(f"input {index} is empty")
        if len(tokens) > longest:
            raise InvalidRequest(
                f"input {index} is {len(tokens)} tokens long, more than the "
                f"{longest} the context (--n-ctx) holds"
            )
        wrong = next((token for token in tokens if not 0 <= token < vocabulary), None)
        if wrong is not None:
            raise InvalidRequest(
                f"input {index} has token id {wrong}, not one of this model's (0 to {vocabulary - 1})"
            )
    return inputs


class Embedder:
    """
    Decodes token lists into one vector each, in the model's thread.
    """

    def __init__(self, llama: Any, normalize: bool) -> None:
        import llama_cpp

        self.c = llama_cpp
        self.llama = llama
        self.normalize = normalize
        self.size = llama.n_embd()
        self.capacity = llama.n_batch
        self.sequences = llama_cpp.llama_n_seq_max(llama.ctx)
        self.pooled = llama_cpp.llama_pooling_type(llama.ctx) != NO_POOLING
        self.batch = llama_cpp.llama_batch_init(self.capacity, 0, 1)

    def close(self) -> None:
        self.c.llama_batch_free(self.batch)

    def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        vectors: list[list[float]] = []
        group: list[Sequence[int]] = []
        used = 0
        for tokens in inputs:
            if group and (used + len(tokens) > self.capacity or len(group) >= self.sequences):
                vectors += self.decode(group)
                group, used = [], 0
            group.append(tokens)
            used += len(tokens)
        if group:
            vectors += self.decode(group)
        return vectors

    def decode(self, group: list[Sequence[int]]) -> list[list[float]]:
        import numpy as np

        c, ctx, batch = self.c, self.llama.ctx, self.batch
        n = 0
        for sequence, tokens in enumerate(group):
            for position, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = position
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = sequence
                batch.logits[n] = True
                n += 1
        batch.n_tokens = n
        c.llama_memory_clear(c.llama_get_memory(ctx), True)
        status = c.llama_decode(ctx, batch)
        if status != 0:
            raise InvalidRequest(f"llama.cpp could not decode the input (status {status})")
        rows = []
        first = 0
        for sequence, tokens in enumerate(group):
            if self.pooled:
                pointer = c.llama_get_embeddings_seq(ctx, sequence)
                if not pointer:
                    raise InvalidRequest("llama.cpp pooled no embedding for this model")
                row = np.ctypeslib.as_array(pointer, shape=(self.size,)).astype(np.float64)
            else:
                row = np.zeros(self.size)
                for index in range(first, first + len(tokens)):
                    pointer = c.llama_get_embeddings_ith(ctx, index)
                    row += np.ctypeslib.as_array(pointer, shape=(self.size,))
                row /= len(tokens)
            first += len(tokens)
            if self.normalize:
                norm = float(np.linalg.norm(row))
                if norm > 0.0:
                    row = row / norm
            rows.append(row.tolist())
        return rows
