"""structlog set-up shared by the trainer and the model server: JSON in containers, readable on a terminal."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog


def configure(fmt: str | None = None, level: str | None = None, stream: TextIO | None = None) -> None:
    """`fmt` is json, console or auto (console on a terminal, JSON otherwise)."""
    stream = stream or sys.stdout
    fmt = (fmt or os.environ.get("KERAS_OPERATOR_LOG_FORMAT") or "auto").lower()
    level_name = (level or os.environ.get("KERAS_OPERATOR_LOG_LEVEL") or "info").upper()
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
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
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
