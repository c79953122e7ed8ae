"""Refuse request bodies over the limit before reading them into memory (413)."""

from __future__ import annotations

import json


class BodySizeLimit:
    """Pure ASGI middleware: checks Content-Length, and counts the bytes of chunked bodies."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        # Read (and count) the whole body here, before the application sees any of it. Counting
        # inside a wrapped receive() and raising from there does not work: FastAPI's body parsing
        # catches any exception raised while reading and answers 400 "error parsing the body".
        # The body is buffered anyway by the JSON endpoints; here it is at most max_bytes.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await self._refuse(send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replaying_receive():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replaying_receive, send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"error": {"code": "request_too_large", "message":
                                     f"the request body exceeds {self.max_bytes} bytes; send less "
                                     "(split a large batch into several)"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

