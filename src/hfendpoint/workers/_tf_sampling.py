"""
The request's sampling settings as arguments of C{generate}: OpenAI's
temperature, top_p, seed, penalties and logit bias over the model's own
generation config.
"""

from __future__ import annotations

import copy
import os
import random
from typing import Any, Optional

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from ._tf_request import ChatRequest

#: A seed for requests that give none.
_seeds = random.Random(os.urandom(16))


class Penalties(LogitsProcessor):
    """
    OpenAI's presence and frequency penalties, over the tokens generated so
    far (not the prompt): minus C{presence} for a token that appeared,
    minus C{frequency} per time it did.
    """

    def __init__(self, prompt_length: int, presence: float, frequency: float) -> None:
        self.prompt_length = prompt_length
        self.presence = presence
        self.frequency = frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype)
        )
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class LogitBias(LogitsProcessor):
    """
    OpenAI's C{logit_bias}: a number added to the logits of some tokens.
    """

    def __init__(self, bias: dict[int, float]) -> None:
        self.tokens = list(bias)
        self.values = list(bias.values())
        self._tensors: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._tensors is None:
            self._tensors = (
                torch.tensor(self.tokens, device=scores.device),
                torch.tensor(self.values, device=scores.device, dtype=scores.dtype),
            )
        tokens, values = self._tensors
        scores = scores.clone()
        scores[:, tokens] += values
        return scores


def seed_for(request: ChatRequest) -> int:
    """
    The seed to sample with: the request's, or a fresh one.
    """
    if request.seed is None:
        return _seeds.getrandbits(63)
    return request.seed % (1 << 64)


def generation_config(base: GenerationConfig, request: ChatRequest) -> GenerationConfig:
    """
    The model's generation config with the request's settings over it.

    Sampling is on unless the temperature is 0 (greedy), as OpenAI's API
    samples by default whatever the model's config says; a setting the
    request leaves out keeps the model's value (Qwen's recommended
    temperature, say), else OpenAI's default of 1.
    """
    config = copy.deepcopy(base)
    if request.temperature == 0:
        config.do_sample = False
        # Sampling settings are meaningless then, and generate warns.
        config.temperature = config.top_p = config.top_k = config.min_p = None
        return config
    config.do_sample = True
    if request.temperature is not None:
        config.temperature = request.temperature
    if request.top_p is not None:
        config.top_p = request.top_p
    return config


def logits_processors(request: ChatRequest, prompt_length: int) -> LogitsProcessorList:
    processors: list[Any] = []
    if request.presence_penalty or request.frequency_penalty:
        processors.append(
            Penalties(prompt_length, request.presence_penalty, request.frequency_penalty)
        )
    if request.logit_bias:
        processors.append(LogitBias(request.logit_bias))
    return LogitsProcessorList(processors)
