"""Request bodies of the sandbox's control API (``/_sandbox/...``): snake_case, our own API.

These are not Findity shapes; those are written out by hand in ``state`` and ``generator``.
"""

from __future__ import annotations

import re
from datetime import date as Date
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sandbox.findity.generator import (
    DEFAULT_TAX_CODES,
    Expense,
    Format,
    Report,
    generate_reports,
    money,
    new_id,
)

VatRate = Literal[25, 15, 12, 0]
RepeatedSuccessAnswer = Literal["409", "200", "400"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrganizationIn(_Body):
    name: str = Field(default="Sandbox AS", min_length=1)
    verification_lists_type: Format = Format.REPORT_PER_EXPENSE
    webhook_url: str | None = None
    external_organization_id: str | None = None
    recipient_configured: bool = True
    token_expires_in: int = Field(default=3600, ge=1, description="Access token life, seconds.")
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    repeated_success_answer: RepeatedSuccessAnswer = Field(
        default="409",
        description="What a SUCCESS for a voucher that already holds a SUCCESS with a voucher "
                    "number gets: 409 VOUCHER_ALREADY_PROCESSED (the default), 200 (taken "
                    "again), or 400 VALIDATION_ERROR. No Findity document says; tests run all.")


class OrganizationPatch(_Body):
    """Only the fields present are changed; ``webhook_url: null`` removes the webhook."""

    name: str | None = None
    verification_lists_type: Format | None = None
    webhook_url: str | None = None
    external_organization_id: str | None = None
    recipient_configured: bool | None = None
    token_expires_in: int | None = Field(default=None, ge=1)
    webhook_timeout_seconds: float | None = Field(default=None, gt=0)
    repeated_success_answer: RepeatedSuccessAnswer | None = None

    @model_validator(mode="after")
    def _no_null_for_required(self) -> OrganizationPatch:
        nullable = {"webhook_url", "external_organization_id"}
        for name in self.model_fields_set - nullable:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class ExpenseIn(_Body):
    text: str = Field(min_length=1)
    account: str = Field(min_length=1)
    amount: Decimal = Field(gt=0, description="Gross amount as on the receipt, VAT included.")
    vat_rate: VatRate = 25
    tax_code: str | None = Field(default=None, description="Defaults to the rate's SAF-T code.")
    date: Date | None = None
    cost_center: str | None = None
    project: str | None = None

    @field_validator("amount", mode="before")
    @classmethod
    def _exact(cls, value: object) -> object:
        # A JSON number arrives as float; its shortest repr is the number that was written.
        return repr(value) if isinstance(value, float) else value

    @field_validator("amount")
    @classmethod
    def _two_decimals(cls, value: Decimal) -> Decimal:
        if value != money(value):
            raise ValueError("amounts have at most two decimals")
        return money(value)

    def build(self, default_date: Date) -> Expense:
        tax_code = self.tax_code if self.tax_code is not None else DEFAULT_TAX_CODES[self.vat_rate]
        return Expense(
            id=new_id(), text=self.text, account=self.account, amount=self.amount,
            vat_rate=self.vat_rate, tax_code=tax_code, date=self.date or default_date,
            cost_center=self.cost_center, project=self.project,
        )


class ReportIn(_Body):
    owner_name: str = Field(min_length=1)
    owner_id: str | None = None
    title: str | None = None
    expenses: list[ExpenseIn] = Field(min_length=1)

    def build(self, default_date: Date) -> Report:
        # The same name gets the same owner id, so USER_* formats group a person's reports.
        slug = "".join(c for c in self.owner_name.lower() if c.isalnum())
        owner_id = self.owner_id or f"u-{slug}"
        return Report(
            id=new_id(),
            owner_id=owner_id,
            owner_name=self.owner_name,
            title=self.title or f"Expense report: {self.owner_name}",
            expenses=tuple(e.build(default_date) for e in self.expenses),
        )


class GenerateIn(_Body):
    reports: int = Field(default=2, ge=1, le=500)
    expenses_per_report: int = Field(default=3, ge=1, le=50)
    seed: int = 1
    users: int | None = Field(default=None, ge=1)


BasisFault = Literal["not_pdf", "missing", "oversized"]


class ExportIn(_Body):
    reports: list[ReportIn] | None = None
    generate: GenerateIn | None = None
    send_webhook: bool = True
    webhook_copies: int = Field(default=1, ge=1, le=20)
    lose_webhook: bool = False
    # Findity not yet consistent when its webhook fires: the export and its voucher package
    # answer 404 EXPORT_NOT_FOUND for this long after the export was sent (the list shows it).
    not_found_for_seconds: float = Field(default=0.0, ge=0, le=3600)
    # The same for every basis PDF of the export (404 VOUCHER_NOT_FOUND).
    basis_not_found_for_seconds: float = Field(default=0.0, ge=0, le=3600)
    # A broken basis PDF, for good, per voucher position (0-based, in the package's order):
    # "not_pdf" answers an HTML page, "missing" 404 VOUCHER_NOT_FOUND, "oversized" a PDF of
    # ``oversized_basis_bytes`` sent chunked (no Content-Length, so only counting catches it).
    bad_basis: dict[int, BasisFault] = Field(default_factory=dict)
    oversized_basis_bytes: int = Field(default=64 * 1024 * 1024, ge=1, le=1024 * 1024 * 1024)
    # Give the vouchers these ids, in order: Findity sending a (corrected) voucher again under
    # the id it had in an earlier export. Must name exactly as many vouchers as are built.
    voucher_ids: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> ExportIn:
        if (self.reports is None) == (self.generate is None):
            raise ValueError('give exactly one of "reports" and "generate"')
        if self.reports is not None and not self.reports:
            raise ValueError("reports must not be empty")
        if any(index < 0 for index in self.bad_basis):
            raise ValueError("bad_basis keys are voucher positions: 0 or more")
        if self.voucher_ids is not None:
            if len(set(self.voucher_ids)) != len(self.voucher_ids):
                raise ValueError("voucher_ids must not repeat an id")
            if not all(re.fullmatch(r"[0-9a-zA-Z_-]{1,64}", v) for v in self.voucher_ids):
                raise ValueError("voucher_ids must be 1-64 letters, digits, '-' or '_'")
        return self

    def build_reports(self, today: Date) -> list[Report]:
        if self.generate is not None:
            g = self.generate
            return generate_reports(reports=g.reports, expenses_per_report=g.expenses_per_report,
                                    seed=g.seed, users=g.users)
        return [r.build(today) for r in self.reports or []]


class FailRuleIn(_Body):
    status: int = Field(ge=100, le=599)
    count: int = Field(default=1, ge=1)
    path_contains: str | None = None
    method: str | None = None
    retry_after: str | float | None = Field(
        default=None, description="Retry-After header value: seconds or an HTTP date.")
    code: str | None = None
    message: str | None = None


class FaultsIn(_Body):
    latency_ms: int = Field(default=0, ge=0, le=60_000)
    fail_next: list[FailRuleIn] = Field(default_factory=list)
    updatestatus_down: bool = False
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
