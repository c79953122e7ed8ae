"""JSON and HTML answers every sandbox writes the same way.

Vendors send amounts as JSON numbers. ``json.dumps`` cannot write a ``Decimal`` as a number and
FastAPI's encoder would go through ``float``; ``dumps`` writes the decimal text verbatim (or as
the vendor's ``number`` function writes it), so a client's ``Decimal`` parsing is tested on
exact values. ``CutOffAnswer`` and ``Stamp`` are the plumbing of answers cut off on purpose
and of headers stamped on every answer. Each sandbox's own ``wire`` module keeps what is the vendor's: its number format,
error bodies, envelopes and pages.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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


class CutOffAnswer(Response):
    """The status line and headers of a JSON answer, then nothing: the endpoint returns without
    the body and uvicorn closes the connection. The client sees the connection lost mid-answer
    (httpx: RemoteProtocolError), which says nothing about what the server did."""

    def __init__(self, promised_bytes: int, status_code: int) -> None:
        super().__init__(status_code=status_code, media_type="application/json")
        self.headers["content-length"] = str(promised_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})


class Stamp:
    """The server-wide latency of API requests (paths starting ``api_prefix``) and the headers
    stamped on every answer (``stamp``). A plain ASGI middleware (not ``@app.middleware``): it
    passes the endpoint's messages through as they are, so an answer cut off on purpose
    (``CutOffAnswer``) reaches the server cut off, and uvicorn closes the connection.

    ``scope["state"]["rate_headers"]`` starts as None; an endpoint sets the rate-limit headers
    of its answer there."""

    api_prefix: str

    def __init__(self, app: ASGIApp, latency_ms: int) -> None:
        self.app = app
        self.latency_ms = latency_ms

    def begin(self, state: dict[str, Any]) -> None:
        """Per-request state, before the endpoint runs."""

    def stamp(self, state: dict[str, Any], headers: MutableHeaders, is_api: bool) -> None:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        self.begin(state)
        state["rate_headers"] = None
        is_api = scope["path"].startswith(self.api_prefix)
        if is_api and self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.stamp(state, MutableHeaders(scope=message), is_api)
            await send(message)

        await self.app(scope, receive, stamped)
