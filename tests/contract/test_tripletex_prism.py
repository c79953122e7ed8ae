"""Contract test: TripletexClient against a Prism mock of Tripletex's own OpenAPI spec.

Prism (``@stoplight/prism-cli`` from the npm registry, installed into ``var/node`` on first use)
serves ``ledger-subset-2.74.json`` with ``--errors``: every request that violates the vendor's
spec (a missing required parameter, a wrong type in the voucher body, no Basic auth, a wrong
multipart field) is answered with a 4xx instead of a mock response. The client runs its real
flows through a recording transport, and the test asserts Prism accepted every request.

Two things the test adds, both written out below:
- The subset spec lacks ``GET /currency``, ``/department`` and ``/project``, which the client
  calls. Their operations are copied verbatim from the full ``openapi-2.74.json`` into a derived
  spec, with nested entities cut to ``{id, url}`` stubs exactly as the subset does (the full
  spec is too big for Prism to start in reasonable time: over 60 s).
- Prism answers lookups with static placeholder data (account number 0, name "string",
  vatLocked/requiresDepartment true). The client rightly refuses to book on such a chart, so
  ``fill_placeholders`` puts the identities we asked for back into Prism's answers (number,
  name, code; GENERAL ledger; no locks) keeping Prism's shape. Only answers are touched, never
  requests: what Prism validated is exactly what the client sent.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.processes import ManagedProcess, free_port, wait_for_http
from shared.config import PROJECT_ROOT
from shared.domain.vouchers import PostingDraft, VoucherDraft
from shared.integrations.tripletex import TripletexClient, TripletexOptions
from tests.contract.prism import ensure_prism as install_prism
from tests.contract.prism import skip

pytestmark = pytest.mark.contract

SPEC_DIR = Path(PROJECT_ROOT).parent / "shared/specs/tripletex"
SUBSET_SPEC = SPEC_DIR / "ledger-subset-2.74.json"
FULL_SPEC = SPEC_DIR / "openapi-2.74.json"
GAP_PATHS = ("/currency", "/department", "/project")
STUB = {"$ref": "#/components/schemas/_Ref"}


# --- Prism -----------------------------------------------------------------------------------


def ensure_prism() -> Path:
    if not SUBSET_SPEC.exists():
        skip(f"the Tripletex spec is missing: {SUBSET_SPEC}")
    return install_prism()


def _stub_nested(schema: dict[str, Any]) -> dict[str, Any]:
    """One entity schema with every reference to another entity cut to an ``{id, url}`` stub."""
    schema = copy.deepcopy(schema)
    for name, prop in schema.get("properties", {}).items():
        if "$ref" in prop:
            schema["properties"][name] = dict(STUB)
        elif prop.get("type") == "array" and "$ref" in prop.get("items", {}):
            prop["items"] = dict(STUB)
    return schema


def contract_spec() -> dict[str, Any]:
    """The subset spec plus the vendor's own GET operations of the three gap paths."""
    spec = json.loads(SUBSET_SPEC.read_text())
    if not FULL_SPEC.exists():
        return spec
    full = json.loads(FULL_SPEC.read_text())
    schemas = spec["components"]["schemas"]
    for path in GAP_PATHS:
        operation = copy.deepcopy(full["paths"][path]["get"])
        spec["paths"][path] = {"get": operation}
        envelope_ref = operation["responses"]["200"]["content"]["application/json"]["schema"][
            "$ref"
        ]
        envelope_name = envelope_ref.rsplit("/", 1)[1]
        envelope = full["components"]["schemas"][envelope_name]
        schemas[envelope_name] = envelope
        entity_name = envelope["properties"]["values"]["items"]["$ref"].rsplit("/", 1)[1]
        schemas[entity_name] = _stub_nested(full["components"]["schemas"][entity_name])
    return spec


@pytest.fixture(scope="module")
def prism_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    prism = ensure_prism()
    work = tmp_path_factory.mktemp("prism")
    spec_path = work / "tripletex-contract.json"
    spec_path.write_text(json.dumps(contract_spec()))
    port = free_port()
    process = ManagedProcess(
        "prism",
        [str(prism), "mock", "-h", "127.0.0.1", "-p", str(port), "--errors", str(spec_path)],
        log_dir=work,
        cwd=PROJECT_ROOT,
    )
    try:
        # Prism has no health endpoint; any answer below 500 (here a 401: no auth) means ready.
        wait_for_http(f"http://127.0.0.1:{port}/ledger/voucherType", timeout=90, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


# --- recording and placeholder filling -------------------------------------------------------


@dataclass
class Exchange:
    method: str
    path: str
    query: dict[str, str]
    status: int
    violations: str | None
    body: str

    @property
    def rejected(self) -> bool:
        return self.status >= 400 or self.violations is not None


def fill_placeholders(request: httpx.Request, data: Any) -> Any:
    """Put the identities the request asked for into Prism's placeholder list answers."""
    if not isinstance(data, dict) or not data.get("values"):
        return data
    template, query, path = data["values"][0], request.url.params, request.url.path

    def one_per(values: list[str], **fields: Any) -> list[dict[str, Any]]:
        (key,) = (k for k, v in fields.items() if v is None)
        fixed = {k: v for k, v in fields.items() if v is not None}
        return [{**template, "id": 1000 + i, key: value, **fixed} for i, value in enumerate(values)]

    if path == "/ledger/account":
        data["values"] = one_per(
            [int(n) for n in query["number"].split(",")],
            number=None,
            ledgerType="GENERAL",
            vatLocked=False,
            requiresDepartment=False,
            requiresProject=False,
            legalVatTypes=[],
        )
    elif path == "/ledger/vatType":
        data["values"] = one_per(query["number"].split(","), number=None)
    elif path == "/ledger/voucherType":
        data["values"] = one_per([query["name"]], name=None)
    elif path == "/currency":
        data["values"] = one_per([query["code"]], code=None)
    elif path == "/department":
        data["values"] = one_per([query["departmentNumber"]], departmentNumber=None)
    elif path == "/project":
        data["values"] = one_per([query["number"]], number=None)
    elif path == "/ledger/voucher/>externalVoucherNumber":
        data["values"] = one_per([query["externalVoucherNumber"]], externalVoucherNumber=None)
    return data


class PrismTransport(httpx.HTTPTransport):
    """Sends each request to Prism as is, records Prism's verdict, then fills placeholders."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[Exchange] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        body = response.read()
        self.exchanges.append(
            Exchange(
                request.method,
                request.url.path,
                dict(request.url.params),
                response.status_code,
                response.headers.get("sl-violations"),
                body.decode("utf-8", "replace"),
            )
        )
        if response.status_code == 200 and response.headers.get("content-type", "").startswith(
            "application/json"
        ):
            body = json.dumps(fill_placeholders(request, json.loads(body))).encode()
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return httpx.Response(response.status_code, headers=headers, content=body, request=request)

    def rejected(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.rejected]


# --- the tests -------------------------------------------------------------------------------


def test_client_requests_conform_to_the_tripletex_spec(prism_url: str) -> None:
    transport = PrismTransport()
    draft = VoucherDraft(
        external_number="exp-contract-1",
        date=date(2026, 3, 18),
        description="Reiseregning mars",
        postings=[
            PostingDraft(account_number="7140", amount="560.00", vat_code="13", description="Taxi"),
            PostingDraft(
                account_number="6800", amount="125.50", vat_code="1", department_number="1"
            ),
            PostingDraft(account_number="6420", amount="100.00", project_number="1002"),
            PostingDraft(account_number="2930", amount="-785.50"),
        ],
    )
    with TripletexClient(
        prism_url,
        consumer_token="consumer-x",
        employee_token="employee-y",
        options=TripletexOptions(voucher_type_name="Reiseregning"),
        transport=transport,
    ) as client:
        who = client.check_connection()  # Prism's raw answer, parsed by our models
        assert who.company_id is not None
        posted = client.post_voucher(draft)
        found = client.find_voucher("exp-contract-1")
        client.attach_receipt(
            posted.id, "kvittering.pdf", b"%PDF-1.4\n%receipt\n", "application/pdf"
        )

    assert transport.rejected() == [], "Prism rejected requests as violating the spec"
    assert found is not None and found.id == str(1000)
    assert posted.reference == f"TTX-{posted.id}"
    covered = {(e.method, e.path) for e in transport.exchanges}
    assert covered == {
        ("PUT", "/token/session/:create"),
        ("GET", "/token/session/>whoAmI"),
        ("GET", "/ledger/account"),
        ("GET", "/ledger/vatType"),
        ("GET", "/ledger/voucherType"),
        ("GET", "/currency"),
        ("GET", "/department"),
        ("GET", "/project"),
        ("POST", "/ledger/voucher"),
        ("GET", "/ledger/voucher/>externalVoucherNumber"),
        ("POST", f"/ledger/voucher/{posted.id}/attachment"),
    }
    # The session was created once and used for everything after it.
    assert sum(e.path == "/token/session/:create" for e in transport.exchanges) == 1


def test_draft_voucher_post_conforms_too(prism_url: str) -> None:
    transport = PrismTransport()
    draft = VoucherDraft(
        external_number="exp-contract-2",
        date=date(2026, 3, 18),
        description="Kontor",
        postings=[
            PostingDraft(account_number="6800", amount="10.00"),
            PostingDraft(account_number="2930", amount="-10.00"),
        ],
    )
    with TripletexClient(
        prism_url,
        consumer_token="c",
        employee_token="e",
        options=TripletexOptions(send_to_ledger=False),
        transport=transport,
    ) as client:
        client.post_voucher(draft)
    assert transport.rejected() == []
    [post] = [e for e in transport.exchanges if e.method == "POST"]
    assert post.query == {"sendToLedger": "false"}


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("PUT", "/token/session/:create", {"params": {"consumerToken": "c", "employeeToken": "e"}}),
        (
            "POST",
            "/ledger/voucher",
            {"json": {"date": "2026-03-18", "postings": [{"row": "one"}]}, "auth": ("0", "t")},
        ),
        ("GET", "/ledger/account", {"params": {"number": "6800"}}),  # no Basic auth
        (
            "POST",
            "/ledger/voucher/1/attachment",
            {"files": {"document": ("a.pdf", b"x", "application/pdf")}, "auth": ("0", "t")},
        ),
    ],
)
def test_prism_catches_requests_that_break_the_spec(
    prism_url: str, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    """The negative control: the same transport flags a request the spec does not allow, so
    the conformance assertion above can fail."""
    transport = PrismTransport()
    with httpx.Client(base_url=prism_url, transport=transport) as http:
        http.request(method, path, **kwargs)
    [exchange] = transport.exchanges
    assert exchange.rejected, exchange
