"""Property-based fuzzing of every operation in our own /openapi.json, against the real server.

Schemathesis reads the schema the running API server publishes, generates valid and invalid
requests for each operation (the schema's examples, boundary "coverage" cases, then random
ones), sends them over HTTP to the uvicorn process, and checks every answer:

- ``not_a_server_error``: never a 5xx, whatever the input;
- ``status_code_conformance``: every status the API answers is documented for the operation;
- ``content_type_conformance`` and ``response_schema_conformance``: the body is what the schema
  says for that status, errors included.

Generated ids would almost never exist, so half of the cases (chosen by the generated value
itself, so a failing case replays identically while shrinking) swap path ids for ones seeded in
the database: the fuzzer then also reaches the 200/409 branches with hostile bodies.

Bounded for CI: ``FUZZ_MAX_EXAMPLES`` random cases per operation (positive and negative) plus
the coverage and unexpected-method cases, about 2 500 requests in 20-30 s on 2 cores. The seed
is random per run and printed on failure: ``AIC_FUZZ_SEED=<seed>`` replays a run, and
``AIC_FUZZ_MAX_EXAMPLES=500`` digs deeper locally. Run it on PostgreSQL too
(``AIC_TEST_DATABASE_URL``): some inputs only fail there (NUL characters, column lengths).
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.config import get_settings
from tests.security.helpers import drop_queued_jobs, make_org

pytestmark = pytest.mark.integration

FUZZ_MAX_EXAMPLES = int(os.environ.get("AIC_FUZZ_MAX_EXAMPLES") or 50)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# Tests read their own knobs; the application's settings object is for the application.
SEED = int(os.environ.get("AIC_FUZZ_SEED") or random.SystemRandom().getrandbits(32))


@pytest.fixture(scope="module")
def fuzz_ids(admin: httpx.Client, api_server: str) -> Iterator[dict[str, str]]:
    """An organization with expenses, an export, a batch, a webhook and a source export, so that
    generated requests can hit existing rows too."""
    org = make_org(admin, api_server, "Fuzz AS")
    spare_key = admin.post(f"/api/v1/admin/organizations/{org.organization_id}/api-keys").json()
    source = admin.put(f"/api/v1/admin/organizations/{org.organization_id}/sources/findity", json={
        "base_url": "http://127.0.0.1:9/api",
        "credentials": {"client_id": "fuzz-client", "client_secret": "fuzz-secret",
                        "token_url": "http://127.0.0.1:9/token"},
        "options": {"organization_id": "fuzz-findity-org"}})
    assert source.status_code == 200, source.text
    webhook_path = source.json()["webhook_path"]
    expense_ids = [org.add_expense() for _ in range(3)]
    export = org.api.post("/api/v1/accounting-exports", json={
        "expense_id": expense_ids[0], "target_system": "tripletex"})
    assert export.status_code == 202, export.text
    batch = org.api.post("/api/v1/accounting-exports/batch", json={
        "expense_ids": expense_ids[1:], "target_system": "tripletex"})
    assert batch.status_code == 202, batch.text
    delivered = org.api.post(webhook_path, json={"exportId": "fuzz-export-1",
                                                 "organizationId": "fuzz-findity-org"})
    assert delivered.status_code == 200, delivered.text
    [package] = org.api.get("/api/v1/source-exports").json()["data"]
    yield {
        "api_key": org.api_key,
        "org_id": org.organization_id,
        "key_id": spare_key["api_key_id"],
        "expense_id": expense_ids[0],
        "export_id": export.json()["export_id"],
        "batch_id": batch.json()["batch_id"],
        "source_export_id": package["source_export_id"],
        "token": webhook_path.rsplit("/", 1)[1],
    }
    org.api.close()
    # Nothing fuzzed may run later in the session: the connections point at a closed port.
    drop_queued_jobs()


def _published_schema() -> dict:
    # The document the server publishes at /openapi.json, read from the same application object
    # at collection time (pytest needs the operations to name the tests);
    # ``test_the_fuzzed_schema_is_the_one_the_server_serves`` checks the live server's is identical.
    from producers.api.app import app

    return app.openapi()


schema = schemathesis.openapi.from_dict(_published_schema(), config=schemathesis.Config.from_dict({
    "seed": SEED,
    "generation": {"max-examples": FUZZ_MAX_EXAMPLES, "database": "none"},
}))


def test_the_fuzzed_schema_is_the_one_the_server_serves(api_server):
    assert httpx.get(f"{api_server}/openapi.json").json() == schema.raw_schema


def _with_seeded_ids(case, fuzz_ids: dict[str, str]) -> None:
    for name, value in list((case.path_parameters or {}).items()):
        if name in fuzz_ids and zlib.crc32(repr(value).encode()) % 2 == 0:
            case.path_parameters[name] = fuzz_ids[name]


@schema.parametrize()
@settings(max_examples=FUZZ_MAX_EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_never_errors_and_always_answers_as_documented(case, fuzz_ids, api_server):
    _with_seeded_ids(case, fuzz_ids)
    token = (get_settings().admin_token if case.path.startswith("/api/v1/admin")
             else fuzz_ids["api_key"])
    try:
        case.call_and_validate(base_url=api_server, headers={"Authorization": f"Bearer {token}"},
                               checks=CHECKS, timeout=30)
    except FailureGroup as exc:
        raise AssertionError(f"{exc}\n\nReplay this run with AIC_FUZZ_SEED={SEED}") from None
