"""Contract test: the Brex client against a Prism mock of Brex's own Expenses API spec.

Prism (``tests/contract/prism.py``) serves ``expenses-api-0.1-patched.json`` (the patched copy:
``limit`` 1..100, ``next_cursor: null`` so a static mock ends a walk; see the README beside it).
A request that breaks Brex's spec (a limit above 100, no Bearer token, a memo body of the wrong
shape) is answered 4xx and its violations named in ``sl-violations``. Prism runs without
``--errors`` here: Brex's ``custom_fields`` value is a ``oneOf`` whose members overlap, so
Prism's own example answer breaks the spec and ``--errors`` would turn every list into a 500;
violations located in the answer are Prism's, not ours, and are not counted. The client runs its real calls through a recording transport and the test asserts
that Prism accepted every request and that our models read Prism's example answers.
Receipt links are pre-signed S3 URLs, outside Brex's spec: the sandbox tests cover them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from shared.config import PROJECT_ROOT
from shared.integrations.brex import BrexSource
from shared.integrations.brex.models import EXPAND
from tests.contract.prism import prism_mock, skip

pytestmark = pytest.mark.contract

# shared/ sits beside the checkout (CI, /work/main) or beside the worktrees' folder.
SPEC = next((root / "shared/specs/brex/expenses-api-0.1-patched.json"
             for root in (PROJECT_ROOT.parent, PROJECT_ROOT.parent.parent)
             if (root / "shared/specs/brex").is_dir()),
            PROJECT_ROOT.parent / "shared/specs/brex/expenses-api-0.1-patched.json")


@pytest.fixture(scope="module")
def prism_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not SPEC.exists():
        skip(f"the Brex spec is missing: {SPEC}")
    # No health endpoint: the list without a token answers 401 once Prism is up.
    with prism_mock(SPEC, tmp_path_factory.mktemp("prism-brex"), "/v1/expenses",
                    errors=False) as url:
        yield url


@dataclass
class Exchange:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    status: int
    violations: str | None

    @property
    def rejected(self) -> bool:
        """A 4xx/5xx, or a violation located in our request (not in Prism's answer)."""
        found = json.loads(self.violations) if self.violations else []
        return self.status >= 400 or any(v["location"][0] == "request" for v in found)


class RecordingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[Exchange] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.read()
        self.exchanges.append(Exchange(
            request.method, request.url.path, list(request.url.params.multi_items()),
            dict(request.headers), response.status_code, response.headers.get("sl-violations")))
        return response


def test_client_requests_conform_to_the_brex_spec(prism_url: str) -> None:
    transport = RecordingTransport()
    with BrexSource(prism_url, token="bxt_contract", transport=transport,
                    options={"default_account": "7140", "memo_write_back": True}) as client:
        page = client.list_page({"status[]": ["APPROVED", "SETTLED", "SPLIT"],
                                 "updated_at_start": datetime(2026, 3, 1, tzinfo=UTC),
                                 "expand[]": list(EXPAND)})
        walked = client.walk_items({"parent_expense_id[]": ["expense_1", "expense_2"]})
        one = client.get_expense("expense_1")
        written = client.update_memo("expense_1", "Client dinner [Booked as voucher 1]",
                                     idempotency_key="exp_1:memo")
        pending = client.list_pending(None)  # the whole poll: main walk + SPLIT parent lookup

    rejected = [e for e in transport.exchanges if e.rejected]
    assert rejected == [], "Prism rejected requests as violating Brex's spec"
    assert page.next_cursor is None and page.items and walked
    assert one.id and one.updated_at and written.id
    # The HWM comes from the data: Prism's example expense's updated_at.
    assert "2019-08-24" in pending.next_cursor
    covered = {(e.method, e.path.replace("expense_1", "{id}")) for e in transport.exchanges}
    assert covered == {("GET", "/v1/expenses"), ("GET", "/v1/expenses/{id}"),
                       ("PUT", "/v1/expenses/card/{id}")}
    put = next(e for e in transport.exchanges if e.method == "PUT")
    assert put.headers["idempotency-key"] == "exp_1:memo"
    lists = [e for e in transport.exchanges if e.path == "/v1/expenses"]
    assert all(("limit", "100") in e.query for e in lists)


@pytest.mark.parametrize(("method", "path", "kwargs"), [
    ("GET", "/v1/expenses", {"params": {"limit": "1000"}}),  # above Brex's maximum of 100
    ("GET", "/v1/expenses", {"params": {"limit": "10"}, "headers": {}}),  # no token
    ("PUT", "/v1/expenses/card/e1", {"json": {"memo": 5}}),  # a memo is a string
])
def test_prism_catches_requests_that_break_the_spec(prism_url: str, method: str, path: str,
                                                    kwargs: dict[str, Any]) -> None:
    """The negative control: the same recording flags what Brex's spec does not allow, so the
    conformance assertion above can fail."""
    transport = RecordingTransport()
    headers = kwargs.pop("headers", {"Authorization": "Bearer t"})
    with httpx.Client(base_url=prism_url, transport=transport, headers=headers) as http:
        http.request(method, path, **kwargs)
    [exchange] = transport.exchanges
    assert exchange.rejected, exchange
