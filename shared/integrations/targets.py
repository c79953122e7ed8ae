"""Which client talks to which target system; one cached client per target connection.

Each client gets its connection's rate limiter (``shared.integrations.rate_limit``): the budget
lives in Redis under the connection id, so every worker process's client of the same connection
shares it. ``connection.options["rate_limit"]`` tunes it; without it the target's default from
settings applies. Which client a system gets is its registry entry's ``build_client``
(``shared.integrations.registry``).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from shared.db.models import TargetConnection
from shared.domain.organizations import connection_credentials
from shared.domain.vouchers import PostedVoucher, VoucherDraft
from shared.integrations import registry
from shared.integrations.client_cache import ClientCache
from shared.integrations.rate_limit import RateLimiter, limiter_for


@dataclass(frozen=True)
class PreparedVoucher:
    """A draft with every reference resolved and its request body built: sending it is one
    request and nothing else (no lookups, no session to create), so it fits a send deadline."""

    draft: VoucherDraft
    payload: Any


class SendGate(Protocol):
    """What the posting protocol (``worker.posting``) hands a client for the one request that
    may create a record in the target.

    The client calls ``open()`` right before that request leaves, after any rate-limiter wait:
    the protocol commits "posting started" there, so a request the limiter refused was never
    marked. ``open()`` False means this attempt no longer owns the export: send nothing, raise
    ``SendWithdrawn``. ``timeout`` bounds each phase of the exchange (connect, write, read), so
    the request cannot outlive the deadline the protocol recorded. A re-send after the target
    refused the first copy (a 401 and a new session) calls ``open()`` again.
    """

    timeout: float

    def open(self) -> bool: ...


class TargetClient(Protocol):
    """One connection to one target system, as the posting protocol uses it.

    Exactly-once rests on three things every target client provides: ``find_voucher`` finds a
    record we stored by our reference (the export id), ``search_delay_seconds`` says how long a
    stored record may take to become findable, and ``send_voucher`` sends exactly one request
    that honours the gate.
    """

    system: str
    # The connection's shared request budget (``shared.integrations.rate_limit``), or None. The
    # worker asks it to admit an export before claiming it (``worker.export_job._admit``).
    limiter: RateLimiter | None
    # How long after a request's answer (or deadline) a record it stored may still be missing
    # from ``find_voucher``. Until then "not found" proves nothing.
    search_delay_seconds: float

    def prepare_voucher(self, draft: VoucherDraft) -> PreparedVoucher:
        """Resolve everything the voucher refers to; PermanentError (nothing sent) if it cannot
        be booked (unknown account, VAT code...).

        The worker first asks inside its claim's transaction, with requests refused
        (``shared.integrations.http.requests_refused``): every request goes through
        ``VendorHttp``, which then raises ``RequestRefused``, and a lock the client may hold
        across a request is taken with ``http.holding`` (refuses instead of waiting). A client
        that needs nothing from the target prepares from memory there."""

    def send_voucher(self, prepared: PreparedVoucher, gate: SendGate) -> PostedVoucher: ...
    def find_voucher(self, external_number: str) -> PostedVoucher | None: ...
    def attach_receipt(self, voucher_id: str, filename: str, content: bytes,
                       content_type: str) -> None: ...
    def has_attachment(self, voucher_id: str) -> bool:
        """Whether the voucher already carries a document (a receipt upload whose answer was
        lost must not be repeated: the target would add the pages twice)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class ConnectionVersion:
    """A connection known by what tells whether its cached client is current (id and
    ``updated_at``; the worker reads only those): ``load`` reads the whole row, and is called
    only when the client must be built."""

    id: str
    updated_at: datetime
    load: Callable[[], TargetConnection]


def _build(connection: TargetConnection | ConnectionVersion) -> TargetClient:
    if isinstance(connection, ConnectionVersion):
        connection = connection.load()
    # UnknownSystem (a ValueError) for a row whose system is no longer registered.
    system = registry.target(connection.target_system)
    limiter = limiter_for(connection.id, connection.target_system, connection.options)
    return system.build_client(connection, connection_credentials(connection), limiter)


_cache: ClientCache[TargetClient] = ClientCache(_build)
client_for = _cache.get
