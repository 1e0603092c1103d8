"""
The choices of a chat-shaped request: one worker C{chat_completions} call
per choice (or one for all, when the worker's handshake says it makes
them itself), each chunk handed to the translator as it comes and
collected into a L{Choice}. Chat, completions and responses are all
served this way.

A worker's chunk is C{{"content", "finish_reason"}} as in the original
protocol; a worker may add C{tool_calls}, C{logprobs}, C{usage}, C{role}
and C{index} (PROTOCOL.md, extensions).
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable, Optional

from twisted.internet.defer import FirstError, gatherResults

from hfendpoint.api._wording import is_int, shown
from hfendpoint.api._usage import count_prompt_tokens, make_usage
from hfendpoint.errors import worker_failed
from hfendpoint.interfaces import IWorkerClient

CALL = "chat_completions"
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "function_call")

# Ids only need to be unique, not secret: a generator seeded from the system
# saves a system call per id (image ids, which are secrets, do not use it).
_ids = random.Random(os.urandom(32))


def new_id(prefix: str) -> str:
    return "%s%024x" % (prefix, _ids.getrandbits(96))


def read_chunk(data: Any) -> dict:
    """
    A worker chunk, checked just enough that a wrong one is a clear error.
    """
    if not isinstance(data, dict):
        raise worker_failed("The worker sent a chat chunk that is not a map.")
    content = data.get("content")
    if content is not None and not isinstance(content, str):
        raise worker_failed("The worker sent a chat chunk whose content is not a string.")
    return data


def finish_reason_of(chunk: dict) -> Optional[str]:
    reason = chunk.get("finish_reason")
    if reason is None:
        return None
    reason = str(reason)
    return reason if reason in FINISH_REASONS else "stop"


class Choice:
    """
    One choice as it builds up from the worker's chunks.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        #: Called with the text of each plain token once set (see
        #: run_choices); until then every chunk takes the general path.
        self.on_token: Optional[Callable[[str], None]] = None
        self.parts: list[str] = []
        self.tool_calls: list[dict] = []
        self.logprobs: Optional[list] = None
        self.finish_reason: Optional[str] = None
        self.usage: Optional[dict] = None
        self.chunks = 0

    def add(self, chunk: dict) -> None:
        self.chunks += 1
        if len(chunk) == 2 and "content" in chunk and chunk.get("finish_reason", 0) is None:
            # A token and nothing else: the chunk nearly every reply is.
            if chunk["content"]:
                self.parts.append(chunk["content"])
            return
        content = chunk.get("content")
        if content:
            self.parts.append(content)
        calls = chunk.get("tool_calls")
        if isinstance(calls, list):
            self.tool_calls.extend(c for c in calls if isinstance(c, dict))
        logprobs = chunk.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            self.logprobs = (self.logprobs or []) + logprobs["content"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        self.finish_reason = finish_reason_of(chunk) or self.finish_reason

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def message(self) -> dict:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.text if (self.parts or not self.tool_calls) else None,
            "refusal": None,
            "annotations": [],
        }
        if self.tool_calls:
            message["tool_calls"] = [_full_tool_call(c, i) for i, c in enumerate(self.tool_calls)]
        return message

    def as_choice(self) -> dict:
        return {
            "index": self.index,
            "message": self.message(),
            "logprobs": {"content": self.logprobs, "refusal": None} if self.logprobs is not None else None,
            "finish_reason": self.finish_reason or "stop",
        }


def _full_tool_call(call: dict, position: int) -> dict:
    function = call.get("function") if isinstance(call.get("function"), dict) else {}
    return {
        "id": call.get("id") or new_id("call_"),
        "type": "function",
        "function": {
            "name": str(function.get("name", "")),
            "arguments": str(function.get("arguments", "")),
        },
    }


def stream_tool_calls(calls: list, offset: int) -> list[dict]:
    out = []
    for i, call in enumerate(calls):
        if not isinstance(call, dict):
            continue
        full = _full_tool_call(call, offset + i)
        out.append({"index": call.get("index", offset + i), **full})
    return out


async def run_choices(
    client: IWorkerClient,
    data: dict,
    on_chunk: Callable[[Choice, dict], None],
    call: str = CALL,
    collect: bool = False,
) -> list[Choice]:
    """
    Run the worker call(s) for every choice of a request and hand each
    chunk to C{on_chunk}; return the finished choices, in index order.

    A chunk that is a token and nothing else, the chunk nearly every reply
    is, goes instead to its choice's C{on_token} once that is set (by
    C{on_chunk}, say, once the choice's first event is out); with
    C{collect}, tokens are only collected, without a call.
    """
    n = data.get("n") or 1
    choices = [Choice(i) for i in range(n)]
    if n == 1 or "chat_n" in client.info.features:
        calls = [(data, None)]
    else:
        calls = [(dict(data, n=1), choice) for choice in choices]

    def receiver(fixed: Optional[Choice]) -> Callable[[Any], bool]:
        def on_reply(reply: Any) -> bool:
            chunk = read_chunk(reply)
            if fixed is not None:
                choice = fixed
            else:
                index = chunk.get("index", 0)
                if not is_int(index) or not 0 <= index < n:
                    raise worker_failed(f"The worker sent a chunk for choice {shown(index)}.")
                choice = choices[index]
            choice.add(chunk)
            on_chunk(choice, chunk)
            if fixed is not None or n == 1:
                return choice.finish_reason is not None
            return all(c.finish_reason is not None for c in choices)

        return on_reply

    def token_receiver(choice: Choice, general: Callable[[Any], bool]) -> Callable[[Any], bool]:
        parts = choice.parts

        def on_reply(reply: Any) -> bool:
            if type(reply) is dict and len(reply) == 2 and reply.get("finish_reason", 0) is None:
                content = reply.get("content")
                on_token = choice.on_token
                if on_token is not None and type(content) is str and content:
                    choice.chunks += 1
                    parts.append(content)
                    on_token(content)
                    return False
            return general(reply)

        return on_reply

    def collector(choice: Choice, general: Callable[[Any], bool]) -> Callable[[Any], bool]:
        parts = choice.parts

        def on_reply(reply: Any) -> bool:
            if type(reply) is dict and len(reply) == 2 and reply.get("finish_reason", 0) is None:
                content = reply.get("content")
                if type(content) is str and content:
                    choice.chunks += 1
                    parts.append(content)
                    return False
            return general(reply)

        return on_reply

    def receiver_for(fixed: Optional[Choice]) -> Callable[[Any], bool]:
        choice = fixed if fixed is not None else choices[0] if n == 1 else None
        general = receiver(fixed)
        if choice is None:
            return general
        return collector(choice, general) if collect else token_receiver(choice, general)

    requests = [client.request(call, payload, receiver_for(fixed)) for payload, fixed in calls]
    if len(requests) == 1:
        await requests[0]
    else:
        await gatherResults(requests, consumeErrors=True).addErrback(_first_error)
    return choices


def _first_error(failure: Any) -> Any:
    """
    gatherResults wraps the first failure; unwrap it so the caller sees
    the OpenAIError itself.
    """
    if failure.check(FirstError):
        return failure.value.subFailure
    return failure


def reported_usage(choices: list[Choice]) -> Optional[dict]:
    """
    The worker's own usage, when it reported it for every call (the usual
    case: nothing to count, nor to wait for).
    """
    reported = [c.usage for c in choices if c.usage]
    if not reported or len(reported) != len(choices):
        return None
    return make_usage(
        _count(reported[0], "prompt_tokens"),
        sum(_count(r, "completion_tokens") for r in reported),
    )


async def counted_usage(client: IWorkerClient, choices: list[Choice], text: str) -> dict:
    """
    The usage counted here, for a worker that did not report it: prompt
    tokens with the worker's tokenizer where it has one, completion tokens
    as the chunks it sent.
    """
    prompt = await count_prompt_tokens(client, text)
    return make_usage(prompt, sum(len(c.parts) + len(c.tool_calls) for c in choices))


def _count(report: dict, key: str) -> int:
    value = report.get(key, 0)
    return value if is_int(value) and value >= 0 else 0


def prompt_text(messages: list[dict]) -> str:
    """
    The text of a conversation, for counting its tokens.
    """
    texts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(p.get("text", "") for p in content if isinstance(p.get("text"), str))
    return "\n".join(texts)
