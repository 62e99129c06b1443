"""Logging setup (structlog). Secrets are never passed to loggers; personal data (emails,
phone numbers) is pseudonymised with a keyed HMAC before it is logged."""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys

import structlog


def configure(level: str = "info", json: bool = False) -> None:
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=level.upper())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )


def pseudonym(secret: bytes, value: str) -> str:
    """A stable, non-reversible stand-in for an email address or phone number in logs."""
    return "pii_" + hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()[:16]
