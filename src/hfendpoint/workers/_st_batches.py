"""
What the sentence-transformers worker checks and plans before touching
the model: the token lists of an C{embeddings} call, and how they are cut
into sub-batches. Plain Python, so that it is cheap to test.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any, Optional

from hfendpoint import WorkerError

_INTS = {int}


def texts(data: Any) -> list[str]:
    """
    The strings of a C{tokenize} call.

    @raise WorkerError: if C{input} is not a list of strings.
    """
    value = data.get("input") if isinstance(data, dict) else None
    if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
        raise WorkerError("input must be a list of strings")
    return value


def token_lists(data: Any, vocabulary: Optional[int] = None) -> list[list[int]]:
    """
    The token lists of an C{embeddings} call, checked as a whole first (a
    batch holds thousands of ids) and item by item only to name the
    culprit.

    @param vocabulary: how many token ids the model knows, if known: an id
        beyond it would fail deep inside the model's embedding layer.
    @raise WorkerError: naming the first bad item.
    """
    rows = data.get("input") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise WorkerError("input must be a list of token id lists")
    if rows and set(map(type, rows)) == {list} and all(rows):
        ids = list(chain.from_iterable(rows))
        if set(map(type, ids)) == _INTS and 0 <= min(ids) and (
            vocabulary is None or max(ids) < vocabulary
        ):
            return rows
    for index, row in enumerate(rows):
        check_row(index, row, vocabulary)
    return rows


def check_row(index: int, row: Any, vocabulary: Optional[int]) -> None:
    if not isinstance(row, list) or not all(
        type(token) is int for token in row
    ):
        raise WorkerError(f"input {index} must be a list of token ids (integers)")
    if not row:
        raise WorkerError(f"input {index} is empty")
    if min(row) < 0:
        raise WorkerError(f"input {index} has a negative token id ({min(row)})")
    if vocabulary is not None and max(row) >= vocabulary:
        raise WorkerError(
            f"input {index} has token id {max(row)}, outside the model's "
            f"vocabulary (ids 0 to {vocabulary - 1})"
        )


def truncate(rows: list[list[int]], limit: Optional[int]) -> list[list[int]]:
    """
    Each list cut to the model's C{limit} tokens, as they are: no special
    token is added or kept at the end, since token ids are taken as the
    exact input the client wants the model to see.
    """
    if limit is None:
        return rows
    return [row if len(row) <= limit else row[:limit] for row in rows]


def plan(lengths: Sequence[int], batch_tokens: int, overhead: Optional[float] = None) -> list[list[int]]:
    """
    The order in which to run inputs of these lengths: indices sorted
    longest first (the longest batch, the one most likely to run out of
    memory, fails first rather than last), cut into sub-batches whose
    padded size (inputs times the longest of them) stays within
    C{batch_tokens}. An input longer than the budget goes alone.

    Without C{overhead}, each sub-batch is filled as far as the budget
    allows. With it (the fixed cost of one forward pass, counted in padded
    tokens), the cuts are those that make the least work in all: padded
    tokens plus C{overhead} per forward pass (L{buckets}), so that rows of
    10 tokens are not padded to 30 when a pass of their own costs less.
    """
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    if overhead is not None:
        return [[order[i] for i in range(start, end)] for start, end in buckets([lengths[i] for i in order], batch_tokens, overhead)]
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted longest first: the first of a batch is its longest.
        if current and (len(current) + 1) * lengths[current[0]] > batch_tokens:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def buckets(lengths: Sequence[int], batch_tokens: int, overhead: float) -> list[tuple[int, int]]:
    """
    Cut C{lengths}, sorted longest first, into runs C{(start, end)} that
    cost the least: each run costs C{overhead} plus its rows times its
    first (longest) row, and a run over C{batch_tokens} padded tokens is cut
    into as many passes as it needs, each paying C{overhead}.

    Cutting inside a stretch of equal lengths never saves padding (the
    rows could join the next run at the same cost), so cuts are looked
    for only where the length changes: a dynamic program over those
    places, quadratic in the number of distinct lengths, not of rows.
    """
    n = len(lengths)
    if not n:
        return []
    bounds = [0] + [i for i in range(1, n) if lengths[i] != lengths[i - 1]] + [n]
    m = len(bounds) - 1

    def cost(a: int, b: int) -> float:
        rows = bounds[b] - bounds[a]
        width = lengths[bounds[a]]
        per_pass = max(1, batch_tokens // width)
        return -(-rows // per_pass) * overhead + rows * width

    best = [0.0] + [float("inf")] * m
    cut = [0] * (m + 1)
    for b in range(1, m + 1):
        for a in range(b):
            total = best[a] + cost(a, b)
            if total < best[b]:
                best[b], cut[b] = total, a
    runs: list[tuple[int, int]] = []
    b = m
    while b:
        a = cut[b]
        runs.append((bounds[a], bounds[b]))
        b = a
    runs.reverse()
    out: list[tuple[int, int]] = []
    for start, end in runs:
        per_pass = max(1, batch_tokens // lengths[start])
        # Passes of even size rather than full ones and a remainder.
        passes = -(-(end - start) // per_pass)
        size = -(-(end - start) // passes)
        out += [(i, min(end, i + size)) for i in range(start, end, size)]
    return out
