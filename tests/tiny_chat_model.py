"""
A tiny chat model for the transformers worker's tests: a two-layer Llama
with random weights and a byte-level BPE tokenizer trained here on a few
sentences, with a chat template, saved to a folder as C{save_pretrained}
writes a Hub model; and the tokenizer's own prompt count, and the
worker's engine on that model, for tests to compare with.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from typing import Any, Optional

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if tools %}<|tools|>{{ tools | tojson }}<|end|>{% endif %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|tools|>", "<|end|>"]
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, how are you today?",
    "tiny models say random things, über schön",
]
#: Room for a long generation, so that a cancel lands in the middle of one.
CONTEXT = 8192

_folder: Optional[str] = None


def tiny_model() -> str:
    """
    A folder holding a two-layer Llama with hidden size 32 and its
    tokenizer, made once per test run.
    """
    global _folder
    if _folder is not None:
        return _folder
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging

    logging.disable_progress_bar()

    folder = tempfile.mkdtemp(prefix="tiny-chat-model-")
    atexit.register(shutil.rmtree, folder, True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, chat_template=TEMPLATE)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        # Large weights make peaked, varied logits rather than a uniform
        # haze, so that different seeds and prompts visibly differ.
        initializer_range=0.3,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    _folder = folder
    return folder


def load_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model())


def prompt_tokens(messages: list[dict], tools: Any = None) -> int:
    """
    The tokenizer's own count of the templated prompt.
    """
    encoded = load_tokenizer().apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return len(encoded["input_ids"])


def load_engine() -> Any:
    from transformers import AutoModelForCausalLM

    from hfendpoint.workers._tf_engine import Engine

    model = AutoModelForCausalLM.from_pretrained(tiny_model()).eval()
    return Engine(model, load_tokenizer())
