"""
Chat for the llama.cpp worker: reading a C{chat_completions} request,
making its prompt with the model's chat template, and generating the
reply token by token.

The generation runs in the model's thread (see L{hfendpoint.workers.
_llama_thread}) and yields the reply's text as it grows, holding back what
might be the start of a C{stop} string, and checks between tokens whether
the request was cancelled.
"""

from __future__ import annotations

import codecs
import logging
import random
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from hfendpoint import InvalidRequest

#: The sampling fields of llama.cpp that OpenAI lacks, read when given:
#: name, smallest and largest value, default (which leaves them off).
log = logging.getLogger("hfendpoint.workers.llama_cpp")

EXTRA_SAMPLING = {
    "top_k": (0, None, 0),
    "min_p": (0.0, 1.0, 0.0),
    "typical_p": (0.0, 1.0, 1.0),
    "repeat_penalty": (0.0, None, 1.0),
}
TEXT_PARTS = ("text", "input_text", "output_text")


@dataclass
class ChatRequest:
    """
    What a C{chat_completions} call asks for, checked.

    @ivar messages: the messages with their content as text, for the
        template; L{None} for a raw completion of C{prompt}.
    @ivar prompt: the text to complete as it is (C{/v1/completions}).
    @ivar max_tokens: the most tokens to sample, or L{None} for as many as
        the context holds.
    @ivar seed: the sampling seed, or L{None} for a random one.
    """

    messages: Optional[list[dict[str, Any]]]
    prompt: Optional[str]
    max_tokens: Optional[int]
    temperature: float
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    stop: list[str]
    seed: Optional[int]
    logit_bias: dict[int, float]
    extra: dict[str, Any] = field(default_factory=dict)


def number(data: Mapping[str, Any], key: str, low: float, high: Optional[float], default: Any) -> Any:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{key} must be a number")
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise InvalidRequest(f"{key} must be {bounds}, not {value}")
    return int(value) if isinstance(default, int) else float(value)


def integer(data: Mapping[str, Any], key: str) -> Optional[int]:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{key} must be an integer")
    return value


def message_content(index: int, message: Any) -> dict[str, Any]:
    """
    A message for the template, its content as one string: text parts are
    joined, and anything else (an image) is refused, since a GGUF chat
    model here reads text only.
    """
    if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
        raise InvalidRequest(f"messages[{index}] must be a map with a role")
    content = message.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
                raise InvalidRequest(
                    f"messages[{index}] has a content part of type {kind!r}: "
                    "this model reads text only"
                )
            texts.append(part["text"])
        content = "".join(texts)
    elif not isinstance(content, str):
        raise InvalidRequest(f"messages[{index}].content must be a string or a list of parts")
    return {**message, "content": content}


def stop_strings(data: Mapping[str, Any]) -> list[str]:
    stop = data.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequest("stop must be a string or a list of strings")
    return [s for s in stop if s]


def logit_bias(data: Mapping[str, Any], vocabulary: int) -> dict[int, float]:
    bias = data.get("logit_bias")
    if bias is None:
        return {}
    if not isinstance(bias, Mapping):
        raise InvalidRequest("logit_bias must be a map of token ids to numbers")
    result = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            token = -1
        if not 0 <= token < vocabulary:
            raise InvalidRequest(f"logit_bias: {key!r} is no token id of this model (0 to {vocabulary - 1})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(f"logit_bias[{key!r}] must be a number")
        result[token] = float(value)
    return result


def refuse_unsupported(data: Mapping[str, Any]) -> None:
    """
    Refuse what this worker cannot honour rather than answer as if it had.
    """
    if data.get("n") not in (None, 1):
        raise InvalidRequest("n must be 1: the gateway sends one call per choice")
    if data.get("logprobs"):
        raise InvalidRequest("logprobs are not supported by the llama.cpp worker")
    if data.get("tools") and data.get("tool_choice") != "none":
        raise InvalidRequest("tools are not supported by the llama.cpp worker")
    response_format = data.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") not in (None, "text"):
        raise InvalidRequest("only the text response_format is supported by the llama.cpp worker")


def parse_chat(data: Any, vocabulary: int) -> ChatRequest:
    """
    @raise InvalidRequest: for a request this worker cannot serve, saying why.
    """
    if not isinstance(data, Mapping):
        raise InvalidRequest("a chat request must be a map")
    refuse_unsupported(data)
    prompt = data.get("prompt")
    messages = None
    if prompt is not None:
        if not isinstance(prompt, str):
            raise InvalidRequest("prompt must be a string")
    else:
        raw = data.get("messages")
        if not isinstance(raw, list) or not raw:
            raise InvalidRequest("messages must be a non-empty list")
        messages = [message_content(index, message) for index, message in enumerate(raw)]
    max_tokens = integer(data, "max_tokens")
    if max_tokens is None:
        max_tokens = integer(data, "max_completion_tokens")
    if max_tokens is not None and max_tokens < 0:
        raise InvalidRequest("max_tokens must not be negative")
    seed = integer(data, "seed")
    return ChatRequest(
        messages=messages,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=number(data, "temperature", 0.0, None, 1.0),
        top_p=number(data, "top_p", 0.0, 1.0, 1.0),
        presence_penalty=number(data, "presence_penalty", -2.0, 2.0, 0.0),
        frequency_penalty=number(data, "frequency_penalty", -2.0, 2.0, 0.0),
        stop=stop_strings(data),
        # llama.cpp seeds are 32 bits, all ones meaning "pick one at random".
        seed=None if seed is None else seed % 0xFFFFFFFF,
        logit_bias=logit_bias(data, vocabulary),
        extra={key: number(data, key, *bounds) for key, bounds in EXTRA_SAMPLING.items()},
    )


class StopFinder:
    """
    Cuts a growing text at the first C{stop} string, and holds back the
    end of it that could still become one, so that no client ever sees
    the beginning of a stop string.
    """

    def __init__(self, stop: list[str]) -> None:
        self.stop = stop
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """
        @return: the text that may be sent now, and whether a stop string
            was found (nothing after it may be sent then).
        """
        held = self.held + text
        found = [held.find(s) for s in self.stop]
        found = [at for at in found if at >= 0]
        if found:
            self.held = ""
            return held[: min(found)], True
        keep = 0
        for s in self.stop:
            for length in range(min(len(s) - 1, len(held)), keep, -1):
                if held.endswith(s[:length]):
                    keep = length
                    break
        self.held = held[len(held) - keep :]
        return held[: len(held) - keep], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


def chunk(content: str, finish_reason: Optional[str] = None) -> dict[str, Any]:
    return {"content": content, "finish_reason": finish_reason}


class Chat:
    """
    Chat generation on one loaded C{llama_cpp.Llama}, used from the model's
    thread only.

    @ivar template: the chat formatter (llama-cpp-python's
        C{Jinja2ChatFormatter}) making a prompt of messages.
    """

    def __init__(self, llama: Any, template: Any) -> None:
        import llama_cpp

        self.llama = llama
        self.template = template
        self.vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self.is_end = llama_cpp.llama_vocab_is_eog

    def prompt_tokens(self, request: ChatRequest) -> list[int]:
        if request.prompt is not None:
            return self.llama.tokenize(request.prompt.encode("utf-8"), add_bos=True, special=False)
        try:
            formatted = self.template(messages=request.messages)
        except Exception as error:
            raise InvalidRequest(f"the model's chat template refused the messages: {error}") from None
        return self.llama.tokenize(
            formatted.prompt.encode("utf-8"),
            add_bos=not formatted.added_special,
            special=True,
        )

    def generate(self, request: ChatRequest, cancelled: threading.Event) -> Iterator[dict[str, Any]]:
        """
        The reply's chunks: text as it comes, then a last chunk with the
        finish reason and the usage. Every token sampled counts, the end
        token included; the prompt's are those the model read.
        """
        llama = self.llama
        prompt = self.prompt_tokens(request)
        room = llama.n_ctx() - len(prompt)
        if room < 1:
            raise InvalidRequest(
                f"the prompt is {len(prompt)} tokens long: the context (--n-ctx) "
                f"holds {llama.n_ctx()} with the reply"
            )
        limit = room if request.max_tokens is None else min(request.max_tokens, room)
        if request.seed is None:
            llama.set_seed(random.getrandbits(32))
        else:
            # Read the prompt afresh rather than reuse the cache from the
            # last request, whose numbers may differ in the last bit: the
            # same request with the same seed gets the same tokens.
            llama.set_seed(request.seed)
            llama.reset()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        stops = StopFinder(request.stop)
        tokens: list[int] = []
        finish_reason = "length"
        stopped = False
        if limit > 0 and not cancelled.is_set():
            for token in llama.generate(
                prompt,
                temp=request.temperature,
                top_p=request.top_p,
                top_k=request.extra["top_k"],
                min_p=request.extra["min_p"],
                typical_p=request.extra["typical_p"],
                repeat_penalty=request.extra["repeat_penalty"],
                presence_penalty=request.presence_penalty,
                frequency_penalty=request.frequency_penalty,
                logits_processor=bias_processor(request.logit_bias),
            ):
                if cancelled.is_set():
                    log.info("A generation stopped by a cancel after %d tokens", len(tokens))
                    return
                tokens.append(token)
                if self.is_end(self.vocab, token):
                    finish_reason = "stop"
                    break
                piece = llama.detokenize([token])
                text, stopped = stops.feed(decoder.decode(piece))
                if text:
                    yield chunk(text)
                if stopped:
                    finish_reason = "stop"
                    break
                if len(tokens) >= limit:
                    break
        if not stopped:
            # What was held back as a possible stop string was none.
            rest = stops.flush() + decoder.decode(b"", final=True)
            if rest:
                yield chunk(rest)
        yield {
            **chunk("", finish_reason),
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(tokens),
                "total_tokens": len(prompt) + len(tokens),
            },
        }


def bias_processor(bias: dict[int, float]) -> Any:
    """
    A llama-cpp-python logits processor adding C{bias} to the logits, or
    L{None} when there is none.
    """
    if not bias:
        return None
    from llama_cpp import LogitsProcessorList

    ids = list(bias)
    values = [bias[token] for token in ids]

    def add_bias(input_ids: Any, scores: Any) -> Any:
        scores[ids] += values
        return scores

    return LogitsProcessorList([add_bias])
