"""
The Responses API on the worker's C{chat_completions} call: C{input} and
C{instructions} become chat messages, and the chunks become a response
object or the Responses event sequence.
"""

from __future__ import annotations

from typing import Any, Optional

from attrs import frozen

from hfendpoint.api._choices import CALL, Choice, counted_usage, new_id, prompt_text, reported_usage, run_choices
from hfendpoint.api._contract import Body, Boolean, Components, Field, Integer, Refused, Schema, String, ref
from hfendpoint.api._wording import invalid_value, missing, not_one_of, shown, wrong_type
from hfendpoint.api._endpoint import Context, Endpoint, Reply, Stream
from hfendpoint.api._sampling import SAMPLING
from hfendpoint.errors import OpenAIError, invalid_request
from hfendpoint.interfaces import IWorkerClient

_TEXT_PARTS = ("input_text", "output_text", "text")
ROLES = ("user", "assistant", "system", "developer")


def _content_text(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise wrong_type(f"{where}.content", "a string or an array", content)
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid_request(
                f"Invalid '{where}.content[{j}]': each content part must be an object with a 'type'.",
                param=f"{where}.content[{j}]",
            )
        if part["type"] in _TEXT_PARTS:
            if not isinstance(part.get("text"), str):
                raise missing(f"{where}.content[{j}].text")
            parts.append({"type": "text", "text": part["text"]})
        else:
            parts.append(part)
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


@frozen(kw_only=True)
class Input(Field):
    """
    C{input} as chat messages: a string is one user message; a list holds
    messages (C{{"role", "content"}}, with or without C{"type": "message"}).
    """

    required: bool = True

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if isinstance(value, str):
            return [{"role": "user", "content": value}]
        if not isinstance(value, list):
            raise wrong_type(label, "a string or an array", value)
        if not value:
            raise invalid_value(label, "empty array. Expected an array with minimum length 1.")
        messages = []
        for i, item in enumerate(value):
            where = f"{label}[{i}]"
            if not isinstance(item, dict):
                raise wrong_type(where, "an object", item)
            kind = item.get("type", "message")
            if not isinstance(kind, str):
                raise wrong_type(f"{where}.type", "a string", kind)
            if kind != "message":
                raise invalid_request(
                    f"Invalid '{where}.type': input items of type {shown(kind)} are not supported; use messages.",
                    param=f"{where}.type",
                    code="unsupported_value",
                )
            role = item.get("role")
            if role not in ROLES:
                raise not_one_of(f"{where}.role", ROLES, shown(role))
            if item.get("content") is None:
                raise missing(f"{where}.content")
            messages.append({"role": role, "content": _content_text(item["content"], where)})
        return messages

    def type_schema(self, components: Components) -> Schema:
        components["InputContentPart"] = {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"type": "string"}},
            "if": {"properties": {"type": {"enum": list(_TEXT_PARTS)}}},
            "then": {"required": ["text"], "properties": {"text": {"type": "string"}}},
        }
        components["InputMessage"] = {
            "type": "object",
            "required": ["role", "content"],
            "properties": {
                "type": {"const": "message"},
                "role": {"enum": list(ROLES)},
                "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": ref("InputContentPart")}]},
            },
        }
        return {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": ref("InputMessage")}]}


RESPONSE_REQUEST = Body(
    "CreateResponse",
    {
        "model": String(),
        "instructions": String(),
        "input": Input(),
        "stream": Boolean(default=False),
        **SAMPLING,
        "max_output_tokens": Integer(minimum=16, saturate=True),
        "previous_response_id": Refused(
            message="'previous_response_id' is not supported: this server does not store responses."
        ),
    },
)

#: What the response object describes itself, rather than the worker.
_NOT_FOR_THE_WORKER = ("input", "instructions", "max_output_tokens", "text", "tools", "tool_choice")


def worker_request(body: dict, checked: dict) -> dict:
    """
    The request as the worker's chat call receives it.
    """
    messages = checked["input"]
    if checked["instructions"]:
        messages.insert(0, {"role": "system", "content": checked["instructions"]})
    data = {k: v for k, v in RESPONSE_REQUEST.forwarded(body, checked).items() if k not in _NOT_FOR_THE_WORKER}
    data["messages"] = messages
    data["stream"] = checked["stream"]
    if checked["max_output_tokens"] is not None:
        data["max_tokens"] = checked["max_output_tokens"]
    return data


def read_request(body: dict) -> dict:
    return worker_request(body, RESPONSE_REQUEST.validate(body))


class Responder:
    """
    One Responses API request.
    """

    def __init__(self, client: IWorkerClient, body: dict, data: dict, model: str, created: int) -> None:
        self._client = client
        self._body = body
        self._data = data
        self._model = model
        self._created = created
        self.id = new_id("resp_")
        self.item_id = new_id("msg_")
        self._sequence = 0

    def _response(self, status: str, output: list, usage: Optional[dict] = None, error: Optional[dict] = None, reason: Optional[str] = None) -> dict:
        body = self._body
        response: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self._created,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": reason} if reason else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": self._model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "metadata": body.get("metadata") or {},
        }
        if usage is not None:
            response["usage"] = usage
        if isinstance(body.get("user"), str):
            response["user"] = body["user"]
        return response

    def _message(self, text: str, status: str) -> dict:
        return {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [_text_part(text)] if status != "in_progress" else [],
        }

    async def _usage(self, choice: Choice) -> dict:
        usage = reported_usage([choice]) or await counted_usage(
            self._client, [choice], prompt_text(self._data["messages"])
        )
        return {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["total_tokens"],
        }

    async def _final(self, choice: Choice) -> dict:
        status, reason = _status(choice.finish_reason)
        item_status = "completed" if status == "completed" else "incomplete"
        return self._response(
            status, [self._message(choice.text, item_status)], await self._usage(choice), reason=reason
        )

    async def complete(self) -> dict:
        data = dict(self._data, n=1)
        [choice] = await run_choices(self._client, data, lambda c, ch: None)
        response = await self._final(choice)
        response["output_text"] = choice.text
        return response

    def _send(self, events: Any, kind: str, **payload: Any) -> None:
        event = {"type": kind, "sequence_number": self._sequence, **payload}
        self._sequence += 1
        events.send(event, event=kind)

    async def stream(self, events: Any) -> None:
        data = dict(self._data, n=1)
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        opened = []

        def open_stream() -> None:
            opened.append(True)
            self._send(events, "response.created", response=self._response("in_progress", []))
            self._send(events, "response.in_progress", response=self._response("in_progress", []))
            self._send(events, "response.output_item.added", output_index=0, item=self._message("", "in_progress"))
            self._send(events, "response.content_part.added", part=_text_part(""), **where)

        def on_chunk(choice: Choice, chunk: dict) -> None:
            if not opened:
                open_stream()
            if chunk.get("content"):
                self._send(events, "response.output_text.delta", delta=chunk["content"], logprobs=[], **where)

        [choice] = await run_choices(self._client, data, on_chunk)
        if not opened:
            open_stream()
        final = await self._final(choice)
        text = choice.text
        item = final["output"][0]
        self._send(events, "response.output_text.done", text=text, logprobs=[], **where)
        self._send(events, "response.content_part.done", part=_text_part(text), **where)
        self._send(events, "response.output_item.done", output_index=0, item=item)
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        self._send(events, kind, response=final)

    def fail(self, events: Any, error: OpenAIError) -> None:
        """
        A stream that has started ends as the Responses API ends a failed
        one: the response, failed, then an C{error} event.
        """
        detail = {"code": "server_error", "message": error.message}
        self._send(events, "response.failed", response=self._response("failed", [], error=detail))
        self._send(
            events,
            "error",
            code=error.code,
            message=error.message,
            param=error.param,
            error=error.to_dict()["error"],
        )


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _status(finish_reason: Optional[str]) -> tuple[str, Optional[str]]:
    if finish_reason == "length":
        return "incomplete", "max_output_tokens"
    if finish_reason == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


async def serve(context: Context, body: dict, checked: dict) -> Reply:
    context.require(CALL)
    # The response echoes the request: its integers as checked.
    echoed = RESPONSE_REQUEST.forwarded(body, checked)
    responder = Responder(context.client, echoed, worker_request(body, checked), context.model, context.created)
    if checked["stream"]:
        return Stream(responder.stream, responder.fail)
    return await responder.complete()


_COUNT = {"type": "integer", "minimum": 0}

SCHEMAS: dict[str, Schema] = {
    "Response": {
        "type": "object",
        "required": ["id", "object", "created_at", "status", "model", "output"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "response"},
            "created_at": {"type": "integer"},
            "status": {"enum": ["completed", "incomplete", "failed", "in_progress"]},
            "error": {"type": ["object", "null"]},
            "incomplete_details": {"type": ["object", "null"]},
            "model": {"type": "string"},
            "output": {"type": "array", "items": {"type": "object"}},
            "output_text": {"type": "string"},
            "usage": {
                "type": "object",
                "required": ["input_tokens", "output_tokens", "total_tokens"],
                "properties": {"input_tokens": _COUNT, "output_tokens": _COUNT, "total_tokens": _COUNT},
            },
        },
    },
    "ResponseStreamEvent": {
        "description": "One server-sent event of a streamed response.",
        "type": "object",
        "required": ["type", "sequence_number"],
        "properties": {
            "type": {"type": "string"},
            "sequence_number": {"type": "integer", "minimum": 0},
            "response": ref("Response"),
        },
    },
}

ENDPOINTS = (
    Endpoint(
        path="/v1/responses",
        operation_id="createResponse",
        summary="Responses API, whole or streamed",
        body=RESPONSE_REQUEST,
        serve=serve,
        response="Response",
        events="ResponseStreamEvent",
    ),
)
