"""Send one Findity export through the running stack by webhook, as Findity would.

The demo organization gets a Findity connection to a fresh sandbox Findity organization whose
webhook URL points at our API. Then the sandbox "bulk sends" two approved reports: it builds the
export package and POSTs the webhook; our worker fetches the package, books each voucher in the
Tripletex sandbox and reports SUCCESS back to the sandbox Findity.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from sandbox.findity.records import accepted_voucher_updates

DEMO_REPORTS = [
    {"owner_name": "Kari Nordmann", "title": "Kundebesøk Bergen", "expenses": [
        {"text": "Flybillett Oslo-Bergen", "account": "7140", "amount": "1680.00", "vat_rate": 12},
        {"text": "Kontorrekvisita", "account": "6800", "amount": "437.50", "vat_rate": 25}]},
    {"owner_name": "Ola Hansen", "title": "Kurs Trondheim", "expenses": [
        {"text": "Kurslunsj", "account": "6860", "amount": "345.00", "vat_rate": 15}]},
]


@dataclass(frozen=True)
class FindityDemo:
    findity_organization_id: str
    export_id: str
    voucher_ids: list[str]
    webhook_url: str


def send_demo_export(*, api_url: str, findity_url: str, admin_token: str,
                     organization_id: str) -> FindityDemo:
    with httpx.Client(timeout=15.0) as http:
        org = http.post(f"{findity_url}/_sandbox/organizations",
                        json={"name": "Fjordreiser Demo AS (Findity)"})
        org.raise_for_status()
        org = org.json()
        source = http.put(
            f"{api_url}/api/v1/admin/organizations/{organization_id}/sources/findity",
            headers={"Authorization": f"Bearer {admin_token}"},
            json={"base_url": org["base_url"],
                  "credentials": {"client_id": org["client_id"],
                                  "client_secret": org["client_secret"],
                                  "token_url": org["token_url"]},
                  "options": {"organization_id": org["organization_id"]},
                  # The demo organization has two targets; Findity's vouchers go to Tripletex.
                  "target_system": "tripletex"})
        source.raise_for_status()
        webhook_url = api_url + source.json()["webhook_path"]
        http.patch(f"{findity_url}/_sandbox/organizations/{org['organization_id']}",
                   json={"webhook_url": webhook_url}).raise_for_status()
        export = http.post(f"{findity_url}/_sandbox/organizations/{org['organization_id']}/exports",
                           json={"reports": DEMO_REPORTS, "send_webhook": True})
        export.raise_for_status()
        export = export.json()
    return FindityDemo(org["organization_id"], export["export_id"], export["voucher_ids"],
                       webhook_url)


def reported_statuses(findity_url: str, demo: FindityDemo) -> dict[str, dict]:
    """voucher id -> the update the sandbox Findity accepted for it (what its admin would see)."""
    response = httpx.get(f"{findity_url}/_sandbox/organizations/{demo.findity_organization_id}"
                         f"/exports/{demo.export_id}/status-updates", timeout=10.0)
    response.raise_for_status()
    return accepted_voucher_updates(response.json())


def wait_until_reported(findity_url: str, demo: FindityDemo, timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        reported = reported_statuses(findity_url, demo)
        if len(reported) == len(demo.voucher_ids) or time.monotonic() > deadline:
            return reported
        time.sleep(0.3)
