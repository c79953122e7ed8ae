"""The start-up check of the serving processes (shared.config.require_safe_settings).

tests/test_deployment_files.py starts the real API, worker and beat commands without secrets and
sees them refuse; these check the rule itself, and the `aic` commands that store credentials.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from producers.cli import main
from shared.config import (
    DEVELOPMENT_ADMIN_TOKEN,
    DEVELOPMENT_SECRET_KEY,
    RefusedToStart,
    Settings,
    reset_settings_cache,
    require_safe_settings,
)
from shared.db.models import SourceConnection
from shared.db.session import session_scope
from shared.domain import organizations

REAL_TOKEN = "a-long-random-admin-token-0123456789"
REAL_KEY = "dGVzdC1vbmx5LXNlY3JldC1rZXktMzItYnl0ZXMhISE="


def settings(**values) -> Settings:
    return Settings(**{"admin_token": REAL_TOKEN, "secret_key": REAL_KEY, **values})


def test_production_is_the_default_environment(monkeypatch):
    """Forgetting AIC_ENVIRONMENT must fail safe. Fails on the old code (no such setting)."""
    monkeypatch.delenv("AIC_ENVIRONMENT", raising=False)
    assert Settings().environment == "production"


@pytest.mark.parametrize("values,named,not_named", [
    ({"admin_token": DEVELOPMENT_ADMIN_TOKEN}, "AIC_ADMIN_TOKEN", "AIC_SECRET_KEY"),
    ({"secret_key": DEVELOPMENT_SECRET_KEY}, "AIC_SECRET_KEY", "AIC_ADMIN_TOKEN"),
])
def test_production_refuses_each_development_secret_and_says_what_to_set(values, named,
                                                                          not_named):
    with pytest.raises(RefusedToStart) as refused:
        require_safe_settings("the API", settings=settings(environment="production", **values))
    message = str(refused.value)
    assert message.startswith("the API refuses to start: ")
    assert named in message and not_named not in message
    assert "AIC_ENVIRONMENT=development" in message
    # A SystemExit with a message: Python prints it and exits 1, and Celery's signal dispatch
    # (which swallows Exception) cannot swallow it.
    assert isinstance(refused.value, SystemExit) and not isinstance(refused.value, Exception)


def test_development_allows_the_development_secrets_and_production_allows_real_ones():
    require_safe_settings("the API", settings=Settings(
        environment="development", admin_token=DEVELOPMENT_ADMIN_TOKEN,
        secret_key=DEVELOPMENT_SECRET_KEY))
    require_safe_settings("the API", settings=settings(environment="production"))


def test_an_unknown_environment_is_refused(monkeypatch):
    monkeypatch.setenv("AIC_ENVIRONMENT", "prod")
    with pytest.raises(ValueError, match="'development' or 'production'"):
        Settings()


@pytest.fixture
def development_secret_key(org, monkeypatch):
    """AIC_SECRET_KEY at its development default (after ``org`` stored its connection)."""
    monkeypatch.setenv("AIC_SECRET_KEY", DEVELOPMENT_SECRET_KEY)
    reset_settings_cache()
    yield
    monkeypatch.undo()
    reset_settings_cache()


@pytest.mark.parametrize("argv", [
    ["connection", "set", "{org}", "tripletex", "--base-url", "http://127.0.0.1:9/v2",
     "--consumer-token", "c2", "--employee-token", "e2"],
    ["source", "set", "{org}", "--base-url", "http://127.0.0.1:9/api", "--token-url",
     "http://127.0.0.1:9/token", "--findity-org", "f", "--client-id", "c",
     "--client-secret", "s"],
], ids=["connection set", "source set"])
def test_cli_refuses_to_store_credentials_under_the_development_key(argv, org,
                                                                    development_secret_key):
    """Fails on the old code: the command stored the credentials under the public key."""
    with session_scope() as session:
        before = organizations.connection_for(session, org.id, "tripletex").credentials_encrypted
    with pytest.raises(RefusedToStart, match="AIC_SECRET_KEY is the development key"):
        main([a.replace("{org}", org.id) for a in argv])
    with session_scope() as session:
        assert organizations.connection_for(session, org.id,
                                            "tripletex").credentials_encrypted == before
        assert session.scalar(select(SourceConnection).where(
            SourceConnection.organization_id == org.id)) is None
