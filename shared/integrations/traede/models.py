"""Every TRAEDE shape we read or send: the one place to correct when TRAEDE's real contract
differs from our assumptions (shared/guides/entries-export-api.md: [seed] = the seed page,
[doc] = developer.traede.com, [assumed] = our contract until TRAEDE says otherwise).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# [seed] "You can at a max mark 10 accounting entries at a time".
MARK_MAX = 10
# [assumed] Laravel's ``string|max:255`` for the note and the system_id.
NOTE_MAX_LENGTH = 255
SYSTEM_ID_MAX_LENGTH = 255


def parse_utc_datetime(value: Any) -> datetime:
    """TRAEDE's datetimes as aware UTC datetimes.

    [assumed] Laravel's classic ``Y-m-d H:i:s`` without an offset, which is UTC (the seed says
    the API speaks UTC); ISO 8601 with an offset (or ``Z``) is converted to UTC.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value.strip():
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    else:
        raise ValueError("expected a date and time such as 2026-03-18 10:15:00")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def format_utc_datetime(moment: datetime) -> str:
    """What we send in ``not_exported_since`` and ``created_at`` filters: UTC, Laravel's form."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


class AccountingEntry(BaseModel):
    """The accounting entry object [doc: core-api/accounting-entries/the-accounting-entry-object]:
    one balanced pair, ``amount`` debited to ``account`` and credited to ``contra_account``.
    No VAT code, no dimensions, no attachment."""

    model_config = ConfigDict(extra="ignore")

    id: int = Field(strict=True)
    currency: str
    amount: Decimal  # signed; a float on the wire, read as Decimal (never through a float)
    account: int = Field(strict=True)  # the debit account, in TRAEDE's chart
    contra_account: int = Field(strict=True)  # the credit account
    date: datetime  # UTC
    text: str | None = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @field_validator("amount", mode="before")
    @classmethod
    def _exact_amount(cls, value: Any) -> Decimal:
        # The listing is parsed with parse_float=Decimal; an announcement payload stored by the
        # engine carries the amount as its decimal text. A float here would already have been
        # rounded by someone: its shortest repr is the number that was written.
        if isinstance(value, bool):
            raise ValueError("expected a number")
        if isinstance(value, float):
            value = repr(value)
        try:
            amount = Decimal(value)
        except (InvalidOperation, TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
        if not amount.is_finite():
            raise ValueError(f"expected a finite number, got {value!r}")
        return amount

    @field_validator("date", "created_at", "updated_at", mode="before")
    @classmethod
    def _utc(cls, value: Any) -> datetime | None:
        return None if value is None else parse_utc_datetime(value)


class MarkItem(BaseModel):
    """One item of ``POST /v10/accounting-entries/mark-as-exported`` [seed]."""

    accounting_entry_id: int
    system_id: str
    # Shown in the entry's timeline in TRAEDE (the accountant's audit trail) [seed].
    note: str | None = Field(default=None, max_length=NOTE_MAX_LENGTH)


class MarkRequest(BaseModel):
    accounting_entries: list[MarkItem] = Field(min_length=1, max_length=MARK_MAX)


class LaravelError(BaseModel):
    """[assumed] Laravel's error body: ``{"message": ..., "errors": {field: [messages]}}``."""

    model_config = ConfigDict(extra="ignore")

    message: str | None = None
    errors: dict[str, list[str]] | None = None

    def details(self) -> list[str]:
        return [f"{field}: {message}" for field, messages in (self.errors or {}).items()
                for message in messages]
