"""Fault knobs and request counts shared by the sandboxes.

This module only decides *what happens* to an API request before its handler runs: wait
(``latency_ms``), fail with a status (``fail_next`` rules, ``error_rate``), or be refused by a
rate limit (a sliding window, ``RateLimit``, or a fixed window per caller, ``fixed_window_hit``).
Each sandbox turns the decision into its vendor's error body and headers, and adds knobs of its
own (redelivery, expiring links, looping cursors...). ``sandbox.traede`` and ``sandbox.brex``
use ``CommonFaults`` whole; ``sandbox.billdiary`` and ``sandbox.tripletex`` keep their faults
per tenant with ``FaultStore``; ``sandbox.findity`` layers organization and global faults. All
match and consume ``fail_next`` rules with ``take_fail_rule``.

State is mutated under the owning sandbox's lock; nothing here awaits.
"""

from __future__ import annotations

import copy
import random
import threading
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request


@dataclass
class FailRule:
    """Answer the next ``count`` matching API requests with ``status`` instead of handling them."""

    status: int
    count: int = 1
    method: str | None = None
    path_contains: str | None = None
    retry_after: float | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.count <= 0:
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        return not self.path_contains or self.path_contains in path


def take_fail_rule(rules: Iterable[FailRule], method: str, path: str) -> FailRule | None:
    """The first rule that matches this request, with one of its counts consumed; a copy, so the
    caller may read it outside the lock. None when no rule matches."""
    rule = next((r for r in rules if r.matches(method, path)), None)
    if rule is None:
        return None
    rule.count -= 1
    return copy.copy(rule)


def rolls(rng: random.Random, rate: float) -> bool:
    """Whether a request falls in the random ``error_rate`` share."""
    return bool(rate) and rng.random() < rate


@dataclass
class RateLimit:
    """At most ``limit`` requests in any ``window_seconds`` (a sliding-window log)."""

    limit: int
    window_seconds: float
    retry_after: bool = True
    hits: deque = field(default_factory=deque)

    def take(self, now: float) -> tuple[bool, int, float]:
        """(allowed, remaining, seconds until a slot frees). A refused request is not counted."""
        while self.hits and self.hits[0] <= now - self.window_seconds:
            self.hits.popleft()
        if len(self.hits) >= self.limit:
            return False, 0, max(0.0, self.hits[0] + self.window_seconds - now)
        self.hits.append(now)
        reset = self.hits[0] + self.window_seconds - now
        return True, self.limit - len(self.hits), reset


@dataclass
class RateWindow:
    started: float  # time.monotonic() of the window's first request
    count: int = 0


def fixed_window_hit(windows: dict[Any, RateWindow], key: Any, limit: int,
                     window_seconds: float, now: float) -> tuple[bool, int, int]:
    """Count one request in ``key``'s fixed window, which its first request opens: (allowed,
    remaining, whole seconds until the window ends, at least 1). Once the limit is hit, every
    request is refused for the rest of the window."""
    window = windows.get(key)
    if window is None or now - window.started >= window_seconds:
        window = windows[key] = RateWindow(started=now)
    window.count += 1
    reset = max(1, int(round(window_seconds - (now - window.started))))
    return window.count <= limit, max(0, limit - window.count), reset


@dataclass
class Injected:
    """A request the knobs refuse: answer ``status`` (the vendor's body), with these headers."""

    status: int
    reason: str  # "fail_next" | "error_rate" | "rate_limit"
    retry_after: float | None = None


@dataclass
class Decision:
    latency_seconds: float = 0.0
    injected: Injected | None = None
    rate_headers: dict[str, str] = field(default_factory=dict)


def retry_after_value(seconds: float) -> str:
    """``Retry-After`` is delta-seconds; whole numbers are written without a fraction."""
    return str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"


@dataclass
class CommonFaults:
    latency_ms: int = 0
    fail_next: list[FailRule] = field(default_factory=list)
    error_rate: float = 0.0
    seed: int = 1234
    rate_limit: RateLimit | None = None
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def decide(self, method: str, path: str, now: float) -> Decision:
        """Consume the first matching ``fail_next`` rule, else count the request against the
        rate limit, else roll ``error_rate`` (503). Latency applies to every request."""
        decision = Decision(latency_seconds=self.latency_ms / 1000)
        rule = take_fail_rule(self.fail_next, method, path)
        if rule is not None:
            decision.injected = Injected(rule.status, "fail_next", rule.retry_after)
            return decision
        if self.rate_limit is not None:
            allowed, remaining, reset = self.rate_limit.take(now)
            decision.rate_headers = {"limit": str(self.rate_limit.limit),
                                     "remaining": str(remaining), "reset": f"{reset:.0f}"}
            if not allowed:
                wait = float(max(1, round(reset + 0.5))) if self.rate_limit.retry_after else None
                decision.injected = Injected(429, "rate_limit", wait)
                return decision
        if rolls(self._rng, self.error_rate):
            decision.injected = Injected(503, "error_rate")
        return decision

    def common_view(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "fail_next": [
                {k: v for k, v in vars(rule).items()} for rule in self.fail_next if rule.count > 0
            ],
            "error_rate": self.error_rate,
            "seed": self.seed,
            "rate_limit": None if self.rate_limit is None else {
                "limit": self.rate_limit.limit,
                "window_seconds": self.rate_limit.window_seconds,
                "retry_after": self.rate_limit.retry_after,
            },
        }


def route_template(request: Request, prefix: str = "", method: str | None = None) -> str:
    """``"METHOD /path-template"`` of a request (the matched route's path, ``prefix`` removed;
    ``method`` where the sandbox honours a method override)."""
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    return f"{method or request.method} {path.removeprefix(prefix)}"


class RequestCounter:
    """``{"METHOD /path-template": count}`` of one tenant's API requests, faulted ones included
    (a test counts a client's retries with it)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, request: Request, prefix: str = "", method: str | None = None) -> None:
        self.counts[route_template(request, prefix, method)] += 1

    def view(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


class FaultStore:
    """For a sandbox state whose tenants each carry ``faults`` (with ``fail_next``,
    ``error_rate`` and ``seed``), ``rng``, ``requests`` (a ``RequestCounter``) and
    ``rate_windows`` (for ``fixed_window_hit``); everything under ``self.lock``."""

    lock: threading.Lock

    @staticmethod
    def _replace_faults(tenant: Any, faults: Any) -> None:
        """New faults, a fresh ``error_rate`` RNG and rate windows (the caller holds the lock)."""
        tenant.faults = faults
        tenant.rng = random.Random(faults.seed)
        tenant.rate_windows.clear()

    def take_fail_rule(self, tenant: Any, method: str, path: str) -> FailRule | None:
        with self.lock:
            return take_fail_rule(tenant.faults.fail_next, method, path)

    def roll_error(self, tenant: Any) -> bool:
        with self.lock:
            return rolls(tenant.rng, tenant.faults.error_rate)

    def count_request(self, tenant: Any, request: Request, prefix: str,
                      method: str | None = None) -> None:
        with self.lock:
            tenant.requests.add(request, prefix, method)


# --- control API bodies ----------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FailRuleIn(_Body):
    status: int = Field(ge=400, le=599)
    count: int = Field(default=1, ge=1)
    method: str | None = None
    path_contains: str | None = None
    retry_after: float | None = Field(default=None, ge=0, description="Retry-After, seconds.")

    def build(self) -> FailRule:
        return FailRule(**self.model_dump())


class RateLimitIn(_Body):
    limit: int = Field(ge=1)
    window_seconds: float = Field(default=60.0, gt=0)
    retry_after: bool = Field(default=True, description="Send Retry-After on the 429.")

    def build(self) -> RateLimit:
        return RateLimit(**self.model_dump())


class CommonFaultsIn(_Body):
    """The knobs both source sandboxes share; each sandbox's ``FaultsIn`` adds its own."""

    latency_ms: int = Field(default=0, ge=0, le=60_000, description="Added to every API request.")
    fail_next: list[FailRuleIn] = Field(default_factory=list)
    error_rate: float = Field(default=0.0, ge=0, le=1, description="Share of random 503s.")
    seed: int = Field(default=1234, description="Seed of the error_rate RNG.")
    rate_limit: RateLimitIn | None = None

    def common_kwargs(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "fail_next": [rule.build() for rule in self.fail_next],
            "error_rate": self.error_rate,
            "seed": self.seed,
            "rate_limit": self.rate_limit.build() if self.rate_limit else None,
        }
