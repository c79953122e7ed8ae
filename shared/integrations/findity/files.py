"""Files of a voucher package for Findity's content endpoint (SIE 4 or CSV).

Optional, per connection: an accountant can download from Findity exactly what the export held.
Pure functions returning bytes; the client uploads them.

Both files show the package AS DELIVERED (the separate VAT row stays a row of its own): a file has
no VAT types, so there is nothing to merge and nothing is booked twice.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Literal

from shared.domain.vouchers import money
from shared.integrations.findity.conversion import UnbookableVoucher
from shared.integrations.findity.models import AccountingVoucher, VoucherPackage

FileFormat = Literal["sie4", "csv"]

# SIE's reserved dimension numbers: 1 = kostnadsställe (cost centre), 6 = projekt.
SIE_DIMENSIONS: tuple[tuple[str, int], ...] = (("costCenter", 1), ("project", 6))
SIE_ENCODING = "cp437"  # "#FORMAT PC8" means IBM PC 8-bit, code page 437
SIE_CONTENT_TYPE = "text/plain; charset=IBM437"
CSV_CONTENT_TYPE = "text/csv; charset=utf-8"

CSV_COLUMNS = (
    "voucher_id", "date", "owner", "account", "tax_code", "amount", "tax_amount",
    "cost_center", "project", "text",
)

# Letters code page 437 lacks, written as their nearest Nordic equivalent (Norwegian ø is
# Swedish ö) rather than a "?": a Norwegian name stays readable in a Swedish program.
_CP437_FALLBACKS = {
    "ø": "ö", "Ø": "Ö", "–": "-", "—": "-", "‘": "'", "’": "'", "“": '"', "”": '"', "…": "...",
    "€": "EUR",
}


# --- SIE 4 ------------------------------------------------------------------------------------


def sie4_file(
    package: VoucherPackage,
    *,
    company_name: str,
    generated_at: datetime,
    program: str = "AccountingIntegrationClient",
    program_version: str = "1.0",
) -> bytes:
    """The package's accounting vouchers as a SIE 4 file (CP437, CRLF).

    One ``#VER "" n date "text"`` block per accounting voucher, numbered 1.. in package order,
    with one ``#TRANS account {dims} amount "" "row text"`` line per non-zero row. Payment
    vouchers have no accounts and are skipped. Raises ``UnbookableVoucher`` for a voucher whose
    rows do not sum to zero (SIE requires balanced verifications) and ``ValueError`` when the
    vouchers are in several currencies (a SIE file has one).
    """
    vouchers = package.accounting_vouchers()
    currencies = {(v.currency or "NOK").upper() for v in vouchers}
    if len(currencies) > 1:
        raise ValueError(
            f"export {package.export_id} holds vouchers in {', '.join(sorted(currencies))}; "
            f"a SIE file has one currency"
        )
    lines = [
        "#FLAGGA 0",
        "#FORMAT PC8",
        "#SIETYP 4",
        f"#PROGRAM {_sie_string(program)} {_sie_string(program_version)}",
        f"#GEN {generated_at:%Y%m%d}",
        f"#FNAMN {_sie_string(company_name)}",
    ]
    if currencies:
        lines.append(f"#VALUTA {currencies.pop()}")
    for number, voucher in enumerate(vouchers, start=1):
        lines.extend(_sie_verification(voucher, number))
    text = "".join(f"{line}\r\n" for line in lines)
    return text.encode(SIE_ENCODING)


def _sie_verification(voucher: AccountingVoucher, number: int) -> list[str]:
    if voucher.balance != 0:
        raise UnbookableVoucher(
            f"voucher {voucher.id}: rows sum to {money(voucher.balance)}, not 0 — correct the "
            f"report in Findity",
            voucher_id=voucher.id,
        )
    text = (voucher.text or "").strip() or f"Findity voucher {voucher.id}"
    lines = [f'#VER "" {number} {voucher.date:%Y%m%d} {_sie_string(text)}', "{"]
    for row in voucher.voucher_rows:
        if row.amount == 0:
            continue
        objects = " ".join(
            f"{dim} {_sie_string(row.dimension[name])}"
            for name, dim in SIE_DIMENSIONS
            if row.dimension.get(name)
        )
        trans = f"   #TRANS {_sie_account(row.account)} {{{objects}}} {_amount(row.amount)}"
        if row.text:
            trans += f' "" {_sie_string(row.text)}'  # transdat left empty, then transtext
        lines.append(trans)
    lines.append("}")
    return lines


def _sie_string(value: str) -> str:
    """A quoted SIE field: CP437-safe, no control characters, ``"`` and ``\\`` escaped."""
    return '"' + _cp437_safe(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sie_account(account: str) -> str:
    # SIE account numbers are numeric; quote anything else rather than write a broken line.
    return account if account.isascii() and account.isdigit() else _sie_string(account)


def _cp437_safe(value: str) -> str:
    chars = []
    for char in value:
        if unicodedata.category(char) == "Cc":  # tabs and newlines would break the line
            chars.append(" ")
            continue
        try:
            char.encode(SIE_ENCODING)
        except UnicodeEncodeError:
            replacement = _CP437_FALLBACKS.get(char)
            if replacement is None:
                # Accented letters without a CP437 form lose the accent (š -> s); others, "?".
                base = unicodedata.normalize("NFKD", char)
                base = "".join(c for c in base if not unicodedata.combining(c))
                try:
                    base.encode(SIE_ENCODING)
                    replacement = base or "?"
                except UnicodeEncodeError:
                    replacement = "?"
            chars.append(replacement)
        else:
            chars.append(char)
    return "".join(chars)


def _amount(value: Decimal) -> str:
    return format(money(value), "f")


# --- CSV --------------------------------------------------------------------------------------


def csv_file(package: VoucherPackage) -> bytes:
    """Every row of the package, one CSV line each, UTF-8 with BOM (Excel opens it as UTF-8).

    Columns: ``CSV_COLUMNS``. Payment rows have no account, tax code or VAT; their owner is the
    row's own (a payment voucher may pay several people's reports).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_csv_rows(package))
    return buffer.getvalue().encode("utf-8-sig")


def _csv_rows(package: VoucherPackage) -> Iterable[list[str]]:
    for voucher in package.accounting_vouchers():
        owner = voucher.owner_name or voucher.owner_id
        for row in voucher.voucher_rows:
            yield [
                voucher.id, voucher.date.isoformat(), _cell(owner), _cell(row.account),
                row.tax_code or "", _amount(row.amount), _amount(row.tax_amount),
                _cell(row.dimension.get("costCenter") or ""),
                _cell(row.dimension.get("project") or ""),
                _cell(row.text),
            ]
    for voucher in package.payment_vouchers():
        for row in voucher.voucher_rows:
            owner = voucher.owner_name if row.owner_id == voucher.owner_id else None
            yield [
                voucher.id, voucher.date.isoformat(), _cell(owner or row.owner_id), "", "",
                _amount(row.amount), "", "", "", _cell(row.text),
            ]


def _cell(value: str) -> str:
    # Employees type these texts; a leading =, +, - or @ would make a spreadsheet run a formula.
    if value and value[0] in "=+-@\t\r":
        return "'" + value
    return value


# --- one entry point --------------------------------------------------------------------------


def package_file(
    package: VoucherPackage,
    fmt: FileFormat,
    *,
    company_name: str | None = None,
    generated_at: datetime | None = None,
    program: str = "AccountingIntegrationClient",
) -> tuple[str, bytes, str]:
    """``(filename, content, content_type)`` of the package in ``fmt`` ("sie4" or "csv").

    SIE needs ``company_name`` and ``generated_at`` (no clock is read here).
    """
    if fmt == "sie4":
        if not company_name or generated_at is None:
            raise ValueError("a SIE 4 file needs company_name and generated_at")
        content = sie4_file(
            package, company_name=company_name, generated_at=generated_at, program=program
        )
        return f"findity-{package.export_id}.se", content, SIE_CONTENT_TYPE
    if fmt == "csv":
        return f"findity-{package.export_id}.csv", csv_file(package), CSV_CONTENT_TYPE
    raise ValueError(f"unknown file format {fmt!r}; use 'sie4' or 'csv'")
