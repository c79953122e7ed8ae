"""A tenant out of rate budget hands the worker thread back (issue 12, target 4).

``worker.export_job`` asks the connection's limiter to admit an export before claiming it
(``RateLimiter.admit``, real Redis). Behaviour, not speed: a refusal spends no attempt, writes no
event, posts nothing and returns at once with the export's turn as the countdown; turns of a
backlog are spaced one request interval apart; an admission is taken out of ``pending`` by the
export's first request, or withdrawn when the export sent none.
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis as redis_lib
from sqlalchemy import select

from shared.config import get_settings
from shared.db.models import AccountingExport, ExportEvent
from shared.db.session import session_scope
from shared.domain import exports
from shared.integrations.errors import RateLimitedError
from shared.integrations.rate_limit import RateLimiter, RateLimitPolicy
from tests.unit.fake_target import FakeTarget
from worker import export_job

RATE = RateLimitPolicy(requests_per_second=5, burst=1)  # one request every 0.2 s


@pytest.fixture
def redis_client():
    client = redis_lib.Redis.from_url(get_settings().redis_url)
    yield client
    client.close()


def _limiter(**kwargs) -> RateLimiter:
    return RateLimiter(f"test-{uuid.uuid4().hex[:12]}", RATE, **kwargs)


def _pending(redis_client, limiter: RateLimiter) -> int:
    return redis_client.zcard(limiter.keys["pending"])


def test_an_idle_connection_admits_and_the_first_request_takes_the_admission(redis_client):
    limiter = _limiter()
    with limiter.admit(timeout=0.5) as admission:
        assert _pending(redis_client, limiter) == 1
        with limiter.acquire():
            pass
        # Reserved and un-pended in one step: the request now counts in the window instead.
        assert admission.used and _pending(redis_client, limiter) == 0
        with limiter.acquire():  # a second request of the same export: an ordinary permit
            pass
    assert _pending(redis_client, limiter) == 0


def test_an_admission_no_request_used_is_withdrawn(redis_client):
    limiter = _limiter()
    with limiter.admit(timeout=0.5):
        assert _pending(redis_client, limiter) == 1
    assert _pending(redis_client, limiter) == 0


def test_admitted_exports_count_against_the_wait_bound():
    limiter = _limiter()
    # 0.5 s at 0.2 s per request: the 1st (now), 2nd (0.2 s), 3rd (0.4 s) may start in time.
    admitted = [limiter.admit(timeout=0.5).__enter__() for _ in range(3)]
    with pytest.raises(RateLimitedError) as refused:
        limiter.admit(timeout=0.5)
    assert refused.value.code == "rate_limit_deferred" and refused.value.sent is False
    # Its turn is at 0.6 s; it is told to come back half the bound early.
    assert 0.25 < refused.value.retry_after <= 0.45
    for admission in admitted:
        admission.__exit__(None, None, None)


def test_refused_exports_get_turns_one_interval_apart_not_one_herd():
    limiter = _limiter()
    limiter.pause(2.0)  # the budget is taken for the next 2 s (as a server's reset would)
    turns = []
    for _ in range(5):
        with pytest.raises(RateLimitedError) as refused:
            limiter.admit(timeout=0.5)
        turns.append(refused.value.retry_after)
    assert 1.55 < turns[0] <= 1.8, turns  # the turn at 2 s, half the 0.5 s bound early
    gaps = [later - earlier for earlier, later in zip(turns, turns[1:], strict=False)]
    # Each call's "now" is a little later than the previous one's, so a gap is just under 0.2 s.
    assert all(0.15 < gap <= 0.2 + 1e-6 for gap in gaps), turns


# --- through the export job ---------------------------------------------------------------------


@pytest.fixture
def target(monkeypatch) -> FakeTarget:
    # The admission is on by default (0.5, shared/config.py); these tests pin it.
    monkeypatch.setattr(get_settings(), "rate_limit_admit_wait_seconds", 0.5)
    fake = FakeTarget()
    fake.limiter = _limiter()
    monkeypatch.setattr(export_job, "client_for", lambda connection: fake)
    return fake


@pytest.fixture
def export_id(org, make_expense) -> str:
    with session_scope() as session:
        return exports.create_export(session, org.id, make_expense(), "tripletex",
                                     actor="test").id


def _state(export_id: str) -> tuple[AccountingExport, list[str]]:
    with session_scope() as session:
        row = session.get(AccountingExport, export_id)
        kinds = session.scalars(select(ExportEvent.kind).where(ExportEvent.export_id == export_id)
                                .order_by(ExportEvent.id)).all()
        return row, list(kinds)


def test_a_refusal_spends_no_attempt_posts_nothing_and_does_not_hold_the_thread(
        target, export_id, monkeypatch):
    # A turn beyond the longest countdown is not given (the tests' AIC_RETRY_MAX_SECONDS is 3).
    monkeypatch.setattr(get_settings(), "retry_max_seconds", 10.0)
    paused = time.monotonic()
    target.limiter.pause(3.0)
    before, events_before = _state(export_id)
    deferrals = _deferrals(before.target_system)

    started = time.monotonic()
    outcome = export_job.run_export(export_id, celery_task_id="t1")
    elapsed = time.monotonic() - started

    # It comes back half the 0.5 s wait bound before its turn, the end of the pause (measured
    # from before the pause: a loaded machine may take a while between the two).
    assert outcome.kind == "retry", outcome
    assert 2.75 - (time.monotonic() - paused) - 0.05 < outcome.retry_in <= 2.80, outcome
    # Returned at once: the thread did not sleep on this connection's budget.
    assert elapsed < 1.0, elapsed
    after, events_after = _state(export_id)
    assert after.attempts == before.attempts == 0
    assert events_after == events_before  # no "started", no "retry_scheduled"
    assert target.posts_sent == 0 and target.stored == []
    assert after.lease_owner is None and after.posting_started_at is None
    # The due time moved with it, so a duplicate delivery before the turn is skipped and the
    # sweeper does not take the export for stuck.
    assert after.next_attempt_at > before.next_attempt_at
    assert export_job.run_export(export_id).detail.startswith("not due yet")
    # Operators see refusals in the metrics (there is no event row to count).
    assert _deferrals(before.target_system) == deferrals + 1


def _deferrals(target_system: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("aic_rate_limit_deferrals_total",
                                     {"target": target_system}) or 0.0


def test_after_its_turn_the_export_posts_once_with_one_attempt(target, export_id, monkeypatch):
    target.limiter.pause(0.8)
    outcome = export_job.run_export(export_id, celery_task_id="t1")
    assert outcome.kind == "retry"
    time.sleep(outcome.retry_in + 0.1)
    assert export_job.run_export(export_id, celery_task_id="t2").kind == "success"
    row, kinds = _state(export_id)
    assert row.attempts == 1 and len(target.stored) == 1
    assert kinds.count("started") == 1 and "retry_scheduled" not in kinds


def test_a_turn_beyond_the_longest_countdown_takes_no_place_in_the_line():
    limiter = _limiter()
    limiter.pause(1.0)
    turns = []
    for _ in range(8):
        with pytest.raises(RateLimitedError) as refused:
            limiter.admit(timeout=0.1, max_turn=1.5)
        turns.append(refused.value.retry_after)
    # Turns at ~1.0, 1.2, 1.4 s; the rest come back after the longest countdown and ask again
    # instead of pushing the line ever further (it would outrun the real backlog).
    assert 0.9 < turns[0] < turns[1] < turns[2] < 1.5, turns
    assert all(0.75 <= t <= 1.5 for t in turns[3:]), turns  # spread, not one herd


def test_with_the_admission_off_a_spent_budget_is_waited_for_in_acquire(
        monkeypatch, org, make_expense):
    """Off (None): the claim asks no limiter, the thread waits in ``acquire`` within
    ``AIC_RATE_LIMIT_MAX_WAIT_SECONDS`` and the export posts in this attempt."""
    monkeypatch.setattr(get_settings(), "rate_limit_admit_wait_seconds", None)
    fake = FakeTarget()
    fake.limiter = _limiter()
    monkeypatch.setattr(export_job, "client_for", lambda connection: fake)
    with session_scope() as session:
        export_id = exports.create_export(session, org.id, make_expense(), "tripletex",
                                          actor="test").id
    fake.limiter.pause(0.8)
    assert export_job.run_export(export_id, celery_task_id="t1").kind == "success"
    assert len(fake.stored) == 1


@pytest.mark.parametrize(("value", "expected"), [(None, 0.5), ("off", None), ("", None),
                                                 ("0.25", 0.25)])
def test_the_admission_is_on_by_default_and_off_says_off(monkeypatch, value, expected) -> None:
    from shared.config import Settings

    if value is None:
        monkeypatch.delenv("AIC_RATE_LIMIT_ADMIT_WAIT_SECONDS", raising=False)
    else:
        monkeypatch.setenv("AIC_RATE_LIMIT_ADMIT_WAIT_SECONDS", value)
    assert Settings().rate_limit_admit_wait_seconds == expected
