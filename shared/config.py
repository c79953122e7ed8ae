"""The one settings object. Nothing else in the project reads the environment.

Every variable carries the ``AIC_`` prefix, e.g. ``AIC_DATABASE_URL``.
"""

from __future__ import annotations

import os
import ssl
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VAR_DIR = PROJECT_ROOT / "var"

# The development defaults of the two secrets. They are in the repository for anyone to read, so
# a process that serves refuses them unless AIC_ENVIRONMENT=development (require_safe_settings).
DEVELOPMENT_ADMIN_TOKEN = "dev-admin-token"
DEVELOPMENT_SECRET_KEY = "ZGV2LW9ubHktc2VjcmV0LWtleS1jaGFuZ2UtbWUhISE="


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIC_", env_file=None, extra="ignore")

    # "production" unless said otherwise: forgetting to set it must fail safe (the API, worker
    # and beat then refuse the development secrets below). `make run` and `make demo` set
    # "development" for the processes of their local stack.
    environment: Literal["development", "production"] = Field(
        default="production",
        description="'development' lets the API, worker and beat start with the development "
                    "defaults of AIC_ADMIN_TOKEN and AIC_SECRET_KEY; 'production' refuses them.",
    )

    # --- storage -----------------------------------------------------------------------------
    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_VAR_DIR / 'aic.db'}",
        description="SQLAlchemy URL. SQLite by default; postgresql+psycopg://... in production.",
    )
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Celery broker.")

    # Fernet key (urlsafe base64, 32 bytes) that encrypts target credentials at rest.
    # The default is for local development only; `aic keygen` prints a fresh one.
    secret_key: str = DEVELOPMENT_SECRET_KEY

    worker_metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Port on which a worker serves its Prometheus metrics (/metrics); unset: "
                    "none. The API serves its own at /metrics.")

    # --- queues and retries ---------------------------------------------------------------------
    export_queue: str = "exports"
    report_queue: str = "reports"
    maintenance_queue: str = "maintenance"
    max_attempts: int = Field(default=6, ge=1, description="Tries before an export is failed.")
    retry_base_seconds: float = Field(default=5.0, gt=0)
    retry_max_seconds: float = Field(default=600.0, gt=0)
    # Redis redelivers an unacknowledged message after this many seconds. It must stay longer
    # than the longest retry countdown, or a waiting retry is delivered again and again.
    broker_visibility_timeout: int = 3600
    # How often workers look for such abandoned messages: every interval x throttle seconds
    # (kombu's unacked_restore_interval / unacked_restore_throttle).
    broker_restore_interval: int = 10
    # How often each worker moves the messages that are due (retry countdowns, rate-limit turns)
    # from Redis's delayed set onto their queues (shared/broker_transport.py): the most a
    # delayed message can be late.
    delayed_delivery_interval_seconds: float = Field(default=0.25, gt=0, le=10)
    broker_restore_throttle: int = 10
    # An export whose worker claimed it holds a lease this long; a crashed worker's lease expires.
    export_lease_seconds: int = 120
    # The sweeper re-enqueues exports that sat in `processing` this long past their due time.
    stuck_after_seconds: int = 900
    sweep_interval_seconds: float = 60.0
    worker_concurrency: int = 16
    # Celery task events (a PUBLISH per task state, ~3-5 ms of worker CPU per export measured in
    # issue 12). Off: Flower turns the workers' events on itself while it runs (its default
    # --enable_events, every few seconds), so only a stack that runs Flower pays for them. On:
    # workers send them from the start and producers also send "task-sent" (Flower's SENT state).
    celery_task_events: bool = False
    # Findity is polled this often as a backstop for lost webhooks (documented fallback: 15 min).
    poll_interval_seconds: float = 900.0
    # One poll at a time (beat started twice): its Redis lock lives this long and is renewed
    # after each page and each connection polled, so a worker killed while polling holds polls
    # back at most this long. A bit over what one connection's page of listing may take (a
    # request's connect + read timeouts, 35 s by default, with room for a slow page's work); a
    # live poll that still outlasts it only lets a second poll overlap, which is harmless
    # (announcing a unit twice creates it once) but wasted work.
    poll_lock_seconds: int = Field(default=120, ge=5)
    # A source package not finished this long after it was received is picked up again.
    source_stuck_after_seconds: int = 900
    # Findity's webhook can arrive before its export (or a basis PDF) is readable: a 404 is
    # retried for this long from the package's receipt, and only then believed (the package
    # rejected, or the voucher booked without that PDF). A forged export id ends rejected then.
    source_not_found_grace_seconds: int = Field(default=1800, ge=0)
    # Largest basis PDF (receipt) we download, counted while streaming; a bigger one is not
    # attached and its voucher is booked without it.
    receipt_max_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    # A package's report lock lives this long and is renewed every third of it while the report
    # runs, so a killed worker's lock frees itself within these seconds.
    report_lock_seconds: int = Field(default=15, ge=3)

    @model_validator(mode="after")
    def _retries_fit_the_broker(self) -> Settings:
        if self.retry_max_seconds >= self.broker_visibility_timeout:
            raise ValueError(
                f"AIC_RETRY_MAX_SECONDS ({self.retry_max_seconds:g}) must be shorter than "
                f"AIC_BROKER_VISIBILITY_TIMEOUT ({self.broker_visibility_timeout}): Redis would "
                "deliver a waiting retry again before it is due; lower the first or raise the second"
            )
        return self

    # --- systems (shared/integrations/registry.py) ----------------------------------------------
    # Comma-separated modules with a ``SYSTEM`` to register next to the built-in ones (a plug-in
    # system outside the repository's list). Every process (API, worker, beat, aic) needs it.
    extra_systems: str = ""

    def extra_system_modules(self) -> list[str]:
        return [m.strip() for m in self.extra_systems.split(",") if m.strip()]

    # --- HTTP clients -------------------------------------------------------------------------
    # ASSUMED (Tripletex documents nothing): a voucher its POST stored is findable by
    # externalVoucherNumber within this many seconds. Until then the posting protocol does not
    # take "not found" for "not booked". A connection's options.search_delay_seconds overrides.
    tripletex_search_delay_seconds: float = Field(default=5.0, ge=0)
    # ASSUMED (BillDiary documents nothing): an expense its POST stored is findable by ``q=<our
    # reference>`` within this many seconds. The create and its payment lines are one MySQL
    # transaction and the list reads the same table, so it is immediate in practice; 5 s of
    # slack as for Tripletex. A connection's options.search_delay_seconds overrides.
    billdiary_search_delay_seconds: float = Field(default=5.0, ge=0)
    http_connect_timeout: float = 5.0
    http_read_timeout: float = 30.0

    # --- target rate limits (shared/integrations/rate_limit.py) ---------------------------------
    # The default limiter of a Tripletex connection without a ``rate_limit`` option. Tripletex
    # publishes no figure (its limit is per employee token per consumer, announced in the
    # X-Rate-Limit-* headers): 10 requests/s is far more than an export needs (1-3 requests
    # each) and stays polite; a lower real limit is caught by the header-driven pause. A burst
    # of 2 (at most 2 requests per 0.2 s) lets one export's session and lookups go out back to
    # back yet spreads a busy connection evenly, so network jitter cannot bunch two bursts into
    # one of the server's windows. 0 turns the default off (connections may set their own).
    tripletex_rate_limit_per_second: float = Field(default=10.0, ge=0)
    tripletex_rate_limit_burst: int = Field(default=2, ge=1)
    # Tripletex announces a request budget, not a concurrency limit: no cap by default (0).
    tripletex_rate_limit_max_concurrent: int = Field(default=0, ge=0)
    # BillDiary publishes no limit; ASSUMED Laravel's default API throttle of 60 requests per
    # minute per user. 0.9/s with bursts of 5 stays under it with room for jitter; one request
    # at a time per connection is plenty for expense volumes.
    billdiary_rate_limit_per_second: float = Field(default=0.9, ge=0)
    billdiary_rate_limit_burst: int = Field(default=5, ge=1)
    billdiary_rate_limit_max_concurrent: int = Field(default=1, ge=0)
    # A worker thread waits at most this long for its turn, then the export is retried later
    # (RateLimitedError) instead of holding the thread. Well under ``export_lease_seconds``.
    rate_limit_max_wait_seconds: float = Field(default=30.0, gt=0)
    # Before a worker claims an export it asks the connection's limiter for admission: granted
    # when the connection's next free start (after what is reserved and admitted) is at most
    # this far away; otherwise the export is re-scheduled for its turn and the thread takes
    # other work (other tenants'). Small (0.5): it bounds how long a thread sleeps on one budget
    # (docs/PERFORMANCE.md, target 4). None turns the admission off: a thread then sleeps in
    # ``acquire`` up to ``rate_limit_max_wait_seconds`` on one tenant's budget.
    rate_limit_admit_wait_seconds: float | None = Field(default=0.5, ge=0)

    @field_validator("rate_limit_admit_wait_seconds", mode="before")
    @classmethod
    def _admission_off(cls, value: object) -> object:
        # An environment variable cannot be None: "off" (or empty) says it.
        if isinstance(value, str) and value.strip().lower() in ("", "off", "none"):
            return None
        return value
    # A concurrency slot is a lease: a killed worker's slot frees itself after this long. Longer
    # than any request (connect + read timeouts) so a live request never loses its slot.
    rate_limit_lease_seconds: float = Field(default=60.0, gt=0)
    # The limiter's Redis calls give up after this long; then it fails open (see rate_limit.py)
    # and leaves Redis alone for ``rate_limit_redis_retry_seconds``.
    rate_limit_redis_timeout_seconds: float = Field(default=2.0, gt=0)
    rate_limit_redis_retry_seconds: float = Field(default=5.0, ge=0)

    # --- API ------------------------------------------------------------------------------------
    admin_token: str = Field(
        default=DEVELOPMENT_ADMIN_TOKEN,
        description="Bearer token of the admin API (/api/v1/admin). Set a long random value.",
    )
    max_request_bytes: int = 1_000_000
    max_batch_size: int = 500

    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text", description="text: one line per event with key=value fields; json: one "
                                    "JSON object per line (for log shippers).")

    @field_validator("redis_url")
    @classmethod
    def _broker_tls_readable(cls, url: str) -> str:
        broker_tls_options(url)  # a wrong TLS option fails at start, with what to write instead
        return url

    def broker_use_ssl(self) -> dict | None:
        """Celery's ``broker_use_ssl`` for this broker URL (None: not TLS)."""
        return broker_tls_options(self.redis_url)

    def broker_transport_options(self) -> dict:
        return {
            "visibility_timeout": self.broker_visibility_timeout,
            "unacked_restore_interval": self.broker_restore_interval,
            "unacked_restore_throttle": self.broker_restore_throttle,
            # kombu restores unacknowledged messages under a Redis mutex that expires after 300 s
            # by default: a worker killed while holding it stops every restore for that long.
            # Never longer than the visibility timeout, so that timeout means what it says.
            "unacked_mutex_expire": min(300, self.broker_visibility_timeout),
        }


# redis-py's names for certificate checking, as a rediss:// URL's ``ssl_cert_reqs`` gives them.
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def broker_tls_options(url: str) -> dict | None:
    """The TLS options of the broker connection for a ``rediss://`` URL; None for any other.

    What redis-py makes of the same URL, so that the URL means one thing for every Redis client
    of a process (Celery's broker connection; the rate limiter, locks and delayed delivery, which
    use redis-py directly): the server's certificate verified against the system's CAs, unless
    the URL's query says otherwise (``ssl_cert_reqs=required|optional|none``, ``ssl_ca_certs``,
    ``ssl_certfile``, ``ssl_keyfile``). kombu alone, given ``rediss://`` and no options, connects
    without checking the certificate at all (it only logs a warning).
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = dict(parse_qsl(parts.query))
    wanted = query.get("ssl_cert_reqs", "required").lower()
    if wanted not in _CERT_REQS:
        raise ValueError(f"AIC_REDIS_URL: ssl_cert_reqs={query['ssl_cert_reqs']!r} is not one of "
                         f"{', '.join(_CERT_REQS)}")
    return {"ssl_cert_reqs": _CERT_REQS[wanted], **{k: query[k] for k in _TLS_FILES if k in query}}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


# Written by ``make run`` (devstack.stack) while it runs: the database and broker its processes
# use. ``aic`` adopts them, so the CLI reaches the stack the operator is looking at instead of the
# defaults (Redis on 6379), which ``make run`` does not use when it starts its own Redis.
DEVSTACK_ENV_FILE = DEFAULT_VAR_DIR / "devstack.env"
DEVSTACK_PID_KEY = "AIC_DEVSTACK_PID"


def running_devstack_env(path: Path | None = None) -> dict[str, str] | None:
    """The settings of the local stack written to ``path``, or None when there is no file or the
    stack that wrote it is gone (a file left behind by a killed ``make run`` is ignored)."""
    try:
        text = (path or DEVSTACK_ENV_FILE).read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            values[name.strip()] = value.strip()
    try:
        os.kill(int(values.pop(DEVSTACK_PID_KEY, "")), 0)
    except (ValueError, ProcessLookupError):
        return None
    except PermissionError:
        pass  # alive, owned by another user
    return values


def adopt_running_devstack(path: Path | None = None) -> dict[str, str]:
    """Use the running local stack's settings for what the environment does not set itself.

    Call it before anything imports ``shared.queue``: the Celery app takes its broker URL when
    it is created.

    Returns the variables adopted (empty: no stack runs, or the environment sets them all). Only
    ``aic`` calls this: the stack's own processes get their settings explicitly, and tests must
    never wander into a developer's running stack.
    """
    adopted = {name: value for name, value in (running_devstack_env(path) or {}).items()
               if name.startswith("AIC_") and name not in os.environ}
    if adopted:
        os.environ.update(adopted)
        reset_settings_cache()
    return adopted


def reset_settings_cache() -> None:
    """Tests change the environment and call this; production never does."""
    get_settings.cache_clear()


class RefusedToStart(SystemExit):
    """A process refuses to start; the message says what to set.

    A ``SystemExit`` on purpose: uncaught, Python prints just the message and exits with status 1
    (no traceback to dig through), and Celery's signal dispatch, which logs and swallows any
    ``Exception`` a receiver raises, lets it through, so the worker and beat really stop.
    """


# Variable -> what to do instead, for each secret whose development default is refused.
_DEVELOPMENT_SECRETS = {
    "AIC_ADMIN_TOKEN": ("admin_token", DEVELOPMENT_ADMIN_TOKEN,
                        "AIC_ADMIN_TOKEN is the development default; set a long random value "
                        "(e.g. `openssl rand -base64 32`)"),
    "AIC_SECRET_KEY": ("secret_key", DEVELOPMENT_SECRET_KEY,
                       "AIC_SECRET_KEY is the development key committed to the repository; set "
                       "your own (`aic keygen` prints one)"),
}


def development_secrets_in_use(
        settings: Settings, variables: tuple[str, ...] = tuple(_DEVELOPMENT_SECRETS)) -> list[str]:
    """For each of ``variables`` still at its development default, what to set instead."""
    problems = []
    for name in variables:
        field, default, advice = _DEVELOPMENT_SECRETS[name]
        if getattr(settings, field) == default:
            problems.append(advice)
    return problems


def require_safe_settings(process: str, *,
                          variables: tuple[str, ...] = tuple(_DEVELOPMENT_SECRETS),
                          settings: Settings | None = None) -> None:
    """The one start-up check of every process that serves: the API (``create_app``), a Celery
    worker and beat (signals in ``worker.celery_app``), and the ``aic`` commands that encrypt
    credentials (those pass ``variables=("AIC_SECRET_KEY",)``).

    Outside ``AIC_ENVIRONMENT=development``, a secret at its development default would let anyone
    who has read this repository call the admin API or decrypt the stored credentials: refuse
    with ``RefusedToStart`` before anything is served or stored.
    """
    settings = settings or get_settings()
    if settings.environment == "development":
        return
    problems = development_secrets_in_use(settings, variables)
    if problems:
        raise RefusedToStart(
            f"{process} refuses to start: " + ". ".join(problems)
            + ". (Or set AIC_ENVIRONMENT=development for a local stack.)")
