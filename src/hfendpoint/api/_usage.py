"""
Token usage, from the worker when it reports it and counted otherwise.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from hfendpoint.errors import OpenAIError

_log = Logger()


def make_usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def count_prompt_tokens(client: Any, text: str) -> int:
    """
    Count with the worker's own tokenizer when its handshake says it has
    one; a worker that predates the handshake may never answer an unknown
    call, so then the words are counted instead.
    """
    if not text:
        return 0
    calls = client.info.calls
    if calls is not None and "tokenize" in calls:
        try:
            reply = await client.call("tokenize", {"input": [text]})
            return len(reply["tokens"][0])
        except (OpenAIError, KeyError, IndexError, TypeError):
            _log.failure("Counting prompt tokens with the worker failed; counting words")
    return len(text.split())
