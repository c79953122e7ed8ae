"""JSON and HTML answers every sandbox writes the same way.

Vendors send amounts as JSON numbers. ``json.dumps`` cannot write a ``Decimal`` as a number and
FastAPI's encoder would go through ``float``; ``dumps`` writes the decimal text verbatim (or as
the vendor's ``number`` function writes it), so a client's ``Decimal`` parsing is tested on
exact values. Each sandbox's own ``wire`` module keeps what is the vendor's: its number format,
error bodies, envelopes and pages.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from starlette.responses import Response


def exact_decimal(value: Decimal) -> str:
    """A ``Decimal`` as a JSON number, its text verbatim (``1234.50``)."""
    if not value.is_finite():
        raise ValueError(f"cannot write {value} as a JSON number")
    return format(value, "f")


def dumps(value: Any, number: Callable[[Decimal], str] = exact_decimal,
          floats: bool = False) -> str:
    """Serialise dicts, lists, str, int, bool, None and Decimal (with ``number``); floats only
    when ``floats`` (as ``json.dumps`` writes them)."""
    if value is None or isinstance(value, (bool, int, str)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Decimal):
        return number(value)
    if floats and isinstance(value, float):
        return json.dumps(value)
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k), ensure_ascii=False)}:{dumps(v, number, floats)}"
                 for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(v, number, floats) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def json_response(text: str, status_code: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    """An ``application/json`` answer of already serialised ``text``."""
    return Response(content=text.encode("utf-8"), status_code=status_code,
                    media_type="application/json", headers=headers)


def respond(payload: Any, status_code: int = 200,
            headers: dict[str, str] | None = None) -> Response:
    """``payload`` as JSON with decimals written verbatim."""
    return json_response(dumps(payload), status_code, headers)


def gateway_html(status: int) -> str:
    """What a load balancer in front of the vendor answers when the app behind it failed or
    timed out: HTML, not the vendor's JSON (``502``/``504`` knobs)."""
    reason = {502: "Bad Gateway", 504: "Gateway Time-out"}.get(status, "Error")
    return (f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
            f"<center><h1>{status} {reason}</h1></center>\r\n</body>\r\n</html>\r\n")


def gateway_page(status: int, headers: dict[str, str] | None = None) -> Response:
    """``gateway_html`` as the answer."""
    return Response(gateway_html(status), status_code=status, media_type="text/html",
                    headers=headers)
