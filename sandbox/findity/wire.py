"""JSON with exact decimal numbers, as Findity sends amounts (``1000.00``, not ``"1000.00"``).

``json.dumps`` cannot write a ``Decimal`` as a number, and FastAPI's encoder turns it into a
float. Amounts must reach the client as the exact text ``1234.50`` so the tests can prove the
client parses numbers without float error; this small encoder writes them verbatim.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from starlette.responses import Response


def dumps(value: Any) -> str:
    """Serialise dicts, lists, strings, ints, bools, None and Decimals (as JSON numbers)."""
    if value is None or isinstance(value, (bool, int, str)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"cannot write {value} as a JSON number")
        return format(value, "f")
    if isinstance(value, float):
        return json.dumps(value)
    if isinstance(value, dict):
        items = (f"{json.dumps(str(key), ensure_ascii=False)}:{dumps(item)}"
                 for key, item in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def respond(payload: Any, status_code: int = 200,
            headers: dict[str, str] | None = None) -> Response:
    return Response(
        content=dumps(payload).encode("utf-8"),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


def error(status_code: int, code: str, message: str,
          headers: dict[str, str] | None = None) -> Response:
    """Findity's error body ``{"code", "message"}`` [doc names, assumed body]."""
    return respond({"code": code, "message": message}, status_code, headers)
