"""The poll's Redis lock (``worker.source_jobs._PollLock``): it lives AIC_POLL_LOCK_SECONDS,
is renewed after each connection (and page) polled, and only by its owner. And the report's
lock (``_ReportLock``), renewed by a thread of its own.

It used to live half the poll interval (450 s by default) without renewal: a worker SIGKILLed
while polling made every later poll skip for that long (tests/reliability/
test_feed_source_kills.py shows polls resuming soon after such a kill). Real Redis (the test
session's), and the feed plugin of tests/plugins/feed_source as the polled sources.
"""

from __future__ import annotations

import time

import redis

from shared.config import get_settings, reset_settings_cache
from tests.unit.test_feed_source import _connect, feed  # noqa: F401 - the fixture
from worker import source_jobs

KEY = source_jobs._PollLock.KEY


def _redis() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


def _settings(monkeypatch, seconds: int) -> None:
    monkeypatch.setenv("AIC_POLL_LOCK_SECONDS", str(seconds))
    reset_settings_cache()


def test_the_lock_lives_the_setting_and_is_renewed_only_by_its_owner(monkeypatch):
    _settings(monkeypatch, 30)
    client = _redis()
    client.delete(KEY)
    try:
        first = source_jobs._PollLock()
        assert first.acquire()
        assert 28_000 < client.pttl(KEY) <= 30_000
        assert not source_jobs._PollLock().acquire()  # beat started twice: one poll runs

        client.pexpire(KEY, 2_000)  # time passes while a connection is polled
        assert first.renew()
        assert client.pttl(KEY) > 28_000

        # The first poll stalled past its lock; another poll took it. The late one can neither
        # extend nor release the other's lock.
        client.delete(KEY)
        second = source_jobs._PollLock()
        assert second.acquire()
        client.pexpire(KEY, 5_000)
        token = client.get(KEY)
        assert not first.renew()
        assert client.get(KEY) == token and client.pttl(KEY) <= 5_000
        first.release()
        assert client.get(KEY) == token
        second.release()
        assert client.get(KEY) is None
    finally:
        client.delete(KEY)
        client.close()
        reset_settings_cache()


def test_a_poll_renews_the_lock_after_each_connection(feed, monkeypatch):  # noqa: F811
    _settings(monkeypatch, 30)
    for _ in range(3):
        _connect(feed)
    client = _redis()
    client.delete(KEY)
    seen: list[int] = []

    def polled(connection, result, lock=None):
        # What the lock has left when a connection's poll starts; then this one "takes" 28 s.
        seen.append(client.pttl(KEY))
        client.pexpire(KEY, 2_000)

    monkeypatch.setattr(source_jobs, "_poll_connection", polled)
    try:
        result = source_jobs.poll_sources()
        assert not result.skipped_locked and result.connections >= 3
        assert len(seen) == result.connections
        assert all(ttl > 28_000 for ttl in seen), seen  # renewed each time, not left at 2 s
        assert client.get(KEY) is None  # released at the end
    finally:
        client.delete(KEY)
        client.close()
        reset_settings_cache()


def test_a_poll_that_lost_its_lock_stops_and_leaves_the_other_poll_alone(feed, monkeypatch):  # noqa: F811
    _settings(monkeypatch, 30)
    for _ in range(3):
        _connect(feed)
    client = _redis()
    client.delete(KEY)
    polled_connections: list[str] = []

    def polled(connection, result, lock=None):
        polled_connections.append(connection.id)
        # This poll stalls past its lock; another poll takes it.
        client.delete(KEY)
        client.set(KEY, b"the-other-poll", px=20_000)

    monkeypatch.setattr(source_jobs, "_poll_connection", polled)
    try:
        result = source_jobs.poll_sources()
        assert len(polled_connections) == 1 and result.connections == 1
        assert any("lock" in error for error in result.errors), result.errors
        assert client.get(KEY) == b"the-other-poll"  # neither extended nor released
        assert client.pttl(KEY) <= 20_000
    finally:
        client.delete(KEY)
        client.close()
        reset_settings_cache()


def test_a_poll_after_a_dead_pollers_lock_runs_once_the_lock_lived_its_seconds(monkeypatch):
    _settings(monkeypatch, 5)
    client = _redis()
    client.delete(KEY)
    try:
        dead = source_jobs._PollLock()
        assert dead.acquire()  # and its worker is SIGKILLed: never released, never renewed
        assert source_jobs.poll_sources().skipped_locked
        assert 0 < client.pttl(KEY) <= 5_000  # not the 450 s it used to be
        client.pexpire(KEY, 1)  # its seconds have passed
        time.sleep(0.01)
        assert not source_jobs.poll_sources().skipped_locked
    finally:
        client.delete(KEY)
        client.close()
        reset_settings_cache()


def test_a_reports_lock_is_renewed_by_its_renewer_thread_while_the_report_runs(monkeypatch):
    """The report lock's renewer is another thread: with redis-py's default thread-local token
    it died on its first renewal, and a report longer than AIC_REPORT_LOCK_SECONDS lost its
    lock (found by tests/reliability/test_feed_source_kills.py, a traceback in a worker log)."""
    monkeypatch.setenv("AIC_REPORT_LOCK_SECONDS", "3")
    reset_settings_cache()
    lock = source_jobs._ReportLock("unit-test-report")
    client = _redis()
    try:
        assert lock.acquire()
        time.sleep(4.5)  # renewed at 1 s, 2 s, 3 s, 4 s
        assert lock.held
        assert client.pttl("aic:report-lock:unit-test-report") > 1_500
        assert lock._renewer.is_alive()
    finally:
        lock.release()
        assert client.get("aic:report-lock:unit-test-report") is None
        client.close()
        reset_settings_cache()
