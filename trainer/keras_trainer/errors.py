"""Failures the user can fix, each tied to the spec field that caused it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SpecError(Exception):
    """A problem with one field of the resource; str() is the one line users see."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def suggestion(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class TransientError(Exception):
    """A failure that may pass on its own (network, object storage): the trainer exits with 1 and the Job
    retries the pod. str() is the one line users see."""
