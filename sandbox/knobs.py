"""Fault knobs and request counts shared by the source sandboxes (``sandbox.traede``,
``sandbox.brex``).

This module only decides *what happens* to an API request before its handler runs: wait
(``latency_ms``), fail with a status (``fail_next`` rules, ``error_rate``), or be refused by a
sliding-window rate limit. Each sandbox turns the decision into its vendor's error body and
headers, and adds knobs of its own (redelivery, expiring links, looping cursors...).

State is mutated under the owning sandbox's lock; nothing here awaits.
"""

from __future__ import annotations

import random
from collections import Counter, deque
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
        rule = next((r for r in self.fail_next if r.matches(method, path)), None)
        if rule is not None:
            rule.count -= 1
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
        if self.error_rate and self._rng.random() < self.error_rate:
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


class RequestCounter:
    """``{"METHOD /path-template": count}`` of one tenant's API requests, faulted ones included
    (a test counts a client's retries with it)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, request: Request, prefix: str = "") -> None:
        route = request.scope.get("route")
        path = getattr(route, "path", request.url.path)
        self.counts[f"{request.method} {path.removeprefix(prefix)}"] += 1

    def view(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


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
