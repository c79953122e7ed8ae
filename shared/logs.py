"""Structured logs: one line per event, its fields as key=value (or JSON with
``AIC_LOG_FORMAT=json``), the request's or task's ids on every line, secrets never printed.

    log = get_logger(__name__)
    log.info("export posted", export_id=..., attempt=2)

Fields given with ``extra=`` (the HTTP base's ``http.exchange``) are kept the same way. The API
binds ``request_id`` for each request (and answers it as ``X-Request-ID``); a job enqueued during
the request carries it to the worker, whose task lines carry ``request_id``, ``task_id`` and the
export (or unit) id (``worker.celery_app``).
"""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar, Token
from datetime import datetime, timezone
from typing import Any

from shared.config import get_settings

# Anything that looks like a credential is masked, even if a careless message includes it.
_SECRET_PATTERNS = [
    re.compile(r"(?i)(authorization:\s*)(bearer|basic)\s+\S+"),
    re.compile(r"(?i)((?:token|secret|password|api_key|consumer_token|employee_token)\"?\s*[=:]\s*\"?)[^\s\",&]+"),
    re.compile(r"aic_[A-Za-z0-9_\-]{20,}"),
    # The token in a webhook URL is the webhook's credential (uvicorn's access log prints paths).
    re.compile(r"(/webhooks/[A-Za-z0-9_\-]+/)[A-Za-z0-9_\-]+"),
]


# Every pattern above needs one of these words (any case): a line without them has nothing to
# mask, and most lines (ids, counts) skip the regular expressions (issue 12: redaction was a
# visible part of a worker's CPU per export).
_SECRET_HINTS = ("authorization", "token", "secret", "password", "api_key", "aic_", "/webhooks/")


def redact(text: str) -> str:
    # casefold, and the dotless i, cover every character the patterns' (?i) matches (checked
    # over all of Unicode by tests/unit/test_logs.py).
    folded = text.casefold().replace("\u0131", "i")
    if not any(hint in folded for hint in _SECRET_HINTS):
        return text
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:  # keep the label (group 1), mask the value after it
            text = pattern.sub(lambda m: m.group(1) + "***", text)
        else:
            text = pattern.sub("aic_***", text)
    return text


# --- context: ids every line of a request or a task carries ---------------------------------------

_context: ContextVar[dict[str, Any]] = ContextVar("aic_log_context", default={})


def bind_log_context(**fields: Any) -> Token:
    """Add ids (request_id, task_id, export_id...) to every line logged in this context until
    ``reset_log_context(token)``. A task's lines and an API request's lines carry them."""
    return _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


def reset_log_context(token: Token) -> None:
    _context.reset(token)


def log_context() -> dict[str, Any]:
    return dict(_context.get())


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "aic_fields", "aic_context", "color_message"}


def _fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The line's own fields (``log.info("x", export_id=...)`` or ``extra=``), then the context's
    ids it does not already name."""
    fields = dict(getattr(record, "aic_fields", None) or {})
    fields.update({k: v for k, v in vars(record).items()
                   if k not in _RECORD_ATTRIBUTES and not k.startswith("_")})
    for key, value in (getattr(record, "aic_context", None) or _context.get()).items():
        fields.setdefault(key, value)
    return fields


class RedactingFormatter(logging.Formatter):
    """Text: the format's line, then every field as key=value; secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields_of(record)
        if fields:
            head, sep, tail = line.partition("\n")  # fields before a traceback, not after it
            line = head + " " + " ".join(f"{k}={v}" for k, v in fields.items()) + sep + tail
        return redact(line)


class JsonFormatter(logging.Formatter):
    """``AIC_LOG_FORMAT=json``: one JSON object per line, every field kept; secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            **_fields_of(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class _ContextFilter(logging.Filter):
    """Stamps the context's ids on the record where it is made (a handler may format it on
    another thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "aic_context"):
            record.aic_context = _context.get()
        return True


def _our_formatter(fmt: str | None = None) -> logging.Formatter:
    if get_settings().log_format == "json":
        return JsonFormatter()
    return RedactingFormatter(fmt or "%(asctime)s %(levelname)s %(name)s %(message)s")


class _RedactingWrapper(logging.Formatter):
    """Masks secrets in what another formatter (uvicorn's, with its own fields) produces."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def redact_handlers_of(*logger_names: str) -> None:
    """Mask secrets in the output of handlers other code attached to these loggers (uvicorn's
    access log does not propagate to the root handler)."""
    for name in logger_names:
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler.formatter, (RedactingFormatter, _RedactingWrapper,
                                                  JsonFormatter)):
                handler.setFormatter(_RedactingWrapper(handler.formatter or logging.Formatter()))


class KeyValueLogger(logging.LoggerAdapter):
    """``log.info("export posted", export_id=..., attempt=2)``: the keywords are the line's
    fields (key=value in text, keys in JSON)."""

    def process(self, msg, kwargs):
        fields = {k: kwargs.pop(k) for k in list(kwargs)
                  if k not in ("exc_info", "stack_info", "stacklevel", "extra")}
        if fields:
            kwargs["extra"] = {**kwargs.get("extra", {}), "aic_fields": fields}
        return msg, kwargs


def get_logger(name: str) -> KeyValueLogger:
    return KeyValueLogger(logging.getLogger(name), {})


def configure_logging() -> None:
    # uvicorn configured its loggers before it imported the app; they keep their own handlers.
    redact_handlers_of("uvicorn.access", "uvicorn.error")
    root = logging.getLogger()
    if getattr(root, "_aic_configured", False):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(_our_formatter())
    handler.addFilter(_ContextFilter())
    root.handlers = [handler]
    root.setLevel(get_settings().log_level)
    quiet_library_loggers()
    root._aic_configured = True  # type: ignore[attr-defined]


def quiet_library_loggers() -> None:
    """httpx logs every request at INFO ("HTTP Request: ..."); our HTTP base logs each exchange
    with its fields (``http.exchange``, DEBUG), so the API and the worker keep httpx to warnings:
    a line per request cost a worker CPU for every export (issue 12)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


def install_redaction_on_existing_handlers() -> None:
    """Celery installs its own handlers; give them our formatter (its format kept in text), so
    secrets are masked, fields and the task's ids shown, and JSON used when asked for."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, (RedactingFormatter, JsonFormatter)):
            fmt = handler.formatter._fmt if handler.formatter else "%(message)s"  # noqa: SLF001
            handler.setFormatter(_our_formatter(fmt))
        if not any(isinstance(f, _ContextFilter) for f in handler.filters):
            handler.addFilter(_ContextFilter())
