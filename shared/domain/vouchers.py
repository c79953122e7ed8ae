"""A target-neutral voucher: what we ask an accounting system to book.

The mapping step (``shared.domain.mapping``) builds a ``VoucherDraft`` from an expense and the
connection's account mapping; each target client turns it into its own request body.
Money is ``Decimal`` quantised to two places; gross amounts, debit positive, summing to zero.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from pydantic import BaseModel, Field, field_validator, model_validator

CENT = Decimal("0.01")


def money(value: Decimal | str | int) -> Decimal:
    return Decimal(str(value)).quantize(CENT)


class PostingDraft(BaseModel):
    account_number: str
    amount: Decimal = Field(description="Gross amount, debit positive, credit negative.")
    description: str = ""
    vat_code: str | None = Field(
        default=None,
        description="Target VAT type number. When set the target splits the VAT out of the gross.",
    )
    department_number: str | None = None
    project_number: str | None = None

    @field_validator("amount", mode="before")
    @classmethod
    def _quantise(cls, value):
        return money(value)


class VoucherDraft(BaseModel):
    external_number: str = Field(max_length=70, description="Our export id; the dedup key.")
    date: date
    description: str
    currency: str = "NOK"
    postings: list[PostingDraft] = Field(min_length=2)

    @model_validator(mode="after")
    def _balanced(self) -> VoucherDraft:
        total = sum((p.amount for p in self.postings), Decimal("0"))
        if total != 0:
            raise ValueError(f"postings do not balance: they sum to {total}, not 0")
        return self


class PostedVoucher(BaseModel):
    """What a target answered for a booked voucher."""

    id: str = Field(description="The target's internal id of the voucher.")
    number: str | None = Field(default=None, description="Human voucher number, e.g. '17'.")
    reference: str = Field(description="What we show as external_reference.")
    booked_on: date | None = None
