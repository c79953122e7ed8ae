"""JSON with exact decimal numbers, as Findity sends amounts (``1000.00``, not ``"1000.00"``).

``json.dumps`` cannot write a ``Decimal`` as a number, and FastAPI's encoder turns it into a
float. Amounts must reach the client as the exact text ``1234.50`` so the tests can prove the
client parses numbers without float error; ``sandbox.wire`` writes them verbatim.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from sandbox import wire


def dumps(value: Any) -> str:
    """Serialise dicts, lists, strings, ints, bools, None, floats and Decimals (as JSON
    numbers)."""
    return wire.dumps(value, floats=True)


def respond(payload: Any, status_code: int = 200,
            headers: dict[str, str] | None = None) -> Response:
    return wire.json_response(dumps(payload), status_code, headers)


def error(status_code: int, code: str, message: str,
          headers: dict[str, str] | None = None) -> Response:
    """Findity's error body ``{"code", "message"}`` [doc names, assumed body]."""
    return respond({"code": code, "message": message}, status_code, headers)
