"""The feed source's tiny HTTP server, run in a thread of the test process.

``GET /entries?after=<id>&limit=<n>`` lists entries with an id above ``after`` (the content is
in the listing; there is no GET of one entry), ``{"entries": [...], "next_cursor": "<last id>"}``.
``POST /results`` takes at most ``CHUNK`` results ``{"results": [{"id", "status", "number" |
"error"}]}`` and answers 422 to more. Every call is kept for the test to read; ``fail_results``
makes the next results calls answer 503.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

API_KEY = "feed-key"
CHUNK = 2


class FeedServer:
    def __init__(self) -> None:
        self.entries: list[dict] = []
        self.results_calls: list[list[dict]] = []  # accepted calls, in order
        self.refused_calls: list[list[dict]] = []
        self.list_calls: list[str | None] = []  # the ``after`` of every listing
        self.fail_results = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FeedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def add(self, amount: str, text: str = "Taxi") -> str:
        with self._lock:
            entry_id = str(len(self.entries) + 1)
            self.entries.append({"id": entry_id, "text": text, "amount": amount,
                                 "account": "7140", "date": "2026-11-02"})
            return entry_id

    def held(self) -> dict[str, dict]:
        """entry id -> the last result the source accepted for it."""
        with self._lock:
            return {r["id"]: r for call in self.results_calls for r in call}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive like a real API (every answer has a Content-Length).
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if self.headers.get("X-Api-Key") != API_KEY:
                    self._answer(401, {"error": "wrong api key"})
                    return False
                return True

            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path != "/entries" or not self._authorized():
                    return self._answer(404, {"error": "no such path"}) if url.path != \
                        "/entries" else None
                query = parse_qs(url.query)
                after = query.get("after", [None])[0]
                limit = int(query.get("limit", ["2"])[0])
                with server._lock:
                    server.list_calls.append(after)
                    page = [e for e in server.entries
                            if after is None or int(e["id"]) > int(after)][:limit]
                self._answer(200, {"entries": page,
                                   "next_cursor": page[-1]["id"] if page else after})

            def do_POST(self) -> None:
                if urlparse(self.path).path != "/results" or not self._authorized():
                    return None if urlparse(self.path).path == "/results" else self._answer(
                        404, {"error": "no such path"})
                length = int(self.headers.get("Content-Length", "0"))
                results = json.loads(self.rfile.read(length))["results"]
                with server._lock:
                    if server.fail_results:
                        server.fail_results -= 1
                        server.refused_calls.append(results)
                        return self._answer(503, {"error": "try again"})
                    if len(results) > CHUNK:
                        server.refused_calls.append(results)
                        return self._answer(422, {"error": f"at most {CHUNK} results a call"})
                    server.results_calls.append(results)
                self._answer(200, {"accepted": len(results)})

        return Handler
