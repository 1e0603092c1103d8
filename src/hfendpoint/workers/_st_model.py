"""
A loaded sentence-transformers model, seen as the protocol sees it: text
in, token ids out (C{tokenize}); token ids in, vectors out
(C{embeddings}).

Both ends use the model's own code. Text goes through the model's
C{preprocess}, exactly as C{SentenceTransformer.encode} does: its
tokenizer, special tokens, truncation and prompt. Token ids are turned
back into the features C{preprocess} would have made for them (found by
preprocessing a probe text once at start) and run through the model's
modules, so its pooling, normalisation and anything else it has apply.

Two layouts of features are known: padded rows with an attention mask
(every Hugging Face transformer), and a flat list with offsets
(C{StaticEmbedding}). A model whose first module makes anything else is
refused at start.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch

log = logging.getLogger("hfendpoint.workers.sentence_transformers")

PROBE = "hello"
#: Beyond this, a model's maximum length means "none was set".
UNBOUNDED = 1_000_000


class UnsupportedModel(Exception):
    """
    The model's first module makes features this worker cannot rebuild
    from token ids.
    """


class Embedder:
    """
    @ivar limit: the most tokens the model sees (its C{max_seq_length}), or
        L{None} for no limit.
    @ivar vocabulary: the number of token ids the model knows, if found.
    @ivar prompt: the prompt put before every text, if any.
    @ivar prompt_ids: the tokens the prompt begins an input with, when the
        model's pooling must be told where the prompt ends.
    """

    def __init__(self, model: Any, prompt: Optional[str] = None) -> None:
        self.model = model
        #: What runs the model on features: the model itself, or its
        #: forward on ONNX Runtime (L{hfendpoint.workers._st_onnx}).
        self.forward: Any = model
        self.prompt = prompt or None
        self.truncate_dim = getattr(model, "truncate_dim", None)
        probe = model.preprocess([PROBE], prompt=self.prompt)
        if "offsets" in probe:
            self.layout = "offsets"
        elif isinstance(probe.get("input_ids"), torch.Tensor) and probe["input_ids"].dim() == 2:
            self.layout = "padded"
        else:
            raise UnsupportedModel(
                f"its first module ({type(model[0]).__name__}) makes features "
                f"{sorted(probe)} that cannot be rebuilt from token ids"
            )
        self.modality = probe.get("modality")
        self.type_ids = "token_type_ids" in probe
        self.mask_dtype = probe["attention_mask"].dtype if "attention_mask" in probe else torch.long
        known = {"input_ids", "attention_mask", "token_type_ids", "offsets", "modality", "prompt_length"}
        # Values that are not per-input (a flag such as logits_to_keep) are
        # passed on as the probe had them.
        self.extra = {
            key: value
            for key, value in probe.items()
            if key not in known and not isinstance(value, torch.Tensor)
        }
        ignored = sorted(key for key in probe if key not in known and key not in self.extra)
        if ignored:
            raise UnsupportedModel(f"its features {ignored} cannot be rebuilt from token ids")
        self.prompt_length = probe.get("prompt_length")
        self.prompt_ids: Optional[list[int]] = None
        if self.prompt_length:
            first = self.split(probe, 1)[0]
            self.prompt_ids = first[: int(self.prompt_length)]
        tokenizer = getattr(model, "tokenizer", None)
        self.pad_id = getattr(tokenizer, "pad_token_id", None) or 0
        self.pad_left = getattr(tokenizer, "padding_side", "right") == "left"
        self.limit = find_limit(model)
        self.vocabulary = find_vocabulary(model[0])

    @property
    def device(self) -> torch.device:
        return self.model.device

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """
        The ids the model sees for each text: its prompt, special tokens
        and truncation included, since that is what C{encode} feeds it.
        """
        if not texts:
            return []
        return self.split(self.model.preprocess(list(texts), prompt=self.prompt), len(texts))

    def split(self, features: dict[str, Any], count: int) -> list[list[int]]:
        """
        The token ids of each input of preprocessed C{features}, without
        the padding.
        """
        ids = features["input_ids"]
        if "offsets" in features:
            flat = ids.tolist()
            bounds = features["offsets"].tolist() + [len(flat)]
            return [flat[start:end] for start, end in zip(bounds, bounds[1:])]
        if "cu_seq_lens_q" in features:
            # Flattened for flash attention: one row, cut by sequence bounds.
            flat = ids.reshape(-1).tolist()
            bounds = features["cu_seq_lens_q"].tolist()
            return [flat[start:end] for start, end in zip(bounds, bounds[1:])]
        mask = features.get("attention_mask")
        if mask is None:
            return ids.tolist()
        rows = []
        for row, keep in zip(ids, mask.bool()):
            rows.append(row[keep].tolist())
        return rows[:count]

    def has_prompt(self, row: Sequence[int]) -> bool:
        """
        Whether C{row} starts with the prompt, so that pooling which leaves
        the prompt out may do so: text sent through C{tokenize} does.
        """
        ids = self.prompt_ids
        return ids is not None and len(row) > len(ids) and list(row[: len(ids)]) == ids

    def features(self, rows: Sequence[Sequence[int]], prompted: bool) -> dict[str, Any]:
        """
        The features C{preprocess} makes for inputs tokenized to C{rows}.
        """
        if self.layout == "offsets":
            lengths = [len(row) for row in rows]
            features: dict[str, Any] = {
                "input_ids": torch.tensor([t for row in rows for t in row], dtype=torch.long),
                "offsets": torch.tensor([0, *np.cumsum(lengths[:-1]).tolist()], dtype=torch.long),
            }
        else:
            width = max(len(row) for row in rows)
            ids, mask = [], []
            for row in rows:
                padding = width - len(row)
                if self.pad_left:
                    ids.append([self.pad_id] * padding + list(row))
                    mask.append([0] * padding + [1] * len(row))
                else:
                    ids.append(list(row) + [self.pad_id] * padding)
                    mask.append([1] * len(row) + [0] * padding)
            features = {
                "input_ids": torch.tensor(ids, dtype=torch.long),
                "attention_mask": torch.tensor(mask, dtype=self.mask_dtype),
            }
            if self.type_ids:
                features["token_type_ids"] = torch.zeros((len(rows), width), dtype=torch.long)
        if self.modality is not None:
            features["modality"] = self.modality
        if prompted and self.prompt_length is not None:
            features["prompt_length"] = self.prompt_length
        features.update(self.extra)
        return features

    def embed(self, rows: Sequence[Sequence[int]], prompted: bool = False) -> np.ndarray:
        """
        Run the model on one sub-batch of token lists, each already within
        its length; meant for the one thread that owns the device.

        @param prompted: every row starts with the prompt (L{has_prompt}).
        @return: float32 vectors, one row per input.
        """
        features = self.features(rows, prompted)
        device = self.device
        features = {
            key: value.to(device) if isinstance(value, torch.Tensor) else value
            for key, value in features.items()
        }
        with torch.inference_mode():
            vectors = self.forward(features)["sentence_embedding"]
            if self.truncate_dim is not None:
                vectors = vectors[..., : self.truncate_dim]
            return vectors.float().cpu().numpy()

    def dimension(self) -> Optional[int]:
        for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
            get = getattr(self.model, name, None)
            if get is not None:
                return get()
        return None


def find_limit(model: Any) -> Optional[int]:
    """
    The most tokens the model takes: its C{max_seq_length} when it has a
    real one, otherwise what its position embeddings allow.
    """
    limit = getattr(model, "max_seq_length", None)
    if isinstance(limit, (int, float)) and not math.isinf(limit) and 0 < limit < UNBOUNDED:
        return int(limit)
    if isinstance(limit, float) and math.isinf(limit):
        return None
    config = getattr(model[0], "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    positions = getattr(config, "max_position_embeddings", None)
    return positions if isinstance(positions, int) and positions > 0 else None


def find_vocabulary(module: Any) -> Optional[int]:
    """
    How many token ids the first module's embedding table has, if it can
    be found; an id past it is the client's mistake, better named than
    an index error from inside the model.
    """
    embedding = getattr(module, "embedding", None)
    if embedding is not None and hasattr(embedding, "num_embeddings"):
        return int(embedding.num_embeddings)
    inner = getattr(module, "auto_model", None) or getattr(module, "model", None)
    get = getattr(inner, "get_input_embeddings", None)
    if get is None:
        return None
    try:
        table = get()
    except (AttributeError, NotImplementedError):
        return None
    size = getattr(table, "num_embeddings", None)
    return int(size) if isinstance(size, int) else None
