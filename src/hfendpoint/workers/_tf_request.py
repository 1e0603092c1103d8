"""
A C{chat_completions} request read into what generation needs: the
conversation in the shape chat templates expect, the tools, and the
sampling settings, each checked so that a bad value is a L{InvalidRequest}
naming it rather than a failure deep inside the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from hfendpoint import InvalidRequest

#: Roles that chat templates know, for the OpenAI roles that they do not.
ROLE_NAMES = {"developer": "system", "function": "tool"}
ROLES = ("system", "user", "assistant", "tool")
TEXT_PARTS = ("text", "input_text", "output_text")
#: The most choices one call may ask for.
MAX_CHOICES = 128


@dataclass
class ChatRequest:
    """
    @ivar max_tokens: the most tokens to generate per choice, or L{None}
        for as many as the context has room for.
    @ivar temperature: L{None} for the model's default; 0 for greedy.
    @ivar seed: L{None} for a fresh random seed.
    @ivar logit_bias: token id to the bias added to its logit.
    """

    messages: list[dict[str, Any]]
    tools: Optional[list[dict[str, Any]]] = None
    n: int = 1
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def number(data: dict[str, Any], key: str, low: float, high: float) -> Optional[float]:
    value = data.get(key)
    if value is None:
        return None
    if not is_number(value) or not low <= value <= high:
        raise InvalidRequest(f"{key} must be a number from {low:g} to {high:g}")
    return float(value)


def token_limit(data: dict[str, Any]) -> Optional[int]:
    """
    The most tokens the client will take; the newer OpenAI name wins.
    """
    for key in ("max_completion_tokens", "max_tokens"):
        value = data.get(key)
        if value is None:
            continue
        if not is_integer(value) or value < 0:
            raise InvalidRequest(f"{key} must be a non-negative integer")
        return value
    return None


def stop_strings(data: dict[str, Any]) -> list[str]:
    stop = data.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise InvalidRequest("stop must be a string or a list of strings")


def logit_bias(data: dict[str, Any], vocabulary: int) -> dict[int, float]:
    bias = data.get("logit_bias")
    if bias is None:
        return {}
    if not isinstance(bias, dict):
        raise InvalidRequest("logit_bias must be a map of token ids to numbers")
    out = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise InvalidRequest(f"logit_bias: {key!r} is not a token id") from None
        if not 0 <= token < vocabulary:
            raise InvalidRequest(f"logit_bias: token {token} is not in the vocabulary")
        if not is_number(value) or not -100 <= value <= 100:
            raise InvalidRequest(f"logit_bias: the bias of token {token} must be from -100 to 100")
        out[token] = float(value)
    return out


def content_text(content: Any, index: int) -> Optional[str]:
    """
    The text of a message's content, which may be a list of parts: this
    worker serves text models, so a part that is not text is refused
    rather than silently dropped.
    """
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"messages[{index}].content must be a string or a list of parts")
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") in TEXT_PARTS:
            if not isinstance(part.get("text"), str):
                raise InvalidRequest(f"messages[{index}]: a text part needs its text")
            texts.append(part["text"])
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise InvalidRequest(f"messages[{index}]: this model takes text only, not {kind!r} parts")
    return "\n".join(texts)


def template_tool_calls(calls: Any) -> list[dict[str, Any]]:
    """
    An assistant message's tool calls as templates read them: the
    arguments as a map (OpenAI sends a JSON string; templates such as
    Qwen's write them out with C{tojson}).
    """
    out = []
    for call in calls if isinstance(calls, list) else []:
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            continue
        function = dict(call["function"])
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                function["arguments"] = json.loads(arguments)
            except ValueError:
                pass
        out.append({**call, "type": call.get("type", "function"), "function": function})
    return out


def template_message(message: Any, index: int) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise InvalidRequest(f"messages[{index}] must be a map")
    role = message.get("role")
    role = ROLE_NAMES.get(role, role) if isinstance(role, str) else role
    if role not in ROLES:
        raise InvalidRequest(f"messages[{index}].role must be one of {', '.join(ROLES)}")
    out: dict[str, Any] = {"role": role, "content": content_text(message.get("content"), index)}
    if role != "assistant" and out["content"] is None:
        out["content"] = ""
    for key in ("name", "tool_call_id"):
        if isinstance(message.get(key), str):
            out[key] = message[key]
    if role == "assistant" and message.get("tool_calls"):
        out["tool_calls"] = template_tool_calls(message["tool_calls"])
    return out


def request_tools(data: dict[str, Any]) -> Optional[list[dict[str, Any]]]:
    """
    The function tools, as OpenAI sends them (templates take that shape);
    none with C{tool_choice: none}, since then no call may be made.
    """
    tools = data.get("tools")
    if tools is None or data.get("tool_choice") == "none":
        return None
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be a list")
    functions = [
        tool
        for tool in tools
        if isinstance(tool, dict)
        and tool.get("type", "function") == "function"
        and isinstance(tool.get("function"), dict)
    ]
    return functions or None


def read_request(data: Any, vocabulary: int) -> ChatRequest:
    """
    @param vocabulary: the model's vocabulary size, to check C{logit_bias}.
    @raise InvalidRequest: for anything the model cannot be asked.
    """
    if not isinstance(data, dict):
        raise InvalidRequest("the request must be a map")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list")
    n = data.get("n", 1)
    n = 1 if n is None else n
    if not is_integer(n) or not 1 <= n <= MAX_CHOICES:
        raise InvalidRequest(f"n must be an integer from 1 to {MAX_CHOICES}")
    seed = data.get("seed")
    if seed is not None and not is_integer(seed):
        raise InvalidRequest("seed must be an integer")
    return ChatRequest(
        messages=[template_message(m, i) for i, m in enumerate(messages)],
        tools=request_tools(data),
        n=n,
        max_tokens=token_limit(data),
        temperature=number(data, "temperature", 0, 2),
        top_p=number(data, "top_p", 0, 1),
        stop=stop_strings(data),
        seed=seed,
        presence_penalty=number(data, "presence_penalty", -2, 2) or 0.0,
        frequency_penalty=number(data, "frequency_penalty", -2, 2) or 0.0,
        logit_bias=logit_bias(data, vocabulary),
    )
