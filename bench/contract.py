"""
What checking a request costs: the declared contract (hfendpoint.api's
bodies) against the hand-written validators it replaced, side by side in
one process, on typical chat and embeddings bodies. Schema libraries are
measured too when they are importable (pydantic, msgspec), checking the
same fields and bounds, for comparison only.

    python bench/contract.py                 # before = the last commit with the old validators
    python bench/contract.py --before REF    # any commit that has them

The old validators are read from git (REF's src/hfendpoint, imported
under another name), so nothing needs to be checked out.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional, Union

ROOT = Path(__file__).resolve().parent.parent
OLD_VALIDATORS = "src/hfendpoint/api/_fields.py"

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]

BODIES: dict[str, dict] = {
    "chat, 2 messages": {
        "model": "m",
        "messages": MESSAGES,
        "temperature": 0.7,
        "max_tokens": 128,
        "stream": True,
        "stream_options": {"include_usage": True},
    },
    "chat, 40 messages + tools": {
        "model": "m",
        "messages": [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"Turn {i} of a long conversation."}
            for i in range(40)
        ],
        "tools": [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {}}} for i in range(4)],
        "tool_choice": "auto",
        "top_p": 0.9,
        "n": 1,
    },
    "embeddings, 16 texts": {"model": "m", "input": [f"sentence number {i} to embed" for i in range(16)]},
    "embeddings, 64x256 token ids": {
        "model": "m",
        "input": [[(i * 7 + j) % 50000 for j in range(256)] for i in range(64)],
        "encoding_format": "base64",
    },
}


def old_ref() -> str:
    """
    HEAD if it still has the old validators, else the parent of the
    commit that removed them.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()

    found = subprocess.run(["git", "cat-file", "-e", f"HEAD:{OLD_VALIDATORS}"], cwd=ROOT, capture_output=True)
    if found.returncode == 0:
        return "HEAD"
    return git("rev-list", "-1", "HEAD", "--", OLD_VALIDATORS) + "^"


def import_old(ref: str, into: str) -> Any:
    """
    REF's hfendpoint package, extracted into C{into} and renamed
    C{hfendpoint_before} so that it imports beside the current one.
    """
    archive = subprocess.run(["git", "archive", ref, "src/hfendpoint"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
    package = Path(into, "hfendpoint_before")
    Path(into, "src", "hfendpoint").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\bhfendpoint(?=[. ])", "hfendpoint_before", text))
    sys.path.insert(0, into)
    import hfendpoint_before.api._chat as chat
    import hfendpoint_before.api._embeddings as embeddings

    return chat, embeddings


def pydantic_checkers() -> Optional[dict[str, Callable[[dict], Any]]]:
    try:
        from pydantic import BaseModel, ConfigDict, Field
    except ImportError:
        return None

    class Message(BaseModel):
        model_config = ConfigDict(extra="allow")
        role: Literal["system", "developer", "user", "assistant", "tool", "function"]
        content: Union[str, list, None] = None

    class Chat(BaseModel):
        model_config = ConfigDict(extra="allow")
        model: Optional[str] = None
        messages: Annotated[list[Message], Field(min_length=1)]
        stream: Optional[bool] = False
        temperature: Optional[Annotated[float, Field(ge=0, le=2)]] = None
        top_p: Optional[Annotated[float, Field(ge=0, le=1)]] = None
        n: Optional[Annotated[int, Field(ge=1, le=128)]] = None
        max_tokens: Optional[Annotated[int, Field(ge=1)]] = None
        tools: Optional[list[dict]] = None
        tool_choice: Union[str, dict, None] = None
        stream_options: Optional[dict] = None

    token = Annotated[int, Field(ge=0, le=2**32 - 1)]

    class Embeddings(BaseModel):
        model_config = ConfigDict(extra="allow")
        model: Optional[str] = None
        input: Union[str, list[str], list[token], list[list[token]]]
        encoding_format: Optional[Literal["float", "base64"]] = "float"
        dimensions: Optional[Annotated[int, Field(ge=1)]] = None

    return {"chat": Chat.model_validate, "embeddings": Embeddings.model_validate}


def msgspec_checkers() -> Optional[dict[str, Callable[[dict], Any]]]:
    try:
        import msgspec
        from msgspec import Meta
    except ImportError:
        return None

    class Message(msgspec.Struct, forbid_unknown_fields=False):
        role: Literal["system", "developer", "user", "assistant", "tool", "function"]
        content: Union[str, list, None] = None

    class Chat(msgspec.Struct, forbid_unknown_fields=False):
        messages: Annotated[list[Message], Meta(min_length=1)]
        model: Optional[str] = None
        stream: Optional[bool] = False
        temperature: Optional[Annotated[float, Meta(ge=0, le=2)]] = None
        top_p: Optional[Annotated[float, Meta(ge=0, le=1)]] = None
        n: Optional[Annotated[int, Meta(ge=1, le=128)]] = None
        max_tokens: Optional[Annotated[int, Meta(ge=1)]] = None
        tools: Optional[list[dict]] = None
        tool_choice: Union[str, dict, None] = None
        stream_options: Optional[dict] = None

    token = Annotated[int, Meta(ge=0, le=2**32 - 1)]

    class Embeddings(msgspec.Struct, forbid_unknown_fields=False):
        # msgspec takes one array type in a union: a list of texts or
        # token lists, mixed (which the API refuses) included.
        input: Union[str, list[Union[str, list[token]]]]
        model: Optional[str] = None
        encoding_format: Optional[Literal["float", "base64"]] = "float"
        dimensions: Optional[Annotated[int, Meta(ge=1)]] = None

    def convert(kind: type) -> Callable[[dict], Any]:
        return lambda body: msgspec.convert(body, kind)

    return {"chat": convert(Chat), "embeddings": convert(Embeddings)}


def per_call(checks: dict[str, Callable[[dict], Any]], body: dict, repeat: int) -> dict[str, float]:
    """
    The best of C{repeat} runs of each check, in microseconds per call;
    the checks take turns, so that a busy machine slows them alike.
    """
    number = max(1, int(20000 / (1 + len(repr(body)) / 200)))
    best = {name: float("inf") for name in checks}
    for _ in range(repeat):
        for name, check in checks.items():
            seconds = timeit.timeit(lambda: check(body), number=number)
            best[name] = min(best[name], seconds / number * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="a commit with the old validators (default: found in git)")
    parser.add_argument("--repeat", type=int, default=7)
    options = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from hfendpoint.api import _chat_request as chat_request
    from hfendpoint.api import _embeddings as embeddings

    with tempfile.TemporaryDirectory() as into:
        old_chat, old_embeddings = import_old(options.before or old_ref(), into)
        contenders: dict[str, dict[str, Callable[[dict], Any]]] = {
            "before": {"chat": old_chat.validate_chat_request, "embeddings": old_embeddings.validate_request},
            "declared": {"chat": chat_request.read_request, "embeddings": embeddings.read_request},
        }
        for name, make in (("pydantic", pydantic_checkers), ("msgspec", msgspec_checkers)):
            checkers = make()
            if checkers is not None:
                contenders[name] = checkers
        print(f"python {sys.version.split()[0]}, pid {os.getpid()}; microseconds per body, best of {options.repeat}")
        print(f"{'body':32}" + "".join(f"{name:>12}" for name in contenders) + f"{'declared/before':>17}")
        for label, body in BODIES.items():
            kind = label.split(",")[0]
            row = per_call({name: checkers[kind] for name, checkers in contenders.items()}, body, options.repeat)
            ratio = row["declared"] / row["before"]
            print(f"{label:32}" + "".join(f"{row[name]:12.2f}" for name in contenders) + f"{ratio:17.2f}")


if __name__ == "__main__":
    main()
