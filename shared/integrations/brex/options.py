"""``SourceConnection.options`` of a Brex connection (validated by the client factory; an
unknown key is refused so a typo never silently turns a rule off)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.integrations.brex.currencies import EXPONENTS
from shared.integrations.brex.models import EXPENSE_STATUSES, SPLIT
from shared.integrations.errors import PermanentError

AmountField = Literal["billing_amount", "original_amount", "purchased_amount", "budget_amount",
                      "usd_equivalent_amount"]

# NS 4102 (the Norwegian standard chart, Tripletex's default): the card issuer is a supplier
# (2400 leverandørgjeld); an employee's outlay is owed to them (2930, as for Findity).
DEFAULT_CREDIT_ACCOUNTS = {"CARD": "2400", "REIMBURSEMENT": "2930"}


class BrexOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Statuses that count as approved [guide, trap 8]. SPLIT is never one: an itemized parent
    # is booked through its children's lines (see conversion.py).
    approved_statuses: list[str] = Field(default_factory=lambda: ["APPROVED", "SETTLED"],
                                         min_length=1)
    # Which of the expense's amounts is booked [guide: billing_amount is what the entity is
    # charged, in its own currency].
    amount_field: AmountField = "billing_amount"
    # Cost account by Brex category (``RESTAURANTS``) and by merchant, the merchant winning:
    # its raw descriptor (``"GITHUB, INC."``) or ``"mcc:5734"``. ``default_account`` books
    # what neither maps; without it an unmapped expense is refused, naming what to map.
    category_accounts: dict[str, str] = Field(default_factory=dict)
    merchant_accounts: dict[str, str] = Field(default_factory=dict)
    default_account: str | None = None
    # Credit account by expense type (what the expense is owed to).
    credit_accounts: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_CREDIT_ACCOUNTS))
    # The ledger's currency: an expense whose booked amount is in another is refused (None:
    # book each in its own currency and let the target decide).
    ledger_currency: str | None = None
    # The poll asks for updated_at >= high-water mark - overlap: Brex's inclusive bounds, clocks
    # that differ and a list that lags behind changes. Must exceed the list's lag.
    overlap_seconds: int = Field(default=300, ge=0, le=7 * 24 * 3600)
    # Nothing updated before this is listed on the first poll (None: all Brex lists).
    go_live: datetime | None = None
    # Write our voucher reference into the expense memo (needs the expenses.card scope).
    memo_write_back: bool = False

    @field_validator("approved_statuses")
    @classmethod
    def _known_statuses(cls, value: list[str]) -> list[str]:
        wrong = [s for s in value if s not in EXPENSE_STATUSES or s == SPLIT]
        if wrong:
            raise ValueError(
                f"not an expense status that can count as approved: {', '.join(wrong)}; use "
                f"some of {', '.join(sorted(EXPENSE_STATUSES - {SPLIT}))} (SPLIT parents are "
                "booked through their itemized expenses)")
        return sorted(set(value))

    @field_validator("ledger_currency")
    @classmethod
    def _known_currency(cls, value: str | None) -> str | None:
        if value is not None and value not in EXPONENTS:
            raise ValueError(f"{value!r} is not an ISO 4217 currency code we know")
        return value

    @field_validator("go_live")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("go_live needs a time zone (e.g. 2026-01-01T00:00:00Z)")
        return value


def read_options(options: dict[str, Any] | None) -> BrexOptions:
    """The connection's options; invalid ones are a ``PermanentError`` naming each problem
    (the poll and the ingest report it on the connection instead of crashing)."""
    try:
        return BrexOptions.model_validate(options or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: "
                             f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise PermanentError(f"the Brex connection's options are invalid: {problems}",
                             system="brex", code="invalid_options") from None
