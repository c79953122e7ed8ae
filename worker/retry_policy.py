"""The one place that decides: retry (and when) or fail.

Transient errors retry with exponential backoff and full jitter, up to ``max_attempts``. Being
told to wait (a 429, or our own rate limiter refusing to send) is not a failure: it retries no
sooner than the server's Retry-After / X-Rate-Limit-Reset and never uses up an attempt (the
attempt is refunded). Permanent and auth errors never retry.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from shared.config import get_settings
from shared.integrations.errors import IntegrationError, RateLimitedError


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay: float = 0.0
    # The attempt does not count towards max_attempts (the export was told to wait).
    refund: bool = False


def backoff_delay(attempt: int, *, rng: random.Random | None = None) -> float:
    """attempt 1 -> ~base, 2 -> ~2*base, ... capped; jitter spreads retries of a burst apart."""
    settings = get_settings()
    ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** (attempt - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)


def decide(error: IntegrationError, attempt: int, *, rng: random.Random | None = None) -> Decision:
    settings = get_settings()
    if isinstance(error, RateLimitedError):
        delay = backoff_delay(max(1, attempt), rng=rng)
        if error.retry_after is not None:
            # The server said when; waking earlier only earns another 429.
            delay = max(delay, error.retry_after + (rng or random).uniform(0, 1))
        return Decision(retry=True, delay=min(delay, settings.retry_max_seconds), refund=True)
    if not error.retryable or attempt >= settings.max_attempts:
        return Decision(retry=False)
    return Decision(retry=True, delay=backoff_delay(attempt, rng=rng))
