"""Which client talks to which target system, and one cached client per connection.

A client instance caches its session token and chart-of-accounts lookups, so worker threads
share one per connection (rebuilt when the connection is edited).
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Protocol

from shared.db.models import TargetConnection
from shared.domain.organizations import connection_credentials
from shared.domain.vouchers import PostedVoucher, VoucherDraft


class TargetClient(Protocol):
    system: str

    def find_voucher(self, external_number: str) -> PostedVoucher | None: ...
    def post_voucher(self, draft: VoucherDraft) -> PostedVoucher: ...
    def attach_receipt(self, voucher_id: str, filename: str, content: bytes,
                       content_type: str) -> None: ...
    def close(self) -> None: ...


def _build(connection: TargetConnection) -> TargetClient:
    credentials = connection_credentials(connection)
    if connection.target_system == "tripletex":
        from shared.integrations.tripletex import TripletexClient, TripletexOptions

        return TripletexClient(
            connection.base_url,
            consumer_token=credentials["consumer_token"],
            employee_token=credentials["employee_token"],
            company_id=str(credentials.get("company_id", "0")),
            options=TripletexOptions.model_validate(connection.options or {}),
        )
    raise ValueError(f"no client for target system {connection.target_system!r}")


_clients: dict[str, tuple[datetime, TargetClient]] = {}
_lock = threading.Lock()


def client_for(connection: TargetConnection) -> TargetClient:
    with _lock:
        cached = _clients.get(connection.id)
        if cached is not None and cached[0] == connection.updated_at:
            return cached[1]
        if cached is not None:
            cached[1].close()
        client = _build(connection)
        _clients[connection.id] = (connection.updated_at, client)
        return client
