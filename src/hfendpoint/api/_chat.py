"""
Chat completions: the worker's chunks back to a C{chat.completion} body
or to C{chat.completion.chunk} events, and the endpoint that serves them.
The request is declared in L{hfendpoint.api._chat_request}.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from hfendpoint.api._chat_request import CHAT_REQUEST, worker_request
from hfendpoint.api._choices import (
    CALL,
    FINISH_REASONS,
    Choice,
    counted_usage,
    finish_reason_of,
    new_id,
    prompt_text,
    reported_usage,
    run_choices,
    stream_tool_calls,
)
from hfendpoint.api._contract import Schema, nullable, ref
from hfendpoint.api._endpoint import Context, Endpoint, Reply, Stream
from hfendpoint.api._sampling import USAGE
from hfendpoint.interfaces import IWorkerClient
from hfendpoint.web import dumps
from hfendpoint.web._json import encode_string

_MISSING = object()


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
        usage = reported_usage(choices) or await counted_usage(
            self._client, choices, prompt_text(self._data["messages"])
        )
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
                delta["tool_calls"] = stream_tool_calls(calls, len(choice.tool_calls) - len(calls))
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

        choices = await run_choices(self._client, self._data, on_chunk)
        if self._include_usage:
            usage = reported_usage(choices) or await counted_usage(
                self._client, choices, prompt_text(self._data["messages"])
            )
            events.send(self._chunk([], usage))


def _ignore(choice: Choice, chunk: dict) -> None:
    pass


def _stream_logprobs(logprobs: Optional[dict]) -> Optional[dict]:
    if logprobs is None:
        return None
    return {"content": logprobs.get("content"), "refusal": None}


async def serve(context: Context, body: dict, checked: dict) -> Reply:
    context.require(CALL)
    completion = ChatCompletion(context.client, worker_request(body, checked), context.model, context.created)
    if checked["stream"]:
        return Stream(completion.stream)
    return await completion.complete()


_TOOL_CALL: Schema = {
    "type": "object",
    "required": ["id", "type", "function"],
    "properties": {
        "index": {"type": "integer"},
        "id": {"type": "string"},
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name", "arguments"],
            "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
        },
    },
}

_HEAD: Schema = {
    "id": {"type": "string"},
    "created": {"type": "integer"},
    "model": {"type": "string"},
}

#: What the endpoint answers, for the OpenAPI document.
SCHEMAS: dict[str, Schema] = {
    "Usage": USAGE,
    "ToolCall": _TOOL_CALL,
    "ChatLogprobs": nullable(
        {"type": "object", "properties": {"content": {"type": ["array", "null"]}, "refusal": {"type": ["array", "null"]}}}
    ),
    "ChatCompletionMessage": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"const": "assistant"},
            "content": {"type": ["string", "null"]},
            "refusal": {"type": ["string", "null"]},
            "annotations": {"type": "array"},
            "tool_calls": {"type": "array", "items": ref("ToolCall")},
        },
    },
    "CreateChatCompletionResponse": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            **_HEAD,
            "object": {"const": "chat.completion"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "message", "logprobs", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer"},
                        "message": ref("ChatCompletionMessage"),
                        "logprobs": ref("ChatLogprobs"),
                        "finish_reason": {"enum": list(FINISH_REASONS)},
                    },
                },
            },
            "usage": ref("Usage"),
            "service_tier": {"type": "string"},
        },
    },
    "CreateChatCompletionStreamResponse": {
        "description": "One server-sent event of a streamed chat completion.",
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            **_HEAD,
            "object": {"const": "chat.completion.chunk"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "delta", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer"},
                        "delta": {
                            "type": "object",
                            "properties": {
                                "role": {"const": "assistant"},
                                "content": {"type": ["string", "null"]},
                                "tool_calls": {"type": "array", "items": ref("ToolCall")},
                            },
                        },
                        "logprobs": ref("ChatLogprobs"),
                        "finish_reason": {"enum": [*FINISH_REASONS, None]},
                    },
                },
            },
            "usage": nullable(ref("Usage")),
        },
    },
}

ENDPOINTS = (
    Endpoint(
        path="/v1/chat/completions",
        operation_id="createChatCompletion",
        summary="Chat completion, whole or streamed",
        body=CHAT_REQUEST,
        serve=serve,
        response="CreateChatCompletionResponse",
        events="CreateChatCompletionStreamResponse",
    ),
)
