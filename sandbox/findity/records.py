"""Reading what the sandbox Findity recorded, for the tests and the dev stack's demo."""

from __future__ import annotations

from typing import Any


def accepted_voucher_updates(status_update_records: list[dict[str, Any]]) -> dict[str, dict]:
    """voucher id -> the last update the sandbox accepted for it (what a Findity admin would see).

    ``status_update_records`` is the list ``GET /_sandbox/organizations/{org}/exports/{id}/
    status-updates`` returns; refused calls (any status but 200) changed nothing and are skipped.
    """
    latest: dict[str, dict] = {}
    for record in status_update_records:
        if record.get("response_status") != 200:
            continue
        for update in record["body"]["voucherUpdates"]:
            latest[update["id"]] = update
    return latest
