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


def plan(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """
    The order in which to run inputs of these lengths: indices sorted
    longest first (the longest batch, the one most likely to run out of
    memory, fails first rather than last), cut into sub-batches whose
    padded size (inputs times the longest of them) stays within
    C{batch_tokens}. An input longer than the budget goes alone.
    """
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
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
