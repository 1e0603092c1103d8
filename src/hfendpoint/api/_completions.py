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

from hfendpoint.api._choices import CALL, Choice, counted_usage, finish_reason_of, new_id, reported_usage, run_choices
from hfendpoint.api._completions_request import COMPLETION_REQUEST, completion_request
from hfendpoint.api._contract import Schema, nullable, ref
from hfendpoint.api._wording import is_number
from hfendpoint.api._endpoint import Context, Endpoint, Reply, Stream
from hfendpoint.api._sampling import USAGE
from hfendpoint.api._usage import make_usage
from hfendpoint.interfaces import IWorkerClient

FINISH_REASONS = ("stop", "length", "content_filter")


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
            out["token_logprobs"].append(logprob if is_number(logprob) else 0.0)
            out["top_logprobs"].append(
                {
                    top["token"]: top["logprob"]
                    for top in entry.get("top_logprobs") or ()
                    if isinstance(top, dict)
                    and isinstance(top.get("token"), str)
                    and is_number(top.get("logprob"))
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
            usage = reported_usage(choices) or await counted_usage(self._client, choices, text)
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

        runs = await self._run(on_chunk)
        if include_usage:
            events.send(self._body([], usage=await self._usage(runs)))


async def serve(context: Context, body: dict, checked: dict) -> Reply:
    context.require(CALL)
    completion = Completion(context.client, completion_request(body, checked), context.model, context.created)
    if checked["stream"]:
        return Stream(completion.stream)
    return await completion.complete()


SCHEMAS: dict[str, Schema] = {
    "Usage": USAGE,
    "CompletionLogprobs": nullable(
        {
            "type": "object",
            "properties": {
                "tokens": {"type": "array", "items": {"type": "string"}},
                "token_logprobs": {"type": "array", "items": {"type": "number"}},
                "top_logprobs": {
                    "type": "array",
                    "items": {"type": "object", "additionalProperties": {"type": "number"}},
                },
                "text_offset": {"type": "array", "items": {"type": "integer"}},
            },
        }
    ),
    "CreateCompletionResponse": {
        "description": (
            "A completion; streamed, each server-sent event is one of these, "
            "with a null `finish_reason` until the choice ends."
        ),
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "text_completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["text", "index", "logprobs", "finish_reason"],
                    "properties": {
                        "text": {"type": "string"},
                        "index": {"type": "integer"},
                        "logprobs": ref("CompletionLogprobs"),
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
        path="/v1/completions",
        operation_id="createCompletion",
        summary="Legacy text completion, whole or streamed",
        body=COMPLETION_REQUEST,
        serve=serve,
        response="CreateCompletionResponse",
        events="CreateCompletionResponse",
    ),
)
