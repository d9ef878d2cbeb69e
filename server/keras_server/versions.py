"""Which numbered versions to serve, and what labels name: TF Serving's version policy. Pure functions.

`latest:N` serves the N highest versions, `all` every one, `specific:A,B` those listed (when present).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal

PolicyKind = Literal["latest", "all", "specific"]
LABEL = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class VersionPolicy:
    kind: PolicyKind = "latest"
    count: int = 1  # latest:N
    versions: frozenset[int] = frozenset()  # specific:A,B

    def select(self, available: Iterable[int]) -> set[int]:
        """The versions to serve among those present."""
        present = sorted(set(available))
        if self.kind == "all":
            return set(present)
        if self.kind == "specific":
            return set(present) & self.versions
        return set(present[-self.count :])

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(str(v) for v in sorted(self.versions))
        return "all"


def version_number(text: str) -> int:
    """A version as TF Serving numbers them: a non-negative whole number (no sign, no spaces)."""
    if not text.isdecimal() or not text.isascii():
        raise ValueError(f"a version is a non-negative whole number, got {text!r}")
    return int(text)


def parse_policy(text: str) -> VersionPolicy:
    """`latest:N`, `all` or `specific:A,B`; ValueError says what is expected."""
    kind, _, arg = text.strip().partition(":")
    if kind == "all" and not arg:
        return VersionPolicy("all")
    try:
        if kind == "latest":
            count = version_number(arg)
            if count < 1:
                raise ValueError("latest:N needs N >= 1")
            return VersionPolicy("latest", count=count)
        if kind == "specific":
            versions = frozenset(version_number(v.strip()) for v in arg.split(","))
            return VersionPolicy("specific", versions=versions)
    except ValueError as exc:
        raise ValueError(f"--model-versions {text!r}: {exc}") from None
    raise ValueError(f"--model-versions must be latest:N, all or specific:A,B[,...]; got {text!r}")


def parse_labels(items: Iterable[str]) -> dict[str, int]:
    """`NAME=VERSION` items -> {name: version}; a name given twice is a mistake, not an override."""
    labels: dict[str, int] = {}
    for item in items:
        name, sep, version = item.partition("=")
        name = name.strip()
        if not sep or not LABEL.fullmatch(name):
            raise ValueError(f"--version-label must be NAME=VERSION (NAME of letters, digits, _ . -); got {item!r}")
        if name in labels:
            raise ValueError(f"--version-label {name!r} is given twice")
        try:
            labels[name] = version_number(version.strip())
        except ValueError as exc:
            raise ValueError(f"--version-label {item!r}: {exc}") from None
    return labels


def to_retire(wanted: Collection[int], available: Collection[int]) -> list[int]:
    """Loaded versions to unload: those the policy no longer wants, once a wanted one serves.

    Until a wanted version is available (still loading, or it failed to load), the old ones stay: a
    broken new version must not leave the model with nothing to serve.
    """
    if not any(v in wanted for v in available):
        return []
    return sorted(v for v in available if v not in wanted)
