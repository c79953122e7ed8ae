"""Which client talks to which target system; one cached client per target connection.

Each client gets its connection's rate limiter (``shared.integrations.rate_limit``): the budget
lives in Redis under the connection id, so every worker process's client of the same connection
shares it. ``connection.options["rate_limit"]`` tunes it; without it the target's default from
settings applies.
"""

from __future__ import annotations

from typing import Protocol

from shared.db.models import TargetConnection
from shared.domain.organizations import connection_credentials
from shared.domain.vouchers import PostedVoucher, VoucherDraft
from shared.integrations.client_cache import ClientCache
from shared.integrations.rate_limit import limiter_for


class TargetClient(Protocol):
    system: str

    def preflight(self, draft: VoucherDraft) -> None:
        """Raise PermanentError if the draft cannot be booked (unknown account...); send nothing."""

    def find_voucher(self, external_number: str) -> PostedVoucher | None: ...
    def post_voucher(self, draft: VoucherDraft) -> PostedVoucher: ...
    def attach_receipt(self, voucher_id: str, filename: str, content: bytes,
                       content_type: str) -> None: ...
    def close(self) -> None: ...


def _build(connection: TargetConnection) -> TargetClient:
    credentials = connection_credentials(connection)
    limiter = limiter_for(connection.id, connection.target_system, connection.options)
    if connection.target_system == "tripletex":
        from shared.integrations.tripletex import TripletexClient, TripletexOptions

        return TripletexClient(
            connection.base_url,
            consumer_token=credentials["consumer_token"],
            employee_token=credentials["employee_token"],
            company_id=str(credentials.get("company_id", "0")),
            options=TripletexOptions.model_validate(connection.options or {}),
            limiter=limiter,
        )
    raise ValueError(f"no client for target system {connection.target_system!r}")


_cache: ClientCache[TargetClient] = ClientCache(_build)
client_for = _cache.get
