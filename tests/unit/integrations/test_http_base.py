"""The HTTP base of vendor clients (shared/integrations/http.py): one test per rule.

Answers come from ``httpx.MockTransport`` (statuses, headers, bodies a sandbox never gives) and
from real sockets where the rule is about the network (nothing listening, a hang-up after the
request was read, a body that stops mid-stream).
"""

from __future__ import annotations

import contextlib
import io
import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from pydantic import BaseModel

from devstack.processes import free_port
from shared.config import get_settings
from shared.integrations.errors import (
    AuthError,
    ConnectionParked,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    SendWithdrawn,
    TransientError,
)
from shared.integrations.http import (
    BearerToken,
    ErrorReading,
    SessionAuth,
    VendorHttp,
    redact,
    redact_url,
    retry_after_seconds,
    seconds_header,
)
from tests.fixtures.raw_server import reads_then_hangs_up
from worker.posting import proves_not_stored


class Item(BaseModel):
    id: int


def _http(handler, **kwargs) -> VendorHttp:
    return VendorHttp(system="acme", display_name="Acme", base_url="https://acme.test/api/",
                      transport=httpx.MockTransport(handler), **kwargs)


def _raised(http: VendorHttp, method: str = "GET", path: str = "items/1", **kwargs):
    with pytest.raises(Exception) as caught:
        http.request(method, path, what="the item", **kwargs)
    return caught.value


class _Sessions:
    """A session store like a client's: tokens t1, t2, ... handed out in turn."""

    def __init__(self) -> None:
        self.issued = 0
        self.renewed: list[str] = []
        self._auth: BearerToken | None = None

    def current(self) -> httpx.Auth:
        if self._auth is None:
            self.issued += 1
            self._auth = BearerToken(f"t{self.issued}")
        return self._auth

    def renew(self, rejected: httpx.Auth) -> None:
        self.renewed.append(rejected.token)  # type: ignore[attr-defined]
        if rejected is self._auth:
            self._auth = None

    def hooks(self) -> SessionAuth:
        return SessionAuth(current=self.current, renew=self.renew)


# --- timeouts -------------------------------------------------------------------------------------


def test_default_timeouts_come_from_settings(monkeypatch):
    monkeypatch.setenv("AIC_HTTP_CONNECT_TIMEOUT", "1.5")
    monkeypatch.setenv("AIC_HTTP_READ_TIMEOUT", "7")
    get_settings.cache_clear()
    try:
        http = VendorHttp(system="acme", display_name="Acme", base_url="https://acme.test")
        assert (http.client.timeout.connect, http.client.timeout.read) == (1.5, 7.0)
    finally:
        get_settings.cache_clear()


def test_a_gate_bounds_every_phase_and_a_shut_gate_sends_nothing():
    seen = []

    def handler(request):
        seen.append(request.extensions["timeout"])
        return httpx.Response(201, json={"id": 1})

    class Gate:
        timeout = 2.5

        def __init__(self, opens: bool) -> None:
            self.opens = opens

        def open(self) -> bool:
            return self.opens

    http = _http(handler)
    http.request("POST", "items", what="the item", gate=Gate(True))
    assert seen == [{"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}]
    error = _raised(http, "POST", "items", gate=Gate(False))
    assert isinstance(error, SendWithdrawn) and error.sent is False
    assert len(seen) == 1


# --- the taxonomy of statuses ---------------------------------------------------------------------


@pytest.mark.parametrize(("status", "kind", "code"), [
    (500, TransientError, "server_error"),
    (502, TransientError, "server_error"),
    (408, TransientError, "request_timeout"),
    (429, RateLimitedError, "rate_limited"),
    (404, NotFoundError, "not_found"),
    (400, PermanentError, "validation_failed"),
    (403, PermanentError, "forbidden"),
    (409, PermanentError, "conflict"),
    (401, AuthError, "unauthorized"),
])
def test_each_status_maps_to_one_error_and_the_posting_protocol_reads_it(status, kind, code):
    error = _raised(_http(lambda request: httpx.Response(status, text="nope")))
    assert type(error) is kind
    assert (error.code, error.status_code, error.system, error.sent) == (code, status, "acme", True)
    assert error.message.startswith("Acme ") and "the item" in error.message
    # Answered 4xx (but 408) proves "not stored"; 5xx and 408 leave the post in doubt.
    assert proves_not_stored(error, gate_opened=True) is (400 <= status < 500 and status != 408)


def test_the_error_hook_gives_plain_words_details_and_request_id():
    def read_error(response: httpx.Response) -> ErrorReading:
        body = response.json()
        return ErrorReading(code=body["code"], text=body["message"], details=body["problems"],
                            request_id=body["requestId"])

    http = _http(lambda request: httpx.Response(422, json={
        "code": "BAD_ACCOUNT", "message": "account 9999 is unknown",
        "problems": ["postings[0].account: unknown (map it)"], "requestId": "body-id"},
        headers={"X-Request-Id": "header-id"}), read_error=read_error)
    error = _raised(http)
    assert type(error) is PermanentError and error.code == "BAD_ACCOUNT"
    assert error.details == ["postings[0].account: unknown (map it)"]
    assert error.request_id == "body-id"  # the body's id wins over the header's
    assert error.message == "Acme rejected the item: account 9999 is unknown (request id body-id)"


def test_the_error_hook_may_word_the_whole_message_and_narrow_a_4xx_only():
    def read_error(response: httpx.Response) -> ErrorReading:
        return ErrorReading(message="Acme says: fix the thing", error_class=AuthError)

    forbidden = _raised(_http(lambda request: httpx.Response(403), read_error=read_error))
    assert type(forbidden) is AuthError and forbidden.message == "Acme says: fix the thing"
    # A 5xx stays transient and a 429 rate-limited whatever the hook says.
    assert type(_raised(_http(lambda request: httpx.Response(503),
                              read_error=read_error))) is TransientError
    assert type(_raised(_http(lambda request: httpx.Response(429),
                              read_error=read_error))) is RateLimitedError


def test_the_error_hook_may_park_the_connection_on_a_4xx_but_not_a_5xx():
    def read_error(response: httpx.Response) -> ErrorReading:
        return ErrorReading(text="subscription inactive", parked_for=15.0)

    parked = _raised(_http(lambda request: httpx.Response(402), read_error=read_error))
    assert type(parked) is ConnectionParked and parked.retry_after == 15.0
    assert parked.sent and parked.status_code == 402 and parked.retryable
    assert "subscription inactive" in parked.message
    assert type(_raised(_http(lambda request: httpx.Response(503),
                              read_error=read_error))) is TransientError


def test_the_request_id_comes_from_the_configured_headers():
    http = _http(lambda request: httpx.Response(500, headers={"X-Acme-Trace": "abc"}),
                 request_id_headers=("X-Acme-Trace",))
    assert _raised(http).request_id == "abc"
    default = _http(lambda request: httpx.Response(500, headers={"X-Correlation-Id": "c-1"}))
    assert _raised(default).request_id == "c-1"


# --- Retry-After ----------------------------------------------------------------------------------


def test_retry_after_in_seconds_and_as_an_http_date():
    now = datetime(2026, 3, 18, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(" 1.5 ") == 1.5
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True),
                               now=now) == 30.0
    assert retry_after_seconds(format_datetime(now - timedelta(hours=1), usegmt=True),
                               now=now) == 0.0
    assert retry_after_seconds("Wed, 18 Mar 2026 12:00:45", now=now) == 45.0  # no zone: GMT
    for junk in (None, "", "soon", "-3"):
        assert retry_after_seconds(junk) is None


def test_429_carries_retry_after_else_the_vendor_reset_header():
    def reset(response: httpx.Response) -> float | None:
        return seconds_header(response.headers.get("X-Rate-Limit-Reset"))

    both = _http(lambda request: httpx.Response(
        429, headers={"Retry-After": "3", "X-Rate-Limit-Reset": "40"}), rate_limit_reset=reset)
    assert _raised(both).retry_after == 3.0
    reset_only = _http(lambda request: httpx.Response(
        429, headers={"X-Rate-Limit-Reset": "40"}), rate_limit_reset=reset)
    error = _raised(reset_only)
    assert error.retry_after == 40.0 and "retry after 40 s" in error.message
    assert _raised(_http(lambda request: httpx.Response(429))).retry_after is None
    assert seconds_header("-5") == 0.0 and seconds_header("x") is None


# --- 401 renew-once -------------------------------------------------------------------------------


def test_a_401_renews_the_session_once_and_repeats_the_request():
    sessions = _Sessions()
    seen = []

    def handler(request):
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer t1":
            return httpx.Response(401)
        return httpx.Response(200, json={"id": 1})

    http = _http(handler, session=sessions.hooks())
    response = http.request("POST", "items", what="the item", json={"a": 1})
    assert response.json() == {"id": 1}
    assert seen == ["Bearer t1", "Bearer t2"] and sessions.renewed == ["t1"]


def test_a_second_401_is_an_auth_error_without_a_third_request():
    sessions = _Sessions()
    seen = []

    def handler(request):
        seen.append(request.headers["Authorization"])
        return httpx.Response(401)

    error = _raised(_http(handler, session=sessions.hooks()))
    assert type(error) is AuthError and error.status_code == 401
    assert "even after renewing" in error.message
    assert seen == ["Bearer t1", "Bearer t2"]


def test_credentials_without_renew_make_a_401_final_at_once():
    seen = []

    def handler(request):
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(401)

    static = SessionAuth(current=lambda: BearerToken("user-token"))
    error = _raised(_http(handler, session=static))
    assert type(error) is AuthError and seen == ["Bearer user-token"]
    assert "even after renewing" not in error.message


def test_an_unauthenticated_request_sends_no_credentials_and_renews_nothing():
    sessions = _Sessions()
    seen = []

    def handler(request):
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(401)

    error = _raised(_http(handler, session=sessions.hooks()), authenticate=False)
    assert type(error) is AuthError and seen == [None] and sessions.issued == 0


# --- sent or not: the network -----------------------------------------------------------------------


def test_nothing_listening_is_transient_and_provably_not_sent():
    http = VendorHttp(system="acme", display_name="Acme",
                      base_url=f"http://127.0.0.1:{free_port()}")
    error = _raised(http, "POST", "/items")
    assert type(error) is TransientError and error.code == "connection_error"
    assert error.sent is False and proves_not_stored(error, gate_opened=True)


def test_a_connect_timeout_is_not_sent_but_a_read_timeout_is():
    def handler(request):
        raise (httpx.ConnectTimeout if request.url.path.endswith("connect") else
               httpx.ReadTimeout)("slow", request=request)

    http = _http(handler)
    connect = _raised(http, path="connect")
    assert (type(connect), connect.code, connect.sent) == (TransientError, "connect_timeout", False)
    read = _raised(http, path="read")
    assert (type(read), read.code, read.sent) == (TransientError, "timeout", True)
    assert not proves_not_stored(read, gate_opened=True)


def test_a_hang_up_after_the_request_was_read_is_sent_and_in_doubt():
    with reads_then_hangs_up() as url:
        http = VendorHttp(system="acme", display_name="Acme", base_url=url)
        error = _raised(http, "POST", "/items", json={"a": 1})
    assert (type(error), error.code, error.sent) == (TransientError, "connection_lost", True)
    assert not proves_not_stored(error, gate_opened=True)


def test_a_url_without_http_scheme_is_permanent_and_not_sent():
    http = VendorHttp(system="acme", display_name="Acme", base_url="ftp://acme.test")
    error = _raised(http, path="/items")
    assert (type(error), error.code, error.sent) == (PermanentError, "bad_url", False)


# --- 2xx bodies -------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"<html>gateway</html>", b'{"id": "not a number"}'])
def test_an_unreadable_2xx_is_transient_and_in_doubt(body):
    http = _http(lambda request: httpx.Response(201, content=body,
                                                headers={"X-Request-Id": "r-9"}))
    response = http.request("POST", "items", what="the item")
    with pytest.raises(TransientError) as caught:
        http.parse(Item, response, "the item")
    error = caught.value
    assert (error.code, error.status_code, error.request_id, error.sent) == (
        "unexpected_response", 201, "r-9", True)
    assert "Item" in error.message and error.details
    assert not proves_not_stored(error, gate_opened=True)
    assert error.__cause__ is None  # a pydantic error quotes the input: secrets stay out


def test_a_readable_2xx_parses_with_decimals():
    class Money(BaseModel):
        amount: object

    http = _http(lambda request: httpx.Response(200, content=b'{"amount": 0.1}'))
    parsed = http.parse(Money, http.request("GET", "m", what="money"), "money")
    assert str(parsed.amount) == "0.1" and type(parsed.amount).__name__ == "Decimal"


# --- redaction and logs -------------------------------------------------------------------------------


def test_secrets_never_reach_messages_or_details():
    def read_error(response):
        return ErrorReading(text="token s3cr3t-token is bad", details=["s3cr3t-token expired"])

    http = _http(lambda request: httpx.Response(400), read_error=read_error,
                 secrets=lambda: ["s3cr3t-token", None, "ab"])
    error = _raised(http)
    assert "s3cr3t-token" not in error.message and "***" in error.message
    assert error.details == ["*** expired"]
    assert redact("ab c", ["ab"]) == "ab c"  # too short to be a secret worth garbling text


def test_credential_query_parameters_are_masked_in_httpx_logs(caplog):
    assert redact_url("PUT /x?consumerToken=abc&expirationDate=2026-01-01&employeeToken=d") == (
        "PUT /x?consumerToken=***&expirationDate=2026-01-01&employeeToken=***")
    assert redact_url("GET /r.pdf?X-Amz-Signature=f00&X-Amz-Credential=AK%2F1&page=2") == (
        "GET /r.pdf?X-Amz-Signature=***&X-Amz-Credential=***&page=2")
    http = _http(lambda request: httpx.Response(200))
    with caplog.at_level(logging.INFO, logger="httpx"):
        http.request("GET", "items", what="x", params={"access_token": "sekrit", "q": "1"})
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "httpx")
    assert "access_token=***" in text and "sekrit" not in text


def test_every_exchange_logs_its_structured_fields(caplog):
    http = _http(lambda request: httpx.Response(503, headers={"X-Request-Id": "r-1"}))
    with caplog.at_level(logging.DEBUG, logger="shared.integrations.http"):
        _raised(http, params={"token": "sekrit"})
    record = next(r for r in caplog.records if r.getMessage() == "http.exchange")
    assert (record.system, record.method, record.path, record.status, record.request_id) == (
        "acme", "GET", "/api/items/1", 503, "r-1")
    assert isinstance(record.elapsed_ms, int)


# --- streamed downloads --------------------------------------------------------------------------------


def test_a_download_streams_under_the_cap_without_credentials_when_asked():
    sessions = _Sessions()
    seen = []

    def handler(request):
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, content=b"%PDF-1.7 body")

    http = _http(handler, session=sessions.hooks())
    sink = io.BytesIO()
    size = http.download("https://bucket.test/r.pdf?X-Amz-Signature=x", sink, what="the receipt",
                         max_bytes=100, authenticate=False, expect_prefix=b"%PDF-",
                         expect_name="a PDF")
    assert (size, sink.getvalue(), seen) == (13, b"%PDF-1.7 body", [None])
    http.download("r.pdf", io.BytesIO(), what="the receipt", max_bytes=100)
    assert seen[-1] == "Bearer t1"


def test_a_download_over_the_cap_stops_by_content_length_or_by_counting():
    def chunks():
        for _ in range(100):
            yield b"x" * 1000

    announced = _http(lambda request: httpx.Response(200, content=b"x" * 500))
    with pytest.raises(PermanentError) as caught:
        announced.download("f", io.BytesIO(), what="the receipt", max_bytes=499)
    assert caught.value.code == "receipt_too_large" and "announces 500 bytes" in caught.value.message
    unannounced = _http(lambda request: httpx.Response(200, content=chunks()))
    sink = io.BytesIO()
    with pytest.raises(PermanentError) as caught:
        unannounced.download("f", sink, what="the receipt", max_bytes=5000)
    assert caught.value.code == "receipt_too_large" and "AIC_RECEIPT_MAX_BYTES" in caught.value.message
    assert len(sink.getvalue()) <= 5000


def test_a_download_of_the_wrong_kind_or_an_error_says_so():
    html = _http(lambda request: httpx.Response(200, content=b"<html>login</html>",
                                                headers={"Content-Type": "text/html"}))
    with pytest.raises(PermanentError) as caught:
        html.download("f", io.BytesIO(), what="the receipt", max_bytes=100,
                      expect_prefix=b"%PDF-", expect_name="a PDF")
    assert caught.value.code == "unexpected_response"
    assert "is not a PDF (Content-Type text/html" in caught.value.message
    gone = _http(lambda request: httpx.Response(404, json={"code": "GONE"}),
                 read_error=lambda response: ErrorReading(code=response.json()["code"]))
    with pytest.raises(NotFoundError) as caught:
        gone.download("f", io.BytesIO(), what="the receipt", max_bytes=100)
    assert caught.value.code == "GONE"  # the streamed error body was read for the hook


def test_a_download_that_breaks_off_is_transient():
    cut_short = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n%PDF-12345"
    with reads_then_hangs_up(cut_short) as url:
        http = VendorHttp(system="acme", display_name="Acme", base_url=url)
        with pytest.raises(TransientError) as caught:
            http.download("/r.pdf", io.BytesIO(), what="the receipt", max_bytes=5000)
    assert caught.value.code == "connection_lost" and caught.value.sent


# --- limiter and answers seen -----------------------------------------------------------------------


def test_the_limiter_permit_comes_first_and_its_refusal_sends_nothing():
    order = []

    class Limiter:
        def __init__(self, refuse: bool) -> None:
            self.refuse = refuse

        def acquire(self):
            order.append("permit")
            if self.refuse:
                raise RateLimitedError("wait", system="acme", retry_after=2.0, sent=False)
            return contextlib.nullcontext()

    class Gate:
        timeout = 5.0

        def open(self) -> bool:
            order.append("gate")
            return True

    def handler(request):
        order.append("sent")
        return httpx.Response(200, headers={"X-Left": "4"})

    seen = []
    http = _http(handler, limiter=Limiter(False),
                 on_response=lambda response: seen.append(response.headers["X-Left"]))
    http.request("POST", "items", what="the item", gate=Gate())
    assert order == ["permit", "gate", "sent"] and seen == ["4"]
    order.clear()
    refused = _http(handler, limiter=Limiter(True))
    error = _raised(refused, "POST", "items", gate=Gate())
    assert isinstance(error, RateLimitedError) and error.sent is False and order == ["permit"]


def test_inside_requests_refused_nothing_is_asked_of_anyone(monkeypatch):
    """The worker prepares a voucher inside its claim's transaction from what a client holds:
    a request there raises ``RequestRefused`` before the limiter or the network is touched, in
    helper threads run in a copy of the caller's context too (the Tripletex client fans its
    lookups out so), and not an ``IntegrationError`` a client could take for the vendor's answer."""
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    from shared.integrations.errors import IntegrationError
    from shared.integrations.http import RequestRefused, requests_refused

    touched = []

    class Limiter:
        def acquire(self):
            touched.append("permit")
            return contextlib.nullcontext()

    def handler(request):
        touched.append("sent")
        return httpx.Response(200, json={"id": 1})

    http = _http(handler, limiter=Limiter())
    with requests_refused():
        refused = _raised(http)
        with ThreadPoolExecutor(max_workers=1) as pool:
            in_helper = pool.submit(contextvars.copy_context().run, _raised, http).result()
    assert isinstance(refused, RequestRefused) and not isinstance(refused, IntegrationError)
    assert isinstance(in_helper, RequestRefused)
    assert "GET to Acme (the item)" in str(refused)
    assert touched == []
    http.request("GET", "items/1", what="the item")  # outside the block: as always
    assert touched == ["permit", "sent"]
