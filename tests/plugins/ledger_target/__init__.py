"""A throwaway target system that lives only in the test tree: one folder, one ``SYSTEM``.

It proves the promise of ``shared.integrations.registry``: a process started with
``AIC_EXTRA_SYSTEMS=tests.plugins.ledger_target`` accepts connections to ``ledger`` (credentials
checked against the fields below), and its worker books exports through the posting protocol
into a JSON-lines file (``options.ledger_path``) that the test reads, without any engine module
knowing this system exists.
"""

from __future__ import annotations

import itertools
import json
import os
from datetime import date
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from shared.domain.vouchers import PostedVoucher, VoucherDraft
from shared.integrations.errors import AuthError, SendWithdrawn
from shared.integrations.registry import CredentialField, TargetCapabilities, TargetSystem
from shared.integrations.targets import PreparedVoucher

NAME = "ledger"


class LedgerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ledger_path: str  # the JSON-lines file the vouchers are written to


class LedgerClient:
    """A ``TargetClient``: each voucher is one line; our reference is searchable at once."""

    system = NAME
    search_delay_seconds = 0.0

    def __init__(self, options: LedgerOptions, api_key: str) -> None:
        self.path = Path(options.ledger_path)
        self.api_key = api_key
        self._ids = itertools.count(1)

    def _lines(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def _append(self, record: dict) -> None:
        # One write of one line with O_APPEND: concurrent threads never interleave a line.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)

    def prepare_voucher(self, draft: VoucherDraft) -> PreparedVoucher:
        if self.api_key != "letmein":
            raise AuthError("wrong api_key", system=NAME, code="unauthorized", status_code=401)
        return PreparedVoucher(draft=draft, payload=json.loads(draft.model_dump_json()))

    def send_voucher(self, prepared: PreparedVoucher, gate) -> PostedVoucher:
        if not gate.open():
            raise SendWithdrawn()
        voucher_id = f"{os.getpid()}-{next(self._ids)}"
        self._append({"voucher_id": voucher_id, "reference": prepared.draft.external_number,
                      "voucher": prepared.payload})
        return self._posted(voucher_id)

    def _posted(self, voucher_id: str) -> PostedVoucher:
        return PostedVoucher(id=voucher_id, number=voucher_id, reference=f"LEDGER-{voucher_id}",
                             booked_on=date.today())

    def find_voucher(self, external_number: str) -> PostedVoucher | None:
        for line in self._lines():
            if line.get("reference") == external_number:
                return self._posted(line["voucher_id"])
        return None

    def attach_receipt(self, voucher_id: str, filename: str, content: bytes,
                       content_type: str) -> None:
        self._append({"attachment_of": voucher_id, "filename": filename})

    def has_attachment(self, voucher_id: str) -> bool:
        return any(line.get("attachment_of") == voucher_id for line in self._lines())

    def close(self) -> None:
        pass


SYSTEM = TargetSystem(
    name=NAME,
    display_name="Test Ledger",
    credentials=(CredentialField("api_key", "the ledger's key"),),
    options_model=LedgerOptions,
    base_url_example="http://ledger.invalid",
    build_client=lambda connection, credentials, limiter: LedgerClient(
        LedgerOptions.model_validate(connection.options or {}), credentials["api_key"]),
    capabilities=TargetCapabilities(lookup_by_reference=True, search_delay_seconds=0.0,
                                    reference_max_length=70, attachments=True, drafts=False),
)
