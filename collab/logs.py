"""Logging for ``collab serve``: plain text for people, or one JSON object per line for log
platforms (Cloud Logging, Loki, Elasticsearch…), and routine lines demoted to DEBUG.

Lines about a connection carry its document and connection id: the transport sets them in a
context variable for the task that serves the connection, so anything logged while handling
that connection's messages (the room's lines included) is attributed without passing ids
around.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

TRACE = 5

_connection: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "collab_connection", default=None)

HEALTH_PATHS = ("/liveness_check", "/readiness_check", "/metrics")
ROUTINE_UVICORN_LINES = ("connection open", "connection closed")
"""uvicorn logs each WebSocket at INFO; a busy server opens thousands."""

_SEVERITY = {"WARNING": "WARNING", "ERROR": "ERROR", "CRITICAL": "CRITICAL", "INFO": "INFO",
             "DEBUG": "DEBUG", "TRACE": "DEBUG"}


@contextmanager
def connection(document: str, connection_id: str) -> Iterator[None]:
    """Attribute every line logged inside to this document and connection."""
    token = _connection.set((document, connection_id))
    try:
        yield
    finally:
        _connection.reset(token)


def set_connection(document: str, connection_id: str) -> None:
    """The same, for the rest of the current task (a connection's own task)."""
    _connection.set((document, connection_id))


class _Context(logging.Filter):
    """Copies the connection's ids onto the record; demotes routine lines to DEBUG and drops
    them below the configured level (the record was created at INFO, so it got this far)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        current = _connection.get()
        if current is not None and not hasattr(record, "document"):
            record.document, record.connection = current
        if record.levelno == logging.INFO and _routine(record):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        elif record.levelno == logging.DEBUG and _frame_level(record):
            record.levelno, record.levelname = TRACE, "TRACE"
        return record.levelno >= self.level


def _frame_level(record: logging.LogRecord) -> bool:
    """The WebSocket library's line per frame and header ("< BINARY …", "> upgrade: …")."""
    return record.name == "uvicorn.error" and str(record.msg)[:2] in ("< ", "> ", "= ", "% ")


def _routine(record: logging.LogRecord) -> bool:
    if record.name == "uvicorn.access":  # args: client, method, path, HTTP version, status
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            path, status = str(args[2]).split("?", 1)[0], args[4]
            return path in HEALTH_PATHS or (isinstance(status, int) and status < 400)
        return False
    if record.name == "uvicorn.error":
        message = record.getMessage()
        return message in ROUTINE_UVICORN_LINES or message.endswith("[accepted]")
    return False


class JsonFormatter(logging.Formatter):
    """``{"time", "severity", "message", "logger"[, "document", "connection"]}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "severity": _SEVERITY.get(record.levelname, record.levelname),
            "message": record.getMessage(),
            "logger": _logger_name(record),
        }
        for key in ("document", "connection"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["message"] = f"{entry['message']}\n{self.formatException(record.exc_info)}"
        return json.dumps(entry, ensure_ascii=False)


def _logger_name(record: logging.LogRecord) -> str:
    """uvicorn logs everything that is not an access line as "uvicorn.error"."""
    return "uvicorn" if record.name == "uvicorn.error" else record.name


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(logger)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.logger = _logger_name(record)
        text = super().format(record)
        document = getattr(record, "document", None)
        if document is not None:
            text += f" [document={document!r} connection={getattr(record, 'connection', '')}]"
        return text


def configure(level: str, log_format: str = "text") -> None:
    """One handler on stderr for everything, uvicorn's loggers included (they propagate to it:
    uvicorn is started without a logging config of its own)."""
    logging.addLevelName(TRACE, "TRACE")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_Context(numeric))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(numeric)
