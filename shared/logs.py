"""Structured logs: one line per event, ids bound as key=value, secrets never printed.

    log = get_logger(__name__)
    log.info("export posted", export_id=..., attempt=2)
"""

from __future__ import annotations

import logging
import re

from shared.config import get_settings

# Anything that looks like a credential is masked, even if a careless message includes it.
_SECRET_PATTERNS = [
    re.compile(r"(?i)(authorization:\s*)(bearer|basic)\s+\S+"),
    re.compile(r"(?i)((?:token|secret|password|api_key|consumer_token|employee_token)\"?\s*[=:]\s*\"?)[^\s\",&]+"),
    re.compile(r"aic_[A-Za-z0-9_\-]{20,}"),
    # The token in a webhook URL is the webhook's credential (uvicorn's access log prints paths).
    re.compile(r"(/webhooks/[A-Za-z0-9_\-]+/)[A-Za-z0-9_\-]+"),
]


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:  # keep the label (group 1), mask the value after it
            text = pattern.sub(lambda m: m.group(1) + "***", text)
        else:
            text = pattern.sub("aic_***", text)
    return text


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


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
            if not isinstance(handler.formatter, (RedactingFormatter, _RedactingWrapper)):
                handler.setFormatter(_RedactingWrapper(handler.formatter or logging.Formatter()))


class KeyValueLogger(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k not in ("exc_info", "stack_info", "stacklevel", "extra")}
        if fields:
            msg = f"{msg} " + " ".join(f"{k}={v}" for k, v in fields.items())
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
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.handlers = [handler]
    root.setLevel(get_settings().log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    root._aic_configured = True  # type: ignore[attr-defined]


def install_redaction_on_existing_handlers() -> None:
    """Celery installs its own handlers; wrap their formatters so secrets are masked there too."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            fmt = handler.formatter._fmt if handler.formatter else "%(message)s"  # noqa: SLF001
            handler.setFormatter(RedactingFormatter(fmt))
