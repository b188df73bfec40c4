"""How the ``unidb`` command logs: one line per lifecycle event of unidb's own, libraries
only when they warn, and JSON lines for a log collector.

``--log-level`` sets unidb's own loggers; libraries (Alembic, FAISS, httpx, uvicorn's
access log, sentence-transformers) stay at WARNING unless it is ``debug``, where every
logger speaks."""

from __future__ import annotations

import logging
import sys
import time
from typing import Literal

from unidb.errors import InvalidInput

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# uvicorn configures these itself when it starts a server; unidb hands them its level
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class _UnidbHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure`` installs (and replaces when called again); handlers others
    installed (a test runner's capture, say) stay."""


def configure(level: str = "info", log_format: LogFormat = "text") -> None:
    """Libraries at WARNING (every logger at DEBUG with ``level`` debug), the ``unidb``
    loggers at ``level``, every line to stderr as text or as one JSON object; Python's
    warnings go the same way."""
    level, log_format = level.lower(), log_format.lower()  # type: ignore[assignment]
    if level not in ("debug", "info", "warning", "error"):
        raise InvalidInput(
            f"log level {level!r}: give debug, info, warning or error", field="log_level"
        )
    if log_format not in ("text", "json"):
        raise InvalidInput(f"log format {log_format!r}: give text or json", field="log_format")
    own = logging.getLevelNamesMapping()[level.upper()]
    handler = _UnidbHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for existing in [h for h in root.handlers if isinstance(h, _UnidbHandler)]:
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.getLevelNamesMapping()[library_level(level).upper()])
    logging.getLogger("unidb").setLevel(own)
    logging.captureWarnings(True)


def formatter(log_format: LogFormat) -> logging.Formatter:
    chosen: logging.Formatter
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        chosen = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
            datefmt="%Y-%m-%dT%H:%M:%SZ",
        )
    else:
        chosen = logging.Formatter(TEXT_FORMAT)
    chosen.converter = time.gmtime  # times in UTC, whatever the machine's zone
    return chosen


def library_level(level: str) -> str:
    """The level libraries log at under unidb's ``level``: WARNING, or unidb's own when
    that is quieter (error) or louder (debug)."""
    return level if level in ("debug", "error") else "warning"


def uvicorn_log_config(level: str) -> dict[str, object]:
    """uvicorn's logging, routed to the root handler: its error and access logs at
    WARNING, or at DEBUG when ``level`` is debug."""
    library = library_level(level).upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            name: {"level": library, "handlers": [], "propagate": True} for name in UVICORN_LOGGERS
        },
    }
