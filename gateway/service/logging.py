"""structlog set-up: JSON in production, readable console on a terminal.

Request context (partner, message id, agreement) is bound with
``structlog.contextvars`` so that every line of a request carries it.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["auto", "json", "console"]


def configure(fmt: LogFormat = "auto", level: str = "INFO", *, cache: bool = False) -> None:
    """Configure structlog and the standard library's root logger.

    ``cache``: each logger keeps the configuration of its first use (faster; for the
    long-running ``serve``). Off for the short commands, so that a later configure
    (or a test capturing logs in the same process) still reaches every logger.
    """
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=cache,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")


bind = structlog.contextvars.bind_contextvars


bound = structlog.contextvars.bound_contextvars


clear = structlog.contextvars.clear_contextvars
