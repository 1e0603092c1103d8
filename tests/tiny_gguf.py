"""
A tiny random-weight llama model written as GGUF with the C{gguf}
package, for the llama.cpp worker's tests: no model hub, a few hundred
kilobytes, milliseconds a token on a CPU.

Its vocabulary is made so that a test can count tokens without the model:
every printable ASCII character is one token (a space is C{▁}, as
SentencePiece spells it), and the control tokens are the chat template's
markers. Its weights are random, except that one dimension of the residual
stream holds a constant that the output rows of the control tokens weigh
negatively: the model never ends a reply by itself, so every stop is one a
test asked for (C{max_tokens}, C{stop}, or a C{logit_bias} on the end
token).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

UNKNOWN = "<unk>"
BEGIN = "<s>"
END = "</s>"
ROLES = ["system", "user", "assistant"]
CONTROL = [BEGIN, END] + [f"<|{role}|>" for role in ROLES]
CHARACTERS = ["\u2581"] + [chr(code) for code in range(33, 127)]
TOKENS = [UNKNOWN] + CONTROL + CHARACTERS
END_ID = TOKENS.index(END)

#: The chat template: BOS, each message as its role's marker, its content
#: and the end token, then the assistant's marker.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

EMBEDDING = 64
LAYERS = 2
HEADS = 4
FEED_FORWARD = 128
CONTEXT = 512
#: The constant in dimension 0 of every token's embedding.
ANCHOR = 4.0


def prompt_tokens(messages: list[dict[str, str]]) -> int:
    """
    How many tokens the chat template makes of C{messages} (ASCII
    content): BOS, a marker, each character and the end token per message,
    and the assistant's marker.
    """
    return 2 + sum(2 + len(message["content"]) for message in messages)


def write_model(path: str, seed: int = 1234) -> None:
    """
    Write the tiny model to C{path}.
    """
    import gguf
    import numpy as np

    generator = np.random.default_rng(seed)
    vocabulary = len(TOKENS)
    head = EMBEDDING // HEADS

    def random(*shape: int, scale: float) -> Any:
        return (generator.standard_normal(shape) * scale).astype(np.float32)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny-llama-test")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(EMBEDDING)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head)
    writer.add_vocab_size(vocabulary)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_scores([0.0] * vocabulary)
    writer.add_token_types(
        [gguf.TokenType.UNKNOWN]
        + [gguf.TokenType.CONTROL] * len(CONTROL)
        + [gguf.TokenType.NORMAL] * len(CHARACTERS)
    )
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(TOKENS.index(BEGIN))
    writer.add_eos_token_id(END_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    embeddings = random(vocabulary, EMBEDDING, scale=1.0)
    embeddings[:, 0] = ANCHOR
    output = random(vocabulary, EMBEDDING, scale=1.0)
    # The unknown and control tokens: a logit of -10 times the normalised
    # anchor, which no other dimension can make up for.
    output[: 1 + len(CONTROL)] = 0.0
    output[: 1 + len(CONTROL), 0] = -10.0
    writer.add_tensor("token_embd.weight", embeddings)
    writer.add_tensor("output_norm.weight", np.ones(EMBEDDING, np.float32))
    writer.add_tensor("output.weight", output)
    for layer in range(LAYERS):
        block = f"blk.{layer}"
        # Nothing a layer adds reaches dimension 0, so the anchor stays.
        attention_output = random(EMBEDDING, EMBEDDING, scale=0.1)
        attention_output[0] = 0.0
        down = random(EMBEDDING, FEED_FORWARD, scale=0.1)
        down[0] = 0.0
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(EMBEDDING, np.float32))
        writer.add_tensor(f"{block}.attn_q.weight", random(EMBEDDING, EMBEDDING, scale=0.2))
        writer.add_tensor(f"{block}.attn_k.weight", random(EMBEDDING, EMBEDDING, scale=0.2))
        writer.add_tensor(f"{block}.attn_v.weight", random(EMBEDDING, EMBEDDING, scale=0.2))
        writer.add_tensor(f"{block}.attn_output.weight", attention_output)
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(EMBEDDING, np.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", random(FEED_FORWARD, EMBEDDING, scale=0.1))
        writer.add_tensor(f"{block}.ffn_up.weight", random(FEED_FORWARD, EMBEDDING, scale=0.1))
        writer.add_tensor(f"{block}.ffn_down.weight", down)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


_directory: Optional[str] = None


def model_path() -> str:
    """
    The tiny model, written once per test process in a new directory of
    the current one (trial's temporary directory, which the next run
    empties).
    """
    global _directory
    if _directory is None:
        _directory = tempfile.mkdtemp(prefix="tiny-gguf-", dir=os.getcwd())
        write_model(os.path.join(_directory, "tiny.gguf"))
    return os.path.join(_directory, "tiny.gguf")


def token_ids(text: str) -> list[int]:
    """
    The tiny model's ids for ASCII C{text}, BOS first.
    """
    pieces = ["\u2581" if character == " " else character for character in text]
    return [TOKENS.index(BEGIN)] + [TOKENS.index(piece) for piece in pieces]
