"""Structured logs (shared/logs.py): fields kept in text and JSON, ids of the context on every
line, secrets masked either way."""

from __future__ import annotations

import json
import logging

from shared.logs import (
    JsonFormatter,
    RedactingFormatter,
    _ContextFilter,
    bind_log_context,
    get_logger,
    reset_log_context,
)


def _capture(formatter: logging.Formatter):
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(formatter)
    handler.addFilter(_ContextFilter())
    logger = logging.getLogger("aic.test.logs")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.DEBUG)
    return logger, lines


def test_json_lines_keep_every_field_the_context_and_mask_secrets():
    logger, lines = _capture(JsonFormatter())
    token = bind_log_context(request_id="req-1", export_id="exp_xp_1")
    try:
        get_logger("aic.test.logs").info("voucher posted token=abc123", voucher_id=42,
                                         export_id="exp_xp_1")
        # Fields given with extra= (the HTTP base's exchange line) are kept too.
        logger.info("http.exchange", extra={"status": 503, "path": "/v2/ledger/voucher"})
    finally:
        reset_log_context(token)
    logger.info("after the request")
    first, second, third = (json.loads(line) for line in lines)
    assert first["message"] == "voucher posted token=***"
    assert (first["voucher_id"], first["export_id"], first["request_id"]) == (42, "exp_xp_1",
                                                                               "req-1")
    assert (second["status"], second["path"], second["request_id"]) == (503, "/v2/ledger/voucher",
                                                                         "req-1")
    assert "request_id" not in third


def test_text_lines_show_fields_as_key_value_before_a_traceback():
    logger, lines = _capture(RedactingFormatter("%(levelname)s %(message)s"))
    token = bind_log_context(task_id="t-9")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            get_logger("aic.test.logs").exception("export failed", export_id="exp_xp_2")
    finally:
        reset_log_context(token)
    head, *trace = lines[0].splitlines()
    assert head == "ERROR export failed export_id=exp_xp_2 task_id=t-9"
    assert trace[0].startswith("Traceback") and "ValueError: boom" in trace[-1]


def test_the_api_answers_with_a_request_id_and_keeps_a_sane_one():
    from fastapi.testclient import TestClient

    from producers.api.app import create_app

    with TestClient(create_app()) as client:
        generated = client.get("/healthz").headers["X-Request-ID"]
        kept = client.get("/healthz", headers={"X-Request-ID": "trace-7"}).headers["X-Request-ID"]
        replaced = client.get("/healthz", headers={"X-Request-ID": "a b\x01"}).headers[
            "X-Request-ID"]
    assert len(generated) == 32 and kept == "trace-7" and replaced not in ("a b\x01", generated)


def test_the_quick_check_before_redaction_misses_nothing_the_patterns_would_mask():
    """``redact`` skips its regular expressions on lines without a hint word (issue 12). Every
    character the patterns' case-insensitive letters match must fold to a hint's letter, or a
    secret spelled with such a character would be printed."""
    import re
    import sys

    from shared.logs import _SECRET_HINTS, redact

    letters = {c for hint in _SECRET_HINTS for c in hint if c.isalpha()}
    for letter in letters:
        pattern = re.compile("(?i)" + letter)
        for code in range(sys.maxunicode + 1):
            char = chr(code)
            if pattern.fullmatch(char):
                assert letter in char.casefold().replace("\u0131", "i"), (letter, hex(code))
    assert redact("api_key=abc") == "api_key=***"
    assert redact("\u0131") == "\u0131"
    assert redact("AP\u0131_KEY=abc") == "AP\u0131_KEY=***"
    assert "xyz" not in redact("Authorization: Bearer xyz")
    assert redact("export started export_id=exp_1 attempt=1") == (
        "export started export_id=exp_1 attempt=1")
