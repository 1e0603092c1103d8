"""
Legacy completions (C{POST /v1/completions}) on the worker's
C{chat_completions} call, so that a chat worker serves them unchanged.

Each prompt becomes one chat call whose messages are a single user
message holding the prompt; the call also carries C{prompt} itself (for
a worker that would rather complete raw text) and every other field of
the request. The replies become C{text_completion} objects, whole or as
a stream of them. With several prompts, the choices of prompt C{p} are
numbered C{p * n} to C{p * n + n - 1}, as the API does.

C{logprobs} (an integer here) reaches the worker as it is, plus
C{top_logprobs} with the same number for a chat worker; the chat-shaped
log probabilities a worker sends back (C{{"content": [{"token",
"logprob", "top_logprobs"}]}}) become the completions shape (C{tokens},
C{token_logprobs}, C{top_logprobs}, C{text_offset}).

Token-array prompts are refused: the protocol has no call that turns
token ids back into text for a chat worker.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, FirstError, gatherResults

from hfendpoint.api import _fields as fields
from hfendpoint.api._chat import (
    Choice,
    finish_reason_of,
    new_id,
    run_choices,
    usage_for,
    validate_logit_bias,
    validate_sampling,
    validate_stop,
    validate_stream_options,
)
from hfendpoint.errors import OpenAIError, invalid_request
from hfendpoint.interfaces import IWorkerClient
from hfendpoint.api._usage import make_usage

#: What the API does without C{max_tokens}.
DEFAULT_MAX_TOKENS = 16
FINISH_REASONS = ("stop", "length", "content_filter")
MAX_LOGPROBS = 5


def parse_prompt(value: Any) -> list[str]:
    """
    C{prompt} as a list of texts.

    @raise OpenAIError: a 400 for a missing or empty prompt, a wrong type,
        or token ids.
    """
    if value is None:
        raise fields.missing("prompt")
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise fields.wrong_type("prompt", "a string or an array of strings", value)
    if not value:
        raise fields.invalid_value(
            "prompt", "empty array. Expected an array with minimum length 1, but got an empty array instead."
        )
    if all(isinstance(p, str) for p in value):
        return value
    if all(fields.is_int(p) for p in value) or all(
        isinstance(p, list) and all(fields.is_int(t) for t in p) for p in value
    ):
        raise invalid_request(
            "Invalid 'prompt': token-id prompts are not supported by this server; "
            "send the prompt as a string or an array of strings.",
            param="prompt",
            code="unsupported_value",
        )
    raise fields.wrong_type("prompt", "a string or an array of strings", value)


def validate_request(body: dict) -> dict:
    """
    Check a completions request as the API would.

    @return: C{prompts}, C{n}, C{stream}, C{echo}, C{logprobs} (the
        number asked for, or C{None}), C{include_usage}, and C{data}: the
        worker's request without its per-prompt fields.
    """
    fields.get_string(body, "model")
    prompts = parse_prompt(body.get("prompt"))
    fields.get_string(body, "suffix")  # accepted, and left to the worker
    stream = fields.get_bool(body, "stream", False)
    echo = fields.get_bool(body, "echo", False)
    validate_sampling(body)
    validate_stop(body)
    validate_logit_bias(body)
    n = fields.get_int(body, "n", 1, minimum=1, maximum=128)
    best_of = fields.get_int(body, "best_of", minimum=0, maximum=20)
    if best_of is not None and best_of != n:
        raise invalid_request(
            f"Invalid 'best_of': this server returns every completion it generates, "
            f"so 'best_of' must equal 'n' ({n}) or be left out; got {best_of}.",
            param="best_of",
            code="unsupported_value",
        )
    max_tokens = fields.get_int(body, "max_tokens", DEFAULT_MAX_TOKENS, minimum=0)
    logprobs = fields.get_int(body, "logprobs", minimum=0, maximum=MAX_LOGPROBS)
    include_usage = validate_stream_options(body, stream)
    data = dict(body)
    data["stream"] = stream
    data["n"] = n
    data["max_tokens"] = max_tokens
    if logprobs is not None:
        data["logprobs"] = logprobs
        if "top_logprobs" not in data:
            # A chat worker's name for the number of alternatives.
            data["top_logprobs"] = logprobs
    return {
        "prompts": prompts,
        "n": n,
        "stream": stream,
        "echo": echo,
        "logprobs": logprobs,
        "include_usage": include_usage,
        "data": data,
    }


def worker_request(data: dict, prompt: str) -> dict:
    """
    What the worker receives for one prompt.
    """
    return dict(data, prompt=prompt, messages=[{"role": "user", "content": prompt}])


def finish_reason(reason: Optional[str]) -> Optional[str]:
    """
    A chat finish reason as a completion's: tool calls end the text too.
    """
    if reason is None:
        return None
    return reason if reason in FINISH_REASONS else "stop"


class _Offsets:
    """
    The running C{text_offset} of one choice's tokens.
    """

    def __init__(self, start: int) -> None:
        self.next = start

    def legacy(self, entries: list) -> dict:
        """
        Chat-style logprob entries (C{token}, C{logprob}, C{top_logprobs})
        in the completions shape.
        """
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            token = entry.get("token")
            token = token if isinstance(token, str) else ""
            logprob = entry.get("logprob")
            out["tokens"].append(token)
            out["token_logprobs"].append(logprob if fields.is_number(logprob) else 0.0)
            out["top_logprobs"].append(
                {
                    top["token"]: top["logprob"]
                    for top in entry.get("top_logprobs") or ()
                    if isinstance(top, dict)
                    and isinstance(top.get("token"), str)
                    and fields.is_number(top.get("logprob"))
                }
            )
            out["text_offset"].append(self.next)
            self.next += len(token)
        return out


class Completion:
    """
    One completions request, answered whole or streamed.
    """

    def __init__(self, client: IWorkerClient, request: dict, model: str, created: int) -> None:
        self._client = client
        self._request = request
        self._model = model
        self._created = created
        self.id = new_id("cmpl-")

    def _echo(self, prompt: str) -> str:
        return prompt if self._request["echo"] else ""

    async def _run(self, on_chunk: Callable[[int, Choice, dict], None]) -> list[tuple[str, list[Choice]]]:
        """
        Run every prompt's worker calls at once; C{on_chunk} gets each
        chunk with the choice's index in the whole response.

        @return: each prompt with its finished choices.
        """
        request = self._request
        n = request["n"]

        def run(position: int, prompt: str) -> Deferred:
            first = position * n
            return Deferred.fromCoroutine(
                run_choices(
                    self._client,
                    worker_request(request["data"], prompt),
                    lambda choice, chunk: on_chunk(first + choice.index, choice, chunk),
                )
            )

        calls = [run(p, prompt) for p, prompt in enumerate(request["prompts"])]
        try:
            results = await gatherResults(calls, consumeErrors=True)
        except FirstError as e:
            for call in calls:
                call.cancel()  # the other prompts' work is wasted now
            e.subFailure.raiseException()
        return list(zip(request["prompts"], results))

    async def _usage(self, runs: list[tuple[str, list[Choice]]]) -> dict:
        prompt = completion = 0
        for text, choices in runs:
            usage = await usage_for(self._client, choices, text)
            prompt += usage["prompt_tokens"]
            completion += usage["completion_tokens"]
        return make_usage(prompt, completion)

    def _body(self, choices: list[dict], **extra: Any) -> dict:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self._created,
            "model": self._model,
            "choices": choices,
            **extra,
        }

    def _logprobs(self, offsets: _Offsets, entries: Optional[list]) -> Optional[dict]:
        if self._request["logprobs"] is None or entries is None:
            return None
        return offsets.legacy(entries)

    async def complete(self) -> dict:
        runs = await self._run(lambda index, choice, chunk: None)
        n = self._request["n"]
        out = []
        for position, (prompt, choices) in enumerate(runs):
            echoed = self._echo(prompt)
            for choice in choices:
                out.append(
                    {
                        "text": echoed + choice.text,
                        "index": position * n + choice.index,
                        "logprobs": self._logprobs(_Offsets(len(echoed)), choice.logprobs),
                        "finish_reason": finish_reason(choice.finish_reason) or "stop",
                    }
                )
        return self._body(out, usage=await self._usage(runs))

    async def stream(self, events: Any) -> None:
        request = self._request
        include_usage = request["include_usage"]
        extra: dict[str, Any] = {"usage": None} if include_usage else {}
        n = request["n"]
        offsets: dict[int, _Offsets] = {}

        def on_chunk(index: int, choice: Choice, chunk: dict) -> None:
            text = chunk.get("content") or ""
            if index not in offsets:
                echoed = self._echo(request["prompts"][index // n])
                offsets[index] = _Offsets(len(echoed))
                text = echoed + text
            logprobs = chunk.get("logprobs")
            entries = logprobs.get("content") if isinstance(logprobs, dict) else None
            entries = entries if isinstance(entries, list) else None
            reason = finish_reason(finish_reason_of(chunk))
            if not text and reason is None and not entries:
                return
            events.send(
                self._body(
                    [
                        {
                            "text": text,
                            "index": index,
                            "logprobs": self._logprobs(offsets[index], entries),
                            "finish_reason": reason,
                        }
                    ],
                    **extra,
                )
            )

        try:
            runs = await self._run(on_chunk)
            if include_usage:
                events.send(self._body([], usage=await self._usage(runs)))
        except OpenAIError as error:
            if not events.started:
                raise
            events.send(error.to_dict())
            return
        events.done()
