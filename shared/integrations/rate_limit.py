"""One request budget per target connection, shared by every worker process through Redis.

Target APIs limit per connection (Tripletex per employee token, Fiken about 4 requests/s and one
at a time per token). Each worker process runs many threads and there may be many processes, so
the budget lives in Redis, not in memory: every HTTP request a client sends first takes a
permit here::

    with limiter.acquire():          # may sleep; raises RateLimitedError past the wait bound
        response = http.request(...)
    limiter.observe(remaining=<X-Rate-Limit-Remaining>, reset_seconds=<X-Rate-Limit-Reset>)

**Algorithm: a sliding-window log with reservations.** A policy is ``burst`` requests per
``window = burst / requests_per_second`` seconds: no interval of ``window`` seconds ever holds more
than ``burst`` request starts. A Lua script (atomic, on Redis's clock, so hosts' clocks do not
matter) keeps the start times of the last window in a sorted set and *reserves* the earliest
start time ``t`` that keeps that promise: ``t = max(now, the last reservation, the burst-th
latest reservation + window, a server-announced pause)``. The caller sleeps exactly until ``t``
and sends. Why this and not a token bucket:

- A token bucket of rate r and burst b lets ``b + r*T`` requests through in T seconds: 8/s with
  burst 8 can send 16 within one second, which a server counting 10 per window (as the Tripletex
  sandbox does) answers with 429s. The sliding window never exceeds ``burst`` in any window,
  however the server aligns its own windows.
- Reserving (rather than "check, and if full sleep and try again") makes waiting threads a FIFO
  queue: one Redis call per request, a computed sleep, no thundering herd where 30 threads wake
  together and the unlucky ones starve until they time out.
- The log holds at most ``burst`` live entries per connection: small.

Keep ``burst`` small (the default for a connection that sets only a rate is 1: evenly spaced).
We schedule when requests *leave*; the server counts when they *arrive*. A request delayed by CPU
or network jitter J can share a server window with requests that left up to one window later,
so the server may see ``rate + (requests sent within J)`` in one window: with burst 8 that is up
to 8 extra, with evenly spaced requests about ``J * rate``. Configure the rate a little under the
server's limit and the burst at most that margin.

**Concurrency** (``max_concurrent``, Fiken's "one at a time") is a semaphore in the same script:
a sorted set of permit ids scored by their lease expiry. A released permit removes itself and
pushes a wake-up onto a list that waiters block on (BLPOP), so a waiter sleeps until a release,
at most until the earliest lease expires: a SIGKILLed worker's slot frees itself after
``rate_limit_lease_seconds``. The slot is taken before the time reservation, and both in one
atomic step, so a request is sent exactly at its reserved time.

**The server's word.** When a response (a 429 included) says ``X-Rate-Limit-Remaining: 0`` with
``X-Rate-Limit-Reset``, ``observe`` stores "paused until" in Redis and every process's next
reservation starts after it; a thread that had reserved earlier checks the pause again after its
sleep. Those headers describe the token's budget, which all our processes share. A ``Retry-After``
alone is not turned into a pause: it answers one request, and the retry policy already delays that
export by it. (Pausing on it would also hold back the lookup the worker makes right after a
refused POST to learn that nothing was booked, which keeps the export cancellable.)

**Bounded waiting.** ``acquire(timeout)`` never waits longer than ``timeout`` (default
``rate_limit_max_wait_seconds``). If the reserved time would be later, nothing is reserved and
``RateLimitedError(retry_after=<the wait>)`` goes to the retry policy: the export retries later
instead of holding a worker thread.

**Admission: a tenant out of budget holds no worker thread.** Threads are shared by every
tenant, the budgets are not. A worker that took one tenant's export and then slept in
``acquire`` until that tenant's budget freed would hold the thread while other tenants' exports
wait in the queue behind it: with batches queued back to back, the whole pool would sleep on the
first tenant's budget. So before a worker *claims* an export it asks ``admit()``: is this
connection's next free start (after the requests already reserved and the exports already
admitted but not yet sending, ``pending``) within ``rate_limit_admit_wait_seconds``? Yes: the
export is admitted (it joins ``pending`` until its first request reserves a start, which removes
it in the same atomic step) and runs; its requests still take permits as above, so the
sliding-window promise is untouched. No: nothing is reserved and ``RateLimitedError`` says when
to come back; the worker hands the thread back and re-schedules the export for then (no attempt
used, nothing posted; ``worker.export_job``). Refused exports are given *distinct* return times,
one request interval apart along a per-connection ``line``, so a backlog of hundreds comes back
one at a time at the rate the budget frees instead of as a herd that is refused again together.
Each comes back half the wait bound before its turn: a countdown fires late on a busy worker, and
a start nobody takes on time is budget lost; early, it is admitted and waits the rest in
``acquire``.
A turn beyond the longest countdown the broker may hold (``retry_max_seconds``) gets no place in
the line: that export comes back within the second half of the longest countdown (spread, not a
herd) and asks again.
An admission is an estimate, not a permit: an export needing several requests (a cold client's
session and lookups) may still wait in ``acquire`` for the later ones, boundedly.

**Redis down: fail open.** If Redis cannot be reached the request is sent unthrottled and Redis is
left alone for ``rate_limit_redis_retry_seconds`` (one warning per outage, not a timeout per
request). The limiter only keeps us polite; the target still enforces its limit with 429s, which
the retry policy already handles without losing or doubling anything. Failing closed would turn a
Redis blip into every in-flight export failing over to a retry, and the retry itself must be
published to the same Redis (it is the Celery broker), so it would buy nothing.

Keys (one hash tag per connection, so a Redis Cluster keeps them on one node):
``aic:ratelimit:{<connection id>}:window`` (sorted set of reserved start times),
``...:slots`` (sorted set of permit ids by lease expiry), ``...:released`` (wake-up list),
``...:pause`` (paused until, microseconds of Redis time), ``...:pending`` (admitted exports by
expiry), ``...:line`` (the last return time handed to a refused export). All of them expire on
their own.
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.config import get_settings
from shared.integrations.errors import PermanentError, RateLimitedError
from shared.logs import get_logger
from shared.metrics import RATE_LIMIT_WAIT_SECONDS

log = get_logger(__name__)

KEY_PREFIX = "aic:ratelimit"
# A reset header is believed up to this long; beyond it the retry policy's backoff takes over.
MAX_PAUSE_SECONDS = 3600.0
# Longest single BLPOP while waiting for a concurrency slot; below the Redis socket timeout.
_BLOCK_CHUNK_SECONDS = 1.0

_GRANTED, _SLOT_BUSY, _TOO_LATE = 0, 1, 2
# An admitted export leaves ``pending`` when its first request reserves a start, or when its task
# ends. Longer than the database work between the two; a SIGKILLed worker's admission stops
# counting after it (until then the connection's estimate is one interval too long: harmless).
PENDING_TTL_SECONDS = 30.0

_NOW = """
if redis.replicate_commands then redis.replicate_commands() end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function int(x) return string.format('%.0f', x) end
"""

# KEYS: window, slots, pause, pending
# ARGV: limit (0 = no rate), window_us, max_wait_us, permit id, max_concurrent (0 = no cap),
#       lease_us, admission id ('' = none: removed from pending once this request has its start)
# -> {status, wait_us}: GRANTED with the wait until the reserved start; SLOT_BUSY with the time
#    until the earliest lease expires; TOO_LATE with the wait it would have taken.
_RESERVE = _NOW + """
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_wait, member = tonumber(ARGV[3]), ARGV[4]
local max_concurrent, lease = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_us()

if max_concurrent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', int(now))
  if redis.call('ZCARD', KEYS[2]) >= max_concurrent then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {1, math.max(0, tonumber(first[2]) - now)}
  end
end

local t = math.max(now, tonumber(redis.call('GET', KEYS[3]) or '0'))
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now - window))
  local n = redis.call('ZCARD', KEYS[1])
  if n > 0 then
    t = math.max(t, tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]))
    if n >= limit then
      local nth = redis.call('ZRANGE', KEYS[1], -limit, -limit, 'WITHSCORES')
      t = math.max(t, tonumber(nth[2]) + window)
    end
  end
end

local wait = t - now
if wait > max_wait then
  return {2, wait}
end
if limit > 0 then
  redis.call('ZADD', KEYS[1], int(t), member)
  redis.call('PEXPIRE', KEYS[1], math.ceil((wait + window) / 1000) + 1000)
end
if max_concurrent > 0 then
  redis.call('ZADD', KEYS[2], int(t + lease), member)
  redis.call('PEXPIRE', KEYS[2], math.ceil((wait + lease) / 1000) + 1000)
end
if ARGV[7] ~= '' then
  redis.call('ZREM', KEYS[4], ARGV[7])
end
return {0, wait}
"""

# KEYS: window, pause, pending, line
# ARGV: limit, window_us, max_wait_us, admission id, pending_ttl_us, max_turn_us
# -> {status, wait_us}: GRANTED (admitted) with the estimated wait of its first request;
#    TOO_LATE with the wait until this export's own return time along the line, or max_turn
#    (the longest countdown the caller can keep) without a place in the line.
_ADMIT = _NOW + """
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_wait, member, ttl = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local max_turn = tonumber(ARGV[6])
local spacing = window / limit
local now = now_us()

local t = math.max(now, tonumber(redis.call('GET', KEYS[2]) or '0'))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now - window))
local n = redis.call('ZCARD', KEYS[1])
if n > 0 then
  t = math.max(t, tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]))
  if n >= limit then
    local nth = redis.call('ZRANGE', KEYS[1], -limit, -limit, 'WITHSCORES')
    t = math.max(t, tonumber(nth[2]) + window)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', int(now))
-- Every admitted export that has not reserved its first start yet will take one interval.
local estimate = t + redis.call('ZCARD', KEYS[3]) * spacing
if estimate - now <= max_wait then
  redis.call('ZADD', KEYS[3], int(now + ttl), member)
  redis.call('PEXPIRE', KEYS[3], math.ceil(ttl / 1000) + 1000)
  return {0, estimate - now}
end
local at = math.max(estimate, tonumber(redis.call('GET', KEYS[4]) or '0') + spacing)
if at - now > max_turn then
  -- Beyond the longest countdown: come back then and ask again, without a place in the line.
  -- (Taking one would push the line ahead of the real backlog at every such return, until
  -- every refused export waited the longest countdown while the budget sat idle.)
  return {2, max_turn}
end
redis.call('SET', KEYS[4], int(at), 'PX', math.ceil((at - now) / 1000) + 1000)
-- Come back half the wait bound early: a countdown fires late on a busy worker, and a turn
-- nobody takes on time is budget lost; early, the export is admitted and waits the rest in
-- acquire (within the bound).
return {2, math.max(0, at - now - max_wait / 2)}
"""

# KEYS: pending   ARGV: admission id
_WITHDRAW = """
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

# KEYS: slots, released   ARGV: permit id, max_concurrent, lease_ms
_RELEASE = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
  redis.call('LPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return removed
"""

# KEYS: pause   ARGV: seconds (microseconds)   -> paused-until (us), never shortened
_PAUSE = _NOW + """
local now = now_us()
local until_us = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_us > current then
  redis.call('SET', KEYS[1], int(until_us), 'PX', math.ceil(tonumber(ARGV[1]) / 1000) + 1000)
  return int(until_us)
end
return int(current)
"""

# KEYS: pause   -> microseconds until the pause ends (0 when not paused)
_PAUSE_LEFT = _NOW + """
return math.max(0, tonumber(redis.call('GET', KEYS[1]) or '0') - now_us())
"""


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RateLimitPolicy:
    """``burst`` requests per ``burst / requests_per_second`` seconds, and at most
    ``max_concurrent`` requests in flight. 0 switches either part off."""

    requests_per_second: float = 0.0
    burst: int = 1
    max_concurrent: int = 0

    @property
    def window_seconds(self) -> float:
        return self.burst / self.requests_per_second if self.requests_per_second else 0.0

    @property
    def limits_anything(self) -> bool:
        return self.requests_per_second > 0 or self.max_concurrent > 0


class RateLimitOptions(BaseModel):
    """``TargetConnection.options["rate_limit"]``. Keys left out keep the target's default;
    ``false`` (or ``{"enabled": false}``) turns limiting off for the connection."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    requests_per_second: float | None = Field(default=None, ge=0, description="0: no rate")
    burst: int | None = Field(default=None, ge=1, description="default 1: evenly spaced")
    max_concurrent: int | None = Field(default=None, ge=0, description="0: no cap")


def default_policy(target_system: str) -> RateLimitPolicy:
    """The policy of a connection that sets no ``rate_limit`` option: its system's
    ``default_rate_policy`` (registry entry), or no limit."""
    # Imported here: the registry loads the vendor clients, which import this module.
    from shared.integrations import registry

    system = registry.targets().get(target_system)
    if system is None or system.default_rate_policy is None:
        return RateLimitPolicy()
    return system.default_rate_policy()


def policy_from_options(
    options: dict[str, Any] | None, default: RateLimitPolicy, *, system: str = "target"
) -> RateLimitPolicy:
    """Merge a connection's ``options["rate_limit"]`` over ``default``.

    An invalid value is a PermanentError naming the option: an operator typo must not silently
    leave a connection unthrottled, nor fail exports with a bare validation trace.
    """
    raw = (options or {}).get("rate_limit")
    if raw is None:
        return default
    if raw is False:
        return RateLimitPolicy()
    try:
        parsed = RateLimitOptions.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'rate_limit'}: {e['msg']}" for e in exc.errors()
        )
        raise PermanentError(
            f"the connection's rate_limit option is invalid ({problems}); expected e.g. "
            '{"requests_per_second": 8, "burst": 8, "max_concurrent": 4}',
            system=system,
            code="invalid_rate_limit_option",
        ) from None
    if not parsed.enabled:
        return RateLimitPolicy()
    rate = default.requests_per_second
    burst = default.burst
    if parsed.requests_per_second is not None:
        rate = parsed.requests_per_second
        burst = 1  # evenly spaced unless the option says otherwise (see the module docstring)
    if parsed.burst is not None:
        burst = parsed.burst
    concurrent = default.max_concurrent if parsed.max_concurrent is None else parsed.max_concurrent
    return RateLimitPolicy(requests_per_second=rate, burst=burst, max_concurrent=concurrent)


# --- Redis, one pool per process -------------------------------------------------------------


class _Backend:
    """A Redis client (its own connection pool), the scripts, and the fail-open state."""

    def __init__(self, url: str) -> None:
        settings = get_settings()
        self.url = url
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=settings.rate_limit_redis_timeout_seconds,
            socket_connect_timeout=settings.rate_limit_redis_timeout_seconds,
            health_check_interval=30,
        )
        self.reserve = self.client.register_script(_RESERVE)
        self.release = self.client.register_script(_RELEASE)
        self.pause = self.client.register_script(_PAUSE)
        self.pause_left = self.client.register_script(_PAUSE_LEFT)
        self.admit = self.client.register_script(_ADMIT)
        self.withdraw = self.client.register_script(_WITHDRAW)
        self.retry_after_failure = settings.rate_limit_redis_retry_seconds
        self._down_until = 0.0
        self._lock = threading.Lock()

    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def failed(self, error: Exception, limiter_key: str) -> None:
        with self._lock:
            first = time.monotonic() >= self._down_until
            self._down_until = time.monotonic() + self.retry_after_failure
        if first:
            log.warning("rate limiter cannot reach Redis; requests go out unthrottled",
                        key=limiter_key, error=f"{type(error).__name__}: {error}",
                        retry_in_seconds=self.retry_after_failure)


_backends: dict[str, _Backend] = {}
_backends_lock = threading.Lock()


def _backend(url: str | None = None) -> _Backend:
    url = url or get_settings().redis_url
    with _backends_lock:
        backend = _backends.get(url)
        if backend is None:
            backend = _backends[url] = _Backend(url)
        return backend


# --- the limiter -----------------------------------------------------------------------------


class Permit:
    """Holds a concurrency slot (when the policy caps concurrency) until the ``with`` ends."""

    __slots__ = ("_limiter", "_slot")

    def __init__(self, limiter: RateLimiter | None, slot: str | None) -> None:
        self._limiter = limiter
        self._slot = slot

    def release(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None and self._limiter is not None:
            self._limiter._release(slot)

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


_thread_state = threading.local()


def _admissions_of_thread() -> dict[str, Admission]:
    admissions = getattr(_thread_state, "admissions", None)
    if admissions is None:
        admissions = _thread_state.admissions = {}
    return admissions


class Admission:
    """An export admitted to a connection's budget (``RateLimiter.admit``). While the ``with``
    lasts, the first request this thread starts through the limiter takes the export out of
    ``pending`` (atomically with its reservation); leaving the ``with`` withdraws an admission
    that no request used (the export was skipped, failed while preparing...)."""

    __slots__ = ("_limiter", "member", "used")

    def __init__(self, limiter: RateLimiter | None, member: str) -> None:
        self._limiter = limiter  # None: nothing was recorded (no rate, or Redis down)
        self.member = member
        self.used = limiter is None

    def __enter__(self) -> Admission:
        if self._limiter is not None:
            _admissions_of_thread()[self._limiter.name] = self
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._limiter is None:
            return
        _admissions_of_thread().pop(self._limiter.name, None)
        if not self.used:
            self.used = True
            self._limiter._withdraw(self.member)


class RateLimiter:
    """The budget of one target connection, shared through Redis by every process."""

    def __init__(
        self,
        name: str,
        policy: RateLimitPolicy,
        *,
        system: str = "target",
        redis_url: str | None = None,
        max_wait_seconds: float | None = None,
        lease_seconds: float | None = None,
    ) -> None:
        settings = get_settings()
        self.name = name
        self.policy = policy
        self.system = system
        self.max_wait_seconds = (
            settings.rate_limit_max_wait_seconds if max_wait_seconds is None else max_wait_seconds
        )
        self.lease_seconds = settings.rate_limit_lease_seconds if lease_seconds is None else lease_seconds
        self._redis_url = redis_url
        base = f"{KEY_PREFIX}:{{{name}}}"
        self.keys = {part: f"{base}:{part}"
                     for part in ("window", "slots", "released", "pause", "pending", "line")}

    def __repr__(self) -> str:
        return f"RateLimiter({self.name!r}, {self.policy})"

    # --- taking a permit -----------------------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> Permit:
        """Wait for this connection's next free start time (and slot); return a Permit.

        Raises RateLimitedError when the wait would exceed ``timeout`` seconds (default
        ``max_wait_seconds``). Sends nothing to the target. Fails open when Redis is down.
        """
        started = time.monotonic()
        permit = self._acquire(timeout)
        # Imported at module level: importing here, after the wait, would hold every thread that
        # got its start time on the import lock and release them all at once (a burst).
        RATE_LIMIT_WAIT_SECONDS.labels(self.system).observe(time.monotonic() - started)
        return permit

    def _acquire(self, timeout: float | None) -> Permit:
        budget = self.max_wait_seconds if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + budget
        backend = _backend(self._redis_url)
        if not backend.available():
            return Permit(None, None)
        policy = self.policy
        member = uuid.uuid4().hex
        admission = _admissions_of_thread().get(self.name)
        try:
            while True:
                left = max(0.0, deadline - time.monotonic())
                status, wait_us = backend.reserve(
                    keys=[self.keys["window"], self.keys["slots"], self.keys["pause"],
                          self.keys["pending"]],
                    args=[policy.burst if policy.requests_per_second else 0,
                          round(policy.window_seconds * 1e6), round(left * 1e6), member,
                          policy.max_concurrent, round(self.lease_seconds * 1e6),
                          admission.member if admission is not None and not admission.used
                          else ""],
                )
                wait = int(wait_us) / 1e6
                if status == _GRANTED:
                    if admission is not None:
                        admission.used = True
                    permit = Permit(self, member if policy.max_concurrent else None)
                    if wait > 0:
                        time.sleep(wait)
                        self._wait_out_pause(backend, permit, deadline, budget)
                    return permit
                if status == _TOO_LATE:
                    raise self._refusal(f"the next free request slot is {wait:.1f}s away",
                                        wait, budget)
                # Every slot is held: sleep until one is released (or the earliest lease ends).
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._refusal(
                        f"all {policy.max_concurrent} concurrent request slots stayed busy",
                        None, budget)
                backend.client.blpop([self.keys["released"]],
                                     timeout=max(0.001, min(left, wait, _BLOCK_CHUNK_SECONDS)))
        except redis.RedisError as error:
            backend.failed(error, self.name)
            return Permit(None, None)

    def admit(self, timeout: float | None = None, *, max_turn: float | None = None) -> Admission:
        """May a worker start an export on this connection now? (See "Admission" above.)

        Returns an ``Admission`` to hold (``with``) while the export runs when the connection's
        next free start, after everything reserved and admitted, is within ``timeout`` seconds
        (default ``rate_limit_admit_wait_seconds``). Otherwise raises ``RateLimitedError`` whose
        ``retry_after`` is this export's own turn along the connection's line: come back then.
        A turn later than ``max_turn`` seconds (default ``retry_max_seconds``, the longest
        countdown the broker may hold) is not given: ``retry_after`` is ``max_turn``, ask again.
        Reserves no request start and sends nothing. A policy without a rate (a concurrency cap
        alone) and an unreachable Redis admit everything.
        """
        settings = get_settings()
        if timeout is None:
            timeout = settings.rate_limit_admit_wait_seconds
        # Admission off (the default): admit whatever the request's own wait bound allows.
        budget = settings.rate_limit_max_wait_seconds if timeout is None else max(0.0, timeout)
        horizon = settings.retry_max_seconds if max_turn is None else max_turn
        policy = self.policy
        if not policy.requests_per_second:
            return Admission(None, "")
        backend = _backend(self._redis_url)
        if not backend.available():
            return Admission(None, "")
        member = uuid.uuid4().hex
        try:
            status, wait_us = backend.admit(
                keys=[self.keys["window"], self.keys["pause"], self.keys["pending"],
                      self.keys["line"]],
                args=[policy.burst, round(policy.window_seconds * 1e6), round(budget * 1e6),
                      member, round(PENDING_TTL_SECONDS * 1e6), round(horizon * 1e6)],
            )
        except redis.RedisError as error:
            backend.failed(error, self.name)
            return Admission(None, "")
        if status == _GRANTED:
            return Admission(self, member)
        wait = int(wait_us) / 1e6
        if wait >= horizon:
            # No place in the line: spread these returns over the second half of the longest
            # countdown, or a backlog beyond it comes back as one herd that takes every thread
            # at once while the exports whose turn it is wait behind it.
            wait = horizon * random.uniform(0.5, 1.0)
        raise RateLimitedError(
            f"rate limit of the {self.system} connection: its request budget is taken for the "
            f"next {wait:.1f}s (more than the {budget:g}s a worker may wait); the export waits "
            "its turn without holding a worker",
            retry_after=wait, system=self.system, code="rate_limit_deferred", sent=False)

    def _withdraw(self, member: str) -> None:
        backend = _backend(self._redis_url)
        if not backend.available():
            return
        try:
            backend.withdraw(keys=[self.keys["pending"]], args=[member])
        except redis.RedisError as error:  # the entry expires on its own
            backend.failed(error, self.name)

    def _wait_out_pause(
        self, backend: _Backend, permit: Permit, deadline: float, budget: float
    ) -> None:
        """A pause announced while we slept (reservations made before it do not know it)."""
        left = int(backend.pause_left(keys=[self.keys["pause"]])) / 1e6
        if left <= 0:
            return
        if time.monotonic() + left > deadline:
            permit.release()
            raise self._refusal(f"the target asked us to pause for {left:.1f}s", left, budget)
        time.sleep(left)

    def _release(self, member: str) -> None:
        backend = _backend(self._redis_url)
        try:
            backend.release(
                keys=[self.keys["slots"], self.keys["released"]],
                args=[member, max(1, self.policy.max_concurrent),
                      math.ceil(self.lease_seconds * 1000)],
            )
        except redis.RedisError as error:  # the lease expires on its own
            backend.failed(error, self.name)

    def _refusal(self, why: str, retry_after: float | None, budget: float) -> RateLimitedError:
        return RateLimitedError(
            f"rate limit of the {self.system} connection: {why}, more than the "
            f"{budget:g}s a request may wait; retrying later",
            retry_after=retry_after,
            system=self.system,
            code="rate_limit_wait",
            sent=False,
        )

    # --- what the server said ------------------------------------------------------------------

    def observe(self, *, remaining: int | None, reset_seconds: float | None) -> None:
        """Feed back a response's ``X-Rate-Limit-Remaining`` / ``-Reset``: an exhausted budget
        pauses the connection for every process until the server's reset."""
        if remaining is not None and remaining <= 0 and reset_seconds:
            self.pause(reset_seconds)

    def pause(self, seconds: float) -> None:
        """Start no request on this connection, from any process, for ``seconds``."""
        seconds = min(seconds, MAX_PAUSE_SECONDS)
        backend = _backend(self._redis_url)
        if not backend.available():
            return
        try:
            backend.pause(keys=[self.keys["pause"]], args=[round(seconds * 1e6)])
        except redis.RedisError as error:
            backend.failed(error, self.name)
            return
        log.info("rate limit pause", key=self.name, seconds=round(seconds, 3))


def limiter_for(
    name: str, target_system: str, options: dict[str, Any] | None
) -> RateLimiter | None:
    """The limiter of one target connection (``name`` = its id), or None when it limits nothing."""
    policy = policy_from_options(options, default_policy(target_system), system=target_system)
    if not policy.limits_anything:
        return None
    return RateLimiter(name, policy, system=target_system)


__all__ = [
    "Admission",
    "Permit",
    "RateLimitOptions",
    "RateLimitPolicy",
    "RateLimiter",
    "default_policy",
    "limiter_for",
    "policy_from_options",
]
