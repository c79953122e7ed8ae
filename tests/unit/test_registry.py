"""The registry is the one list of systems, and what it says is what the engine does."""

from __future__ import annotations

import dataclasses

import pytest

from shared.config import reset_settings_cache
from shared.integrations import registry
from shared.integrations.rate_limit import RateLimitPolicy, default_policy


@pytest.fixture
def with_ledger_plugin(monkeypatch):
    monkeypatch.setenv("AIC_EXTRA_SYSTEMS", "tests.plugins.ledger_target")
    reset_settings_cache()
    registry.reset_for_tests()
    yield
    monkeypatch.delenv("AIC_EXTRA_SYSTEMS")
    reset_settings_cache()
    registry.reset_for_tests()


def test_builtin_systems_are_listed_with_their_kind():
    assert list(registry.targets()) == ["tripletex", "billdiary"]
    assert list(registry.sources()) == ["findity", "traede", "brex"]
    assert registry.target("tripletex").required_credentials == ("consumer_token",
                                                                  "employee_token")
    with pytest.raises(registry.UnknownSystem, match="use one of: tripletex, billdiary"):
        registry.target("findity")


def test_an_extra_system_is_loaded_from_the_setting(with_ledger_plugin):
    assert list(registry.targets()) == ["tripletex", "billdiary", "ledger"]
    assert registry.display_name("ledger") == "Test Ledger"
    # No default rate policy in its entry: no limiter.
    assert default_policy("ledger") == RateLimitPolicy()


def test_a_target_that_cannot_be_searched_by_our_reference_is_refused():
    tripletex = registry.target("tripletex")
    blind = dataclasses.replace(tripletex, name="blind", capabilities=dataclasses.replace(
        tripletex.capabilities, lookup_by_reference=False))
    with pytest.raises(ValueError, match="exactly-once is impossible"):
        registry._add({}, blind, "test")
    with pytest.raises(ValueError, match="registered twice"):
        registry._add({"tripletex": tripletex}, tripletex, "test")
