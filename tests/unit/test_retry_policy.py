import random

from shared.config import get_settings
from shared.integrations.errors import PermanentError, RateLimitedError, TransientError
from worker.retry_policy import backoff_delay, decide


def test_backoff_grows_exponentially_within_jittered_bounds():
    settings = get_settings()
    rng = random.Random(7)
    for attempt in range(1, 6):
        ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, rng=rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jitter spreads a burst of retries


def test_transient_errors_retry_until_the_attempt_limit():
    error = TransientError("503", system="tripletex")
    limit = get_settings().max_attempts
    assert decide(error, 1).retry
    assert decide(error, limit - 1).retry
    assert not decide(error, limit).retry


def test_permanent_errors_never_retry():
    assert not decide(PermanentError("422", system="tripletex"), 1).retry


def test_rate_limit_waits_at_least_what_the_server_said():
    settings = get_settings()
    wait = min(settings.retry_max_seconds, 2.5)
    decision = decide(RateLimitedError("429", system="tripletex", retry_after=wait), 1)
    assert decision.retry and decision.delay >= wait
