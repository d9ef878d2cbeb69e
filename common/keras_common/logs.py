"""structlog set-up for the operator, the trainer and the model server: JSON in containers,
readable on a terminal."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Literal

import structlog


class _Stream:
    """Looks up sys.stdout / sys.stderr at each write, so a replaced stream (tests, the CLI) is honoured."""

    def __init__(self, name: str) -> None:
        self.name = name

    def write(self, text: str) -> int:
        return int(getattr(sys, self.name).write(text))

    def flush(self) -> None:
        getattr(sys, self.name).flush()

    def isatty(self) -> bool:
        return bool(getattr(sys, self.name).isatty())


def configure(
    fmt: str | None = None,
    level: str | None = None,
    stream: Literal["stdout", "stderr"] = "stdout",
    stdlib: bool = False,
) -> None:
    """`fmt` is json, console or auto (console on a terminal, JSON otherwise); `stdlib` also renders
    the standard logging records of libraries (kopf, aiohttp) the same way."""
    out = _Stream(stream)
    fmt = (fmt or os.environ.get("KERAS_OPERATOR_LOG_FORMAT") or "auto").lower()
    level_name = (level or os.environ.get("KERAS_OPERATOR_LOG_LEVEL") or "info").upper()
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level_name)),
        logger_factory=structlog.PrintLoggerFactory(out),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    if stdlib:
        handler = logging.StreamHandler(out)  # type: ignore[arg-type]
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processor=renderer,
                foreign_pre_chain=[
                    structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                ],
            )
        )
        root = logging.getLogger()
        # Replace plain stream handlers (kopf's own); keep subclasses such as test log capture.
        root.handlers = [h for h in root.handlers if type(h) is not logging.StreamHandler] + [handler]
        root.setLevel(level_name)
