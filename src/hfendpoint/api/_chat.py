"""
Chat completions: the OpenAI request to C{chat_completions} worker calls,
and the worker's chunks back to a C{chat.completion} body or to
C{chat.completion.chunk} events.

A worker's chunk is C{{"content", "finish_reason"}} as in the original
protocol; a worker may add C{tool_calls}, C{logprobs}, C{usage}, C{role}
and C{index} (PROTOCOL.md, extensions). For C{n > 1} the worker is asked
once per choice unless its handshake says it produces choices itself.
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable, Optional

from twisted.internet.defer import gatherResults

from hfendpoint.api import _fields as fields
from hfendpoint.errors import OpenAIError, invalid_request, worker_failed
from hfendpoint.interfaces import IWorkerClient
from hfendpoint.api._usage import count_prompt_tokens, make_usage
from hfendpoint.web._json import dumps, encode_string

CALL = "chat_completions"
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "function_call")


# Ids only need to be unique, not secret: a generator seeded from the system
# saves a system call per id (image ids, which are secrets, do not use it).
_ids = random.Random(os.urandom(32))


def new_id(prefix: str) -> str:
    return "%s%024x" % (prefix, _ids.getrandbits(96))


# Requests


def validate_messages(messages: Any, name: str = "messages") -> list[dict]:
    if messages is None:
        raise fields.missing(name)
    if not isinstance(messages, list):
        raise fields.wrong_type(name, "an array", messages)
    if not messages:
        raise fields.invalid_value(
            name, "empty array. Expected an array with minimum length 1, but got an empty array instead."
        )
    for i, message in enumerate(messages):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            raise fields.wrong_type(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise fields.missing(f"{where}.role")
        if role not in ROLES:
            raise fields.invalid_value(
                f"{where}.role",
                "value must be one of " + ", ".join(f"'{r}'" for r in ROLES) + f", but got {role!r} instead.",
            )
        content = message.get("content")
        if content is None:
            if role != "assistant":
                raise fields.missing(f"{where}.content")
        elif not isinstance(content, (str, list)):
            raise fields.wrong_type(f"{where}.content", "a string or an array", content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise invalid_request(
                        f"Invalid '{where}.content[{j}]': each content part must be an "
                        "object with a 'type'.",
                        param=f"{where}.content[{j}]",
                        code="invalid_value",
                    )
    return messages


def validate_sampling(body: dict) -> None:
    """
    The sampling parameters that chat, completions and responses share.
    """
    fields.get_number(body, "temperature", minimum=0, maximum=2)
    fields.get_number(body, "top_p", minimum=0, maximum=1)
    fields.get_number(body, "presence_penalty", minimum=-2, maximum=2)
    fields.get_number(body, "frequency_penalty", minimum=-2, maximum=2)
    fields.get_int(body, "seed")
    fields.get_string(body, "user")
    fields.get_object(body, "metadata")


def validate_stop(body: dict) -> None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise fields.wrong_type("stop", "a string or an array of strings", stop)
    if len(stop) > 4:
        raise fields.invalid_value(
            "stop", f"array too long. Expected an array with maximum length 4, but got an array with length {len(stop)} instead."
        )


def validate_chat_request(body: dict) -> dict:
    """
    Check a chat request as the API would and return what the worker
    receives: the request itself, every field passed through, with
    C{max_tokens} filled in from C{max_completion_tokens} for workers that
    only know the older name.
    """
    fields.get_string(body, "model")
    validate_messages(body.get("messages"))
    stream = fields.get_bool(body, "stream", False)
    validate_sampling(body)
    validate_stop(body)
    n = fields.get_int(body, "n", minimum=1, maximum=128)
    max_tokens = fields.get_int(body, "max_tokens", minimum=1)
    max_completion = fields.get_int(body, "max_completion_tokens", minimum=1)
    fields.get_bool(body, "logprobs")
    top_logprobs = fields.get_int(body, "top_logprobs", minimum=0, maximum=20)
    if top_logprobs is not None and not body.get("logprobs"):
        raise invalid_request(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when "
            "'top_logprobs' is used.",
            param="top_logprobs",
        )
    validate_logit_bias(body)
    validate_response_format(body)
    validate_tools(body)
    validate_stream_options(body, stream)
    data = dict(body)
    data["stream"] = stream
    if n is not None:
        data["n"] = n  # an int, even if it came as 2.0
    if max_tokens is None and max_completion is not None:
        data["max_tokens"] = max_completion
    return data


def validate_stream_options(body: dict, stream: bool) -> bool:
    """
    @return: whether the client asked for the final usage chunk.
    """
    options = fields.get_object(body, "stream_options")
    if options is None:
        return False
    if not stream:
        raise invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    return bool(fields.get_bool(options, "include_usage", prefix="stream_options."))


def validate_logit_bias(body: dict) -> None:
    bias = fields.get_object(body, "logit_bias")
    for key, value in (bias or {}).items():
        if not key.lstrip("-").isdigit():
            raise invalid_request(
                f"Invalid key in 'logit_bias': {key}. Keys must be token ids.",
                param="logit_bias",
            )
        if not fields.is_number(value) or not -100 <= value <= 100:
            raise invalid_request(
                f"Invalid value for 'logit_bias' key {key}: values must be numbers "
                "between -100 and 100.",
                param="logit_bias",
            )


def validate_response_format(body: dict, name: str = "response_format") -> None:
    fmt = fields.get_object(body, name)
    if fmt is None:
        return
    kind = fields.get_enum(fmt, "type", ("text", "json_object", "json_schema"), prefix=f"{name}.")
    if kind is None:
        raise fields.missing(f"{name}.type")
    if kind == "json_schema" and not isinstance(fmt.get("json_schema"), dict):
        raise fields.missing(f"{name}.json_schema")


def validate_tools(body: dict) -> None:
    tools = fields.get_list(body, "tools")
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict):
            raise fields.wrong_type(f"tools[{i}]", "an object", tool)
        if tool.get("type", "function") == "function":
            function = tool.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise fields.missing(f"tools[{i}].function.name")
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, (str, dict)):
        raise fields.wrong_type("tool_choice", "a string or an object", choice)
    if isinstance(choice, str) and choice not in ("none", "auto", "required"):
        raise fields.invalid_value(
            "tool_choice", f"value must be one of 'none', 'auto', 'required', but got '{choice}' instead."
        )


# Replies


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


def _stream_tool_calls(calls: list, offset: int) -> list[dict]:
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
    if collect:
        for choice in choices:
            choice.on_token = _ignore_token
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
                if not fields.is_int(index) or not 0 <= index < n:
                    raise worker_failed(f"The worker sent a chunk for choice {index!r}.")
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

    def receiver_for(fixed: Optional[Choice]) -> Callable[[Any], bool]:
        choice = fixed if fixed is not None else choices[0] if n == 1 else None
        general = receiver(fixed)
        return general if choice is None else token_receiver(choice, general)

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
    from twisted.internet.defer import FirstError

    if failure.check(FirstError):
        return failure.value.subFailure
    return failure


_MISSING = object()


async def usage_for(client: IWorkerClient, choices: list[Choice], text: str) -> dict:
    """
    The worker's own usage when it reported it for every call, else
    counted here: prompt tokens with the worker's tokenizer where it has
    one, completion tokens as the chunks it sent.
    """
    reported = [c.usage for c in choices if c.usage]
    if reported and len(reported) == len(choices):
        return make_usage(
            _count(reported[0], "prompt_tokens"),
            sum(_count(r, "completion_tokens") for r in reported),
        )
    prompt = await count_prompt_tokens(client, text)
    return make_usage(prompt, sum(len(c.parts) + len(c.tool_calls) for c in choices))


def _count(report: dict, key: str) -> int:
    value = report.get(key, 0)
    return value if fields.is_int(value) and value >= 0 else 0


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


class ChatCompletion:
    """
    One chat completion request, answered whole or streamed.
    """

    _include_usage = False

    def __init__(self, client: IWorkerClient, data: dict, model: str, created: int) -> None:
        self._client = client
        self._data = data
        self._model = model
        self._created = created
        self.id = new_id("chatcmpl-")

    async def complete(self) -> dict:
        choices = await run_choices(self._client, self._data, _ignore, collect=True)
        usage = await usage_for(self._client, choices, prompt_text(self._data["messages"]))
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
            "choices": [c.as_choice() for c in choices],
            "usage": usage,
            "service_tier": "default",
        }

    def _chunk(self, choices: list[dict], usage: Any = _MISSING) -> dict:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }
        if self._include_usage:
            chunk["usage"] = None if usage is _MISSING else usage
        return chunk

    def _content_template(self, index: int) -> tuple[bytes, bytes]:
        """
        The event for a content-only chunk of choice C{index}, split where
        its text goes.
        """
        marker = "\x00text\x00"
        choice = {"index": index, "delta": {"content": marker}, "logprobs": None, "finish_reason": None}
        event = b"data: " + dumps(self._chunk([choice])) + b"\n\n"
        head, tail = event.split(encode_string(marker).encode("utf-8"))
        return head, tail

    async def stream(self, events: Any) -> None:
        options = self._data.get("stream_options") or {}
        self._include_usage = bool(options.get("include_usage"))

        def token_writer(index: int) -> Callable[[str], None]:
            # Once per token: only the text changes, so it goes into
            # prepared bytes instead of a JSON encode.
            head, tail = self._content_template(index)
            write = events.write_raw

            def on_token(content: str) -> None:
                write(head + encode_string(content).encode("utf-8") + tail)

            return on_token

        def on_chunk(choice: Choice, chunk: dict) -> None:
            content = chunk.get("content")
            if (
                content
                and choice.on_token is not None
                and len(chunk) <= 2
                and chunk.get("finish_reason") is None
            ):
                choice.on_token(content)
                return
            delta: dict[str, Any] = {}
            if choice.on_token is None:
                # The choice's first event: once it is out, plain tokens
                # take the short path.
                choice.on_token = token_writer(choice.index)
                delta["role"] = "assistant"
                delta["content"] = ""
            if chunk.get("content"):
                delta["content"] = chunk["content"]
            calls = chunk.get("tool_calls")
            if isinstance(calls, list) and calls:
                delta["tool_calls"] = _stream_tool_calls(calls, len(choice.tool_calls) - len(calls))
            reason = finish_reason_of(chunk)
            logprobs = chunk.get("logprobs") if isinstance(chunk.get("logprobs"), dict) else None
            if not delta and reason is None and logprobs is None:
                return
            events.send(
                self._chunk(
                    [
                        {
                            "index": choice.index,
                            "delta": delta,
                            "logprobs": _stream_logprobs(logprobs),
                            "finish_reason": reason,
                        }
                    ]
                )
            )

        try:
            choices = await run_choices(self._client, self._data, on_chunk)
            if self._include_usage:
                usage = await usage_for(
                    self._client, choices, prompt_text(self._data["messages"])
                )
                events.send(self._chunk([], usage))
        except OpenAIError as error:
            if not events.started:
                raise
            events.send(error.to_dict())
            return
        events.done()


def _ignore(choice: Choice, chunk: dict) -> None:
    pass


def _ignore_token(content: str) -> None:
    pass


def _stream_logprobs(logprobs: Optional[dict]) -> Optional[dict]:
    if logprobs is None:
        return None
    return {"content": logprobs.get("content"), "refusal": None}
