"""Helpers for the security tests: database snapshots, the error contract, organizations."""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass
from datetime import date

import httpx
import redis
from sqlalchemy import func, select

from shared.config import get_settings
from shared.db.models import (
    AccountingExport,
    ApiKey,
    Base,
    Expense,
    SourceConnection,
    TargetConnection,
)
from shared.db.session import session_scope

_names = itertools.count(1)


def table_counts() -> dict[str, int]:
    """Rows of every table of the schema, read from the test database the API server uses."""
    with session_scope() as session:
        return {table.name: session.scalar(select(func.count()).select_from(table))
                for table in Base.metadata.sorted_tables}


def organization_fingerprint(org_id: str) -> str:
    """A digest of every column of the organization's expenses, exports, connections, sources
    and API keys: an UPDATE (a status flipped, a credential replaced or redirected) changes it
    even when no row count does."""
    digest = hashlib.sha256()
    with session_scope() as session:
        for model in (Expense, AccountingExport, TargetConnection, SourceConnection, ApiKey):
            table = model.__table__
            rows = session.execute(select(table).where(table.c.organization_id == org_id)
                                   .order_by(table.c.id)).all()
            digest.update(repr(rows).encode())
    return digest.hexdigest()


def drop_queued_jobs() -> None:
    """Forget jobs a test enqueued for connections that point nowhere, so that a worker started
    later in the session does not spend its time on them."""
    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(settings.export_queue, settings.report_queue)
    client.close()


def assert_error_body(response: httpx.Response, status: int | tuple[int, ...]) -> dict:
    """The API's error contract: JSON ``{"error": {"code", "message"}}``, a message that explains,
    no stack trace. Returns the ``error`` object."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and len(error["message"]) >= 10, error
    assert "Traceback" not in response.text and 'File "' not in response.text
    return error


@dataclass
class OrgHandle:
    organization_id: str
    api_key: str
    api_key_id: str
    api: httpx.Client

    def add_expense(self, amount: str = "100.00", status: str = "approved") -> str:
        response = self.api.post("/api/v1/expenses", json={
            "source_ref": f"sec-{next(_names)}-{time.monotonic_ns()}", "status": status,
            "description": "Taxi", "expense_date": date.today().isoformat(), "rows": [
                {"account": "7140", "amount": amount},
                {"account": "2930", "amount": f"-{amount}"}]})
        assert response.status_code == 201, response.text
        return response.json()["expense_id"]


def make_org(admin: httpx.Client, api_server: str, name: str | None = None, *,
             tripletex_url: str | None = "http://127.0.0.1:9/v2",
             consumer_token: str = "sec-consumer-token",
             employee_token: str = "sec-employee-token",
             scopes: tuple[str, ...] | None = ("exports", "callbacks")) -> OrgHandle:
    """An organization made through the admin API, with a Tripletex connection (to a closed port
    unless told otherwise) and a client that uses its API key. The key has both scopes, so every
    operation is reachable; ``scopes=None`` leaves them to the API's default. Close ``.api``
    when done."""
    body = {"name": name or f"Security {next(_names)} AS"}
    if scopes is not None:
        body["api_key_scopes"] = list(scopes)
    created = admin.post("/api/v1/admin/organizations", json=body)
    assert created.status_code == 201, created.text
    body = created.json()
    if tripletex_url:
        connection = admin.put(
            f"/api/v1/admin/organizations/{body['organization_id']}/connections/tripletex",
            json={"base_url": tripletex_url, "credentials": {
                "consumer_token": consumer_token, "employee_token": employee_token}})
        assert connection.status_code == 200, connection.text
    client = httpx.Client(base_url=api_server, timeout=30,
                          headers={"Authorization": f"Bearer {body['api_key']}"})
    return OrgHandle(body["organization_id"], body["api_key"], body["api_key_id"], client)
