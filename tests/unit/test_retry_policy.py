"""The retry decision table of ``worker.retry_policy``: one row per task kind and cause."""

import random

import pytest

from shared.config import get_settings
from shared.integrations.errors import (
    AuthError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from worker.retry_policy import (
    ATTEMPT_FAILED,
    DATABASE_OUTAGE,
    REGIMES,
    TaskKind,
    backoff_delay,
    decide,
)

EXPORT, INGEST, REPORT, MARK = (REGIMES[kind] for kind in TaskKind)
TRANSIENT = TransientError("503", system="target")
PERMANENT = PermanentError("422", system="target")


def test_every_task_kind_has_a_regime():
    assert set(REGIMES) == set(TaskKind)
    assert all(regime.kind is kind for kind, regime in REGIMES.items())


def test_backoff_grows_exponentially_within_jittered_bounds():
    settings = get_settings()
    rng = random.Random(7)
    for attempt in range(1, 6):
        ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, rng=rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jitter spreads a burst of retries


def test_backoff_of_a_task_retried_for_days_stays_at_the_cap():
    # Reports retry without limit: the 5000th attempt must not overflow the float exponent.
    settings = get_settings()
    assert settings.retry_max_seconds / 2 <= backoff_delay(5000) <= settings.retry_max_seconds


@pytest.mark.parametrize("regime", [EXPORT, INGEST], ids=lambda r: r.kind.value)
@pytest.mark.parametrize("cause", [TRANSIENT, ATTEMPT_FAILED], ids=["error", "failed step"])
def test_budgeted_kinds_retry_transient_failures_until_the_attempts_are_used_up(regime, cause):
    limit = get_settings().max_attempts
    first = decide(regime, cause, 1)
    assert first.retry and not first.refund
    assert decide(regime, cause, limit - 1).retry
    assert not decide(regime, cause, limit).retry


@pytest.mark.parametrize("regime", [REPORT, MARK], ids=lambda r: r.kind.value)
def test_report_and_mark_retry_transient_failures_without_limit(regime):
    settings = get_settings()
    for attempt in (1, settings.max_attempts, 10 * settings.max_attempts, 10_000):
        decision = decide(regime, ATTEMPT_FAILED, attempt)
        assert decision.retry and 0 < decision.delay <= settings.retry_max_seconds


@pytest.mark.parametrize("regime", list(REGIMES.values()), ids=lambda r: r.kind.value)
@pytest.mark.parametrize("error", [PERMANENT, AuthError("401", system="target")],
                         ids=["permanent", "auth"])
def test_permanent_errors_never_retry_for_any_kind(regime, error):
    assert not decide(regime, error, 1).retry


@pytest.mark.parametrize("regime", list(REGIMES.values()), ids=lambda r: r.kind.value)
def test_a_rate_limit_waits_at_least_what_the_server_said(regime):
    settings = get_settings()
    wait = min(settings.retry_max_seconds, 2.5)
    decision = decide(regime, RateLimitedError("429", system="target", retry_after=wait), 1)
    assert decision.retry and decision.delay >= wait


def test_a_rate_limited_export_gets_its_attempt_back_even_on_its_last_attempt():
    limit = get_settings().max_attempts
    decision = decide(EXPORT, RateLimitedError("429", system="target"), limit)
    assert decision.retry and decision.refund


def test_a_rate_limited_ingest_uses_up_an_attempt():
    limit = get_settings().max_attempts
    rate_limited = RateLimitedError("429", system="source")
    assert decide(INGEST, rate_limited, 1).retry
    assert not decide(INGEST, rate_limited, 1).refund
    assert not decide(INGEST, rate_limited, limit).retry


@pytest.mark.parametrize("regime", [EXPORT, INGEST], ids=lambda r: r.kind.value)
def test_a_database_outage_retries_once_the_attempts_lease_has_run_out(regime):
    settings = get_settings()
    for attempt in (1, settings.max_attempts, 10 * settings.max_attempts):
        decision = decide(regime, DATABASE_OUTAGE, attempt)
        assert decision.retry and decision.refund
        assert decision.delay == settings.export_lease_seconds


@pytest.mark.parametrize("regime", [REPORT, MARK], ids=lambda r: r.kind.value)
def test_a_database_outage_backs_off_for_kinds_without_a_lease(regime):
    settings = get_settings()
    for attempt in (1, 50):
        decision = decide(regime, DATABASE_OUTAGE, attempt)
        ceiling = min(settings.retry_max_seconds,
                      settings.retry_base_seconds * 2 ** min(attempt - 1, 30))
        assert decision.retry and ceiling / 2 <= decision.delay <= ceiling
