"""
From generated token ids to the text a client may see: decoding one
token at a time, cutting at a stop string, and taking tool calls out.

Nothing here knows torch or the model; the tokenizer is only asked to
decode.
"""

from __future__ import annotations

import json
import os
import random
import re
from typing import Any, Optional, Sequence

#: Where a Hermes-style tool call starts (Qwen2.5, Hermes, and many
#: others): C{<tool_call>{"name": ..., "arguments": {...}}</tool_call>}.
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)
# Malformed characters at the end of a piece: the rest of a multi-byte
# character is still to come in the next token.
REPLACEMENT = "\ufffd"

_ids = random.Random(os.urandom(16))


class Detokenizer:
    """
    Decode tokens as they come, each time only the text that became
    final: a token may end in the middle of a character (byte-level
    vocabularies) or change how the one before it reads (SentencePiece's
    spaces), so the last few tokens are decoded again together with the
    new one and only the difference is given out.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> str:
        """
        @return: the text that C{token} completed, maybe empty.
        """
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        text = self._decode(self.ids[self.prefix :])
        if len(text) > len(before) and not text.endswith(REPLACEMENT):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(before) :]
        return ""

    def flush(self) -> str:
        """
        @return: whatever was held back, once no token will follow.
        """
        before = self._decode(self.ids[self.prefix : self.read])
        text = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return text[len(before) :] if len(text) > len(before) else ""


def held_suffix(text: str, markers: Sequence[str]) -> int:
    """
    @return: the length of the longest end of C{text} that begins one of
        C{markers} without being all of it: text that must wait for the
        next token to tell whether a marker is being written.
    """
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if marker.startswith(text[-size:]):
                longest = size
                break
    return longest


class TextFilter:
    """
    The generated text of one choice, and how much of it may be sent yet.

    Text that may be the start of a stop string is held back until the
    next token tells; the text returned never includes a stop string nor
    anything after it. With tools, a tool call (C{<tool_call>}, or a reply
    that is one JSON object) is held back to the end, to be parsed whole
    into C{tool_calls} rather than streamed as text.

    @ivar stopped: a stop string was written: the choice is over.
    """

    def __init__(self, stop: Sequence[str] = (), tools: bool = False) -> None:
        self.stop = [s for s in stop if s]
        self.tools = tools
        self.text = ""
        self.sent = 0
        self.stopped = False
        #: Where held-back tool call text starts, once one began.
        self.tool_start: Optional[int] = None

    def feed(self, piece: str) -> str:
        """
        Take the next piece of text.

        @return: the text that may be sent now.
        """
        if self.stopped or not piece:
            return ""
        self.text += piece
        end = len(self.text)
        for stop in self.stop:
            found = self.text.find(stop, self.sent)
            if found != -1 and found < end:
                end = found
                self.stopped = True
        if self.stopped:
            self.text = self.text[:end]
        else:
            end -= held_suffix(self.text, self.stop)
        if self.tools:
            end = min(end, self._tool_boundary())
        return self._send_until(end)

    def _tool_boundary(self) -> int:
        if self.tool_start is None:
            if not self.text[: self.sent].strip() and self.text.lstrip()[:1] in ("{", "["):
                self.tool_start = self.sent
            else:
                found = self.text.find(TOOL_CALL_OPEN, self.sent)
                if found != -1:
                    self.tool_start = found
        if self.tool_start is not None:
            return self.tool_start
        return len(self.text) - held_suffix(self.text, [TOOL_CALL_OPEN])

    def _send_until(self, end: int) -> str:
        if end <= self.sent:
            return ""
        text = self.text[self.sent : end]
        self.sent = end
        return text

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """
        The end of the choice: what was held back, and the tool calls.

        @return: the text still to send, and the calls parsed (empty when
            the held-back text did not read as tool calls, which is then
            sent as text).
        """
        calls: list[dict[str, Any]] = []
        if self.tool_start is not None:
            calls, rest = parse_tool_calls(self.text[self.tool_start :])
            if calls:
                self.text = self.text[: self.tool_start] + rest
        return self._send_until(len(self.text)), calls


def tool_call(value: Any) -> Optional[dict[str, Any]]:
    """
    An OpenAI tool call from a parsed C{{"name", "arguments"}} (or Llama's
    C{"parameters"}), or L{None} if C{value} is not one.
    """
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {
        "id": "call_%024x" % _ids.getrandbits(96),
        "type": "function",
        "function": {"name": value["name"], "arguments": arguments},
    }


def parse_tool_calls(text: str) -> tuple[list[dict[str, Any]], str]:
    """
    Read tool calls from the held-back end of a reply: C{<tool_call>}
    blocks, or the whole of it being one JSON call or a list of calls.

    @return: the calls and the text around them; no calls if any part
        does not parse, since then the model did not write a tool call.
    """
    if TOOL_CALL_OPEN in text:
        calls = []
        for match in TOOL_CALL.finditer(text):
            try:
                call = tool_call(json.loads(match.group(1)))
            except ValueError:
                return [], text
            if call is None:
                return [], text
            calls.append(call)
        rest = TOOL_CALL.sub("", text)
        return calls, rest if rest.strip() else ""
    try:
        value = json.loads(text)
    except ValueError:
        return [], text
    values = value if isinstance(value, list) else [value]
    parsed = [tool_call(item) for item in values]
    if not parsed or any(call is None for call in parsed):
        return [], text
    return [call for call in parsed if call is not None], ""
