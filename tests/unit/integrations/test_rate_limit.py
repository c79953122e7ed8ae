"""The shared rate limiter against the tests' real Redis (``AIC_REDIS_URL``, a real redis-server).

What is measured is correctness, not speed: the request start times that threads and separate
processes achieve through one limiter, the in-flight count under a concurrency cap, a pause the
server announced, the slot of a SIGKILLed holder, and what happens when Redis is unreachable.
Start times are taken after ``acquire`` returns, so they include the sleep's wake-up jitter;
``JITTER`` is the tolerance for that on a busy two-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
import redis as redis_lib

from devstack.processes import free_port
from shared.config import PROJECT_ROOT, get_settings
from shared.db.models import TargetConnection
from shared.db.session import session_scope
from shared.integrations import rate_limit
from shared.integrations.errors import PermanentError, RateLimitedError
from shared.integrations.rate_limit import (
    RateLimiter,
    RateLimitPolicy,
    default_policy,
    limiter_for,
    policy_from_options,
)
from shared.integrations.targets import client_for
from shared.integrations.tripletex import TripletexClient

JITTER = 0.05  # seconds


@pytest.fixture
def name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def redis_client():
    client = redis_lib.Redis.from_url(get_settings().redis_url)
    yield client
    client.close()


def max_in_window(starts: list[float], length: float) -> int:
    """The most start times found in any half-open interval of ``length`` seconds."""
    starts = sorted(starts)
    best, lo = 0, 0
    for hi, t in enumerate(starts):
        while t - starts[lo] >= length:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def assert_within_policy(starts: list[float], policy: RateLimitPolicy, duration: float) -> dict:
    """No window of the policy holds more than ``burst`` starts, no second more than the rate,
    and the limiter did not starve anyone either (at least 80% of what the rate allows)."""
    window = policy.window_seconds
    figures = {
        "requests": len(starts),
        "max_per_window": max_in_window(starts, window - JITTER),
        "max_per_second": max_in_window(starts, 1.0 - JITTER),
        "mean_rate": round((len(starts) - policy.burst) / (max(starts) - min(starts)), 2),
    }
    assert figures["max_per_window"] <= policy.burst, figures
    assert figures["max_per_second"] <= policy.requests_per_second, figures
    assert figures["mean_rate"] <= policy.requests_per_second * 1.05, figures
    allowed = policy.burst + policy.requests_per_second * duration
    assert len(starts) >= 0.8 * (allowed - policy.burst), figures
    return figures


# --- configuration -------------------------------------------------------------------------


def test_policy_options_merge_over_the_target_default() -> None:
    default = RateLimitPolicy(requests_per_second=10, burst=10, max_concurrent=0)
    assert policy_from_options({}, default) == default
    assert policy_from_options({"send_to_ledger": True}, default) == default
    # A new rate without a burst is evenly spaced, not given the default's burst.
    assert policy_from_options({"rate_limit": {"requests_per_second": 4}}, default) == (
        RateLimitPolicy(4, 1, 0))
    assert policy_from_options(
        {"rate_limit": {"requests_per_second": 4, "burst": 1, "max_concurrent": 1}}, default
    ) == RateLimitPolicy(4, 1, 1)
    assert policy_from_options({"rate_limit": {"max_concurrent": 2}}, default) == (
        RateLimitPolicy(10, 10, 2))
    assert not policy_from_options({"rate_limit": False}, default).limits_anything
    assert not policy_from_options({"rate_limit": {"enabled": False}}, default).limits_anything
    assert RateLimitPolicy(8, 8).window_seconds == 1.0
    assert RateLimitPolicy(4, 1).window_seconds == 0.25


@pytest.mark.parametrize("bad", [{"requests_per_sec": 4}, {"burst": 0}, "fast",
                                 {"requests_per_second": -1}])
def test_invalid_option_is_a_readable_permanent_error(bad: Any) -> None:
    with pytest.raises(PermanentError) as caught:
        policy_from_options({"rate_limit": bad}, RateLimitPolicy(10, 10), system="tripletex")
    assert "rate_limit option is invalid" in caught.value.message
    assert caught.value.code == "invalid_rate_limit_option"


def test_tripletex_default_comes_from_settings() -> None:
    settings = get_settings()
    assert default_policy("tripletex") == RateLimitPolicy(
        settings.tripletex_rate_limit_per_second, settings.tripletex_rate_limit_burst,
        settings.tripletex_rate_limit_max_concurrent)
    assert limiter_for("c1", "tripletex", {"rate_limit": False}) is None


def test_target_client_gets_the_connections_limiter(org) -> None:
    with session_scope() as session:
        connection = session.query(TargetConnection).filter_by(organization_id=org.id).one()
        connection.options = {"rate_limit": {"requests_per_second": 8, "burst": 8,
                                             "max_concurrent": 4}}
    with session_scope() as session:
        connection = session.query(TargetConnection).filter_by(organization_id=org.id).one()
        client = client_for(connection)
        assert isinstance(client, TripletexClient)
        assert client.limiter is not None
        assert client.limiter.policy == RateLimitPolicy(8, 8, 4)
        assert client.limiter.keys["window"] == f"aic:ratelimit:{{{connection.id}}}:window"
        connection.options = {"rate_limit": False}
    with session_scope() as session:
        connection = session.query(TargetConnection).filter_by(organization_id=org.id).one()
        assert client_for(connection).limiter is None


# --- the rate -------------------------------------------------------------------------------


def test_rate_is_respected_across_threads(name: str) -> None:
    policy = RateLimitPolicy(requests_per_second=20, burst=5)
    limiter = RateLimiter(name, policy)
    duration, starts, lock = 2.0, [], threading.Lock()
    stop_at = time.monotonic() + duration

    def hammer() -> None:
        while True:
            with limiter.acquire():
                now = time.monotonic()
                if now >= stop_at:
                    return
                with lock:
                    starts.append(now)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    figures = assert_within_policy(starts, policy, duration)
    print(f"threads: {figures}")


CHILD = r"""
import json, sys, threading, time
import redis
from shared.config import get_settings
from shared.integrations.rate_limit import RateLimiter, RateLimitPolicy
name, rps, burst, concurrent, duration, threads, hold = sys.argv[1:]
duration, hold = float(duration), float(hold)
limiter = RateLimiter(name, RateLimitPolicy(float(rps), int(burst), int(concurrent)),
                      max_wait_seconds=30)
counter = redis.Redis.from_url(get_settings().redis_url)
counter.ping()
print("ready", flush=True)
start_at = float(sys.stdin.readline())  # the parent's go, once every child is ready
stop_at = start_at + duration
seen, lock = [], threading.Lock()
def hammer():
    time.sleep(max(0.0, start_at - time.time()))
    while True:
        with limiter.acquire():
            now = time.time()
            if now >= stop_at:
                return
            in_flight = counter.incr(name + ":in-flight")
            time.sleep(hold)
            counter.decr(name + ":in-flight")
        with lock:
            seen.append([now, in_flight])
workers = [threading.Thread(target=hammer) for _ in range(int(threads))]
[w.start() for w in workers]
[w.join() for w in workers]
print(json.dumps(seen))
"""


def run_children(name: str, policy: RateLimitPolicy, *, processes: int, threads: int,
                 duration: float, hold: float) -> list[list[float]]:
    """Start ``processes`` Python processes that hammer one limiter from ``threads`` threads
    each, all beginning at the same wall-clock moment; return their (start, in-flight) pairs.

    The moment is given only once every child has imported the project and reached Redis (each
    says "ready"): on a loaded machine an interpreter can take seconds to start, and a fixed
    start time would let the window pass before a child begins."""
    argv = [name, str(policy.requests_per_second), str(policy.burst), str(policy.max_concurrent),
            str(duration), str(threads), str(hold)]
    children = [subprocess.Popen([sys.executable, "-c", CHILD, *argv], cwd=PROJECT_ROOT,
                                 env=dict(os.environ), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(processes)]
    for child in children:
        line = child.stdout.readline()
        assert line.strip() == "ready", (line, child.stderr.read() if child.poll() is not None
                                         else "")
    start_at = time.time() + 0.2
    for child in children:
        child.stdin.write(f"{start_at}\n")
        child.stdin.flush()
    seen: list[list[float]] = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        seen.extend(json.loads(out))
    return seen


def test_rate_is_respected_across_processes(name: str) -> None:
    policy = RateLimitPolicy(requests_per_second=20, burst=5)
    duration = 2.5
    seen = run_children(name, policy, processes=3, threads=3, duration=duration, hold=0.0)
    figures = assert_within_policy([t for t, _ in seen], policy, duration)
    print(f"3 processes x 3 threads: {figures}")


def test_concurrency_cap_is_respected_across_processes(name: str) -> None:
    policy = RateLimitPolicy(requests_per_second=0, burst=1, max_concurrent=2)
    seen = run_children(name, policy, processes=3, threads=3, duration=1.5, hold=0.05)
    peak = max(in_flight for _, in_flight in seen)
    print(f"concurrency: {len(seen)} requests, peak in flight {peak}")
    assert peak == 2  # never more, and the cap is actually used
    # Two slots held 50 ms each for 1.5 s: about 60 requests if waiters are woken promptly.
    assert len(seen) >= 35, len(seen)


def test_waiter_sleeps_until_a_release_instead_of_polling(name: str, monkeypatch) -> None:
    limiter = RateLimiter(name, RateLimitPolicy(max_concurrent=1))
    holder = limiter.acquire()
    backend = rate_limit._backend()
    reserve, tries = backend.reserve, []
    monkeypatch.setattr(backend, "reserve",
                        lambda *args, **kwargs: (tries.append(1), reserve(*args, **kwargs))[1])
    got: list[float] = []

    def wait_for_slot() -> None:
        started = time.monotonic()
        with limiter.acquire(timeout=5):
            got.append(time.monotonic() - started)

    waiter = threading.Thread(target=wait_for_slot)
    waiter.start()
    time.sleep(0.5)
    holder.release()
    waiter.join(timeout=5)
    assert got and 0.45 <= got[0] < 0.7, got
    # One refused try, then it slept on the wake-up list; one granted try: no polling.
    assert len(tries) == 2


def test_wait_bound_raises_rate_limited_with_retry_after(name: str, redis_client) -> None:
    limiter = RateLimiter(name, RateLimitPolicy(requests_per_second=1, burst=1))
    limiter.acquire().release()
    started = time.monotonic()
    with pytest.raises(RateLimitedError) as caught:
        limiter.acquire(timeout=0.2)
    assert time.monotonic() - started < 0.15  # refused at once: it knew the wait
    assert 0.8 <= caught.value.retry_after <= 1.0
    assert caught.value.code == "rate_limit_wait"
    # The refused call reserved nothing: the next one gets the very next slot.
    assert redis_client.zcard(limiter.keys["window"]) == 1
    limiter.acquire(timeout=2).release()
    assert 0.8 <= time.monotonic() - started <= 1.2


def test_all_slots_busy_past_the_bound_is_refused(name: str) -> None:
    limiter = RateLimiter(name, RateLimitPolicy(max_concurrent=1))
    with limiter.acquire():
        started = time.monotonic()
        with pytest.raises(RateLimitedError):
            limiter.acquire(timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 0.6
    limiter.acquire(timeout=0.1).release()


# --- what the server announced --------------------------------------------------------------


def test_exhausted_budget_pauses_every_holder_of_the_key(name: str, redis_client) -> None:
    policy = RateLimitPolicy(requests_per_second=100, burst=100)
    one, other = RateLimiter(name, policy), RateLimiter(name, policy)  # as in two processes
    one.observe(remaining=3, reset_seconds=1.0)
    one.observe(remaining=0, reset_seconds=None)  # no reset: nothing to wait for
    one.observe(remaining=None, reset_seconds=None)  # a 429 with only Retry-After
    assert redis_client.get(one.keys["pause"]) is None
    one.observe(remaining=0, reset_seconds=1.0)
    assert 0 < redis_client.pttl(one.keys["pause"]) <= 2000
    with pytest.raises(RateLimitedError) as caught:
        other.acquire(timeout=0.3)
    assert 0.7 <= caught.value.retry_after <= 1.0
    started = time.monotonic()
    other.acquire(timeout=2).release()
    assert 0.6 <= time.monotonic() - started <= 1.1


def test_pause_announced_during_a_reserved_sleep_is_honoured(name: str) -> None:
    limiter = RateLimiter(name, RateLimitPolicy(requests_per_second=2, burst=1))
    limiter.acquire().release()  # the next slot is 0.5 s away
    started = time.monotonic()
    done: list[float] = []
    thread = threading.Thread(
        target=lambda: (limiter.acquire(timeout=5).release(), done.append(time.monotonic())))
    thread.start()
    time.sleep(0.1)  # the thread has reserved +0.5 s and sleeps
    limiter.observe(remaining=0, reset_seconds=1.0)
    thread.join(timeout=5)
    assert done and done[0] - started >= 1.05


def test_client_waits_out_the_servers_reset_instead_of_getting_429(
        tripletex_sandbox, name: str) -> None:
    """The real Tripletex sandbox allows 3 requests per 2 s window and says so in its headers.
    Without a limiter the 4th request is a 429 (the control); with one it waits for the reset."""
    def run(limiter: RateLimiter | None) -> list[str]:
        company = tripletex_sandbox.create_company()
        tripletex_sandbox.set_faults(company["company_id"], rate_limit={
            "limit": 3, "window_seconds": 2, "send_reset_header": True})
        outcomes = []
        with TripletexClient(tripletex_sandbox.base_url, consumer_token=company["consumer_token"],
                             employee_token=company["employee_token"], limiter=limiter) as client:
            for _ in range(4):  # the session PUT + 4 whoAmI = 5 requests
                try:
                    client.check_connection()
                    outcomes.append("ok")
                except RateLimitedError:
                    outcomes.append("429")
        return outcomes

    assert run(None) == ["ok", "ok", "429", "429"]
    started = time.monotonic()
    limiter = RateLimiter(name, RateLimitPolicy(requests_per_second=100, burst=100))
    assert run(limiter) == ["ok", "ok", "ok", "ok"]
    assert time.monotonic() - started >= 1.5  # it waited for the window's reset


# --- failures -------------------------------------------------------------------------------


def test_slot_of_a_killed_holder_expires(name: str) -> None:
    lease = 1.5
    holder = (
        "import time\n"
        "from shared.integrations.rate_limit import RateLimiter, RateLimitPolicy\n"
        f"RateLimiter({name!r}, RateLimitPolicy(max_concurrent=1), lease_seconds={lease})"
        ".acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", holder], cwd=PROJECT_ROOT,
                             env=dict(os.environ), stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        held_at = time.monotonic()
        limiter = RateLimiter(name, RateLimitPolicy(max_concurrent=1))
        with pytest.raises(RateLimitedError):
            limiter.acquire(timeout=0.2)
    finally:
        child.kill()  # SIGKILL: no release, no cleanup
        child.wait()
    limiter.acquire(timeout=5).release()
    waited = time.monotonic() - held_at
    assert lease - 0.2 <= waited <= lease + 1.0, waited


def test_fails_open_when_redis_is_unreachable(name: str) -> None:
    limiter = RateLimiter(name, RateLimitPolicy(requests_per_second=1, burst=1,
                                                max_concurrent=1),
                          redis_url=f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    for _ in range(5):  # far over the policy: none of them waits or raises
        with limiter.acquire():
            pass
    limiter.observe(remaining=0, reset_seconds=5)
    assert time.monotonic() - started < 1.0
