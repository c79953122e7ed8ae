"""Fixtures of the security tests (helpers live in ``tests/security/helpers.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.security.helpers import OrgHandle, make_org


@pytest.fixture
def new_org(admin: httpx.Client, api_server: str) -> Iterator:
    """Make organizations through the admin API: ``new_org(name=None, **make_org_options)``."""
    made: list[OrgHandle] = []

    def _make(name: str | None = None, **options) -> OrgHandle:
        made.append(make_org(admin, api_server, name, **options))
        return made[-1]

    yield _make
    for org in made:
        org.api.close()


@pytest.fixture
def anonymous(api_server: str) -> Iterator[httpx.Client]:
    """A client that sends no credentials."""
    with httpx.Client(base_url=api_server, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def no_workers(workers) -> Iterator[None]:
    """Stop the session's worker processes for a module that compares the database before and
    after a request: a worker still retrying some export (this module's or an earlier test's)
    would change rows behind the comparison. The pool is restored afterwards, as the other
    modules expect it (tests/integration/test_rate_limit.py does the same)."""
    were_running = bool(workers.running)
    workers.stop_all()
    yield
    if were_running and not workers.running:
        workers.start()
