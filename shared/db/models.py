"""The data model. SQLAlchemy 2.0 typed models; schema changes go through Alembic migrations."""

from __future__ import annotations

import enum
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Date,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    LargeBinary,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.db.types import UTCDateTime, utcnow
# The ORM stores the domain's statuses; other modules import them from shared.domain.statuses.
from shared.domain.statuses import ExpenseStatus, ExportStatus, SourceUnitStatus

MONEY = Numeric(14, 2)


class Base(DeclarativeBase):
    pass


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="organization")
    connections: Mapped[list[TargetConnection]] = relationship(back_populates="organization")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="default")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # First characters of the key, so an operator can tell keys apart without the secret.
    key_prefix: Mapped[str] = mapped_column(String(16))
    # What the key may do (shared.domain.organizations.API_KEY_SCOPES), e.g. ["exports"]. No
    # default here: every key is made by create_api_key, which decides; migration 0004 gave the
    # keys that existed before scopes both of them.
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    organization: Mapped[Organization] = relationship(back_populates="api_keys")


class TargetConnection(Base):
    """Where an organization's exports go: one accounting system, its URL and credentials."""

    __tablename__ = "target_connections"
    __table_args__ = (UniqueConstraint("organization_id", "target_system"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    target_system: Mapped[str] = mapped_column(String(40))
    base_url: Mapped[str] = mapped_column(String(500))
    # Fernet-encrypted JSON (shared.crypto); never returned by the API, never logged.
    credentials_encrypted: Mapped[str] = mapped_column(Text)
    # Source account number -> target account number (and vat codes, dimensions); see
    # shared.domain.mapping. Missing entries default to "same number".
    account_mapping: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    organization: Mapped[Organization] = relationship(back_populates="connections")


class Expense(Base):
    """An approved expense ingested from a source, in a target-neutral form.

    ``rows`` are the accounting rows of the expense: ``{"account", "amount", "vat_code",
    "description", "department", "project"}`` with signed gross amounts (debit positive) that sum
    to zero. A row with a ``vat_code`` is a gross amount the target splits VAT out of.
    """

    __tablename__ = "expenses"
    __table_args__ = (UniqueConstraint("organization_id", "source", "source_ref"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    source: Mapped[str] = mapped_column(String(40))
    source_ref: Mapped[str] = mapped_column(String(200))
    status: Mapped[ExpenseStatus] = mapped_column(String(20))
    description: Mapped[str] = mapped_column(String(500))
    employee_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    expense_date: Mapped[date] = mapped_column(Date)
    currency: Mapped[str] = mapped_column(String(3), default="NOK")
    amount: Mapped[Decimal] = mapped_column(MONEY)
    rows: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    receipt_filename: Mapped[str | None] = mapped_column(String(200), nullable=True)
    receipt_content_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    receipt_data: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    target_system: Mapped[str] = mapped_column(String(40))
    export_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AccountingExport(Base):
    """One attempt-to-be of booking one expense in one target system.

    ``status`` changes only through ``shared.domain.state_machine.transition``.
    """

    __tablename__ = "accounting_exports"
    # The list reads an organization's exports ORDER BY created_at DESC, id (migration 0010).
    __table_args__ = (
        Index("ix_exports_org_created", "organization_id", text("created_at DESC"), "id"),
        Index("ix_exports_org_status_created", "organization_id", "status",
              text("created_at DESC"), "id"),
        Index("ix_exports_status_due", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    expense_id: Mapped[str] = mapped_column(ForeignKey("expenses.id"), index=True)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"), index=True, nullable=True)
    connection_id: Mapped[str] = mapped_column(ForeignKey("target_connections.id"))
    target_system: Mapped[str] = mapped_column(String(40))
    status: Mapped[ExportStatus] = mapped_column(String(20))
    # "<expense_id>:<target_system>" while the export is processing or succeeded, NULL
    # otherwise. The unique constraint makes "one live export per expense and target" a database
    # guarantee, so two concurrent requests cannot both create one.
    active_key: Mapped[str | None] = mapped_column(String(100), unique=True, nullable=True)
    reexport_of: Mapped[str | None] = mapped_column(String(40), nullable=True)
    external_reference: Mapped[str | None] = mapped_column(String(200), nullable=True)
    external_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(60), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    celery_task_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # When the next attempt is due: now for fresh work, later while waiting for a retry. The
    # stuck-export sweeper compares against it.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A worker that works on the export holds this lease; a crashed worker's lease runs out.
    lease_owner: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Set (and committed) before the first request that may create a voucher in the target.
    # From then on the export cannot be cancelled, and any retry looks the voucher up first.
    posting_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The latest moment the POST sent under ``posting_started_at`` can still be on its way from
    # our side (its wall-clock deadline). A lookup that finds nothing proves "not booked" only
    # once this moment plus the target's search delay has passed (docs/ARCHITECTURE.md).
    post_deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Set before a receipt upload leaves: a later attempt asks the target whether the voucher
    # already carries it instead of uploading it again (the target would add the pages twice).
    receipt_upload_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    receipt_attached_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The target's human voucher number (Tripletex "number"), reported back to the source.
    external_number: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Set when the export came from a source package (Findity) that expects a status report.
    source_unit_id: Mapped[str | None] = mapped_column(
        ForeignKey("source_units.id"), index=True, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    exported_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    expense: Mapped[Expense] = relationship()
    connection: Mapped[TargetConnection] = relationship()
    events: Mapped[list[ExportEvent]] = relationship(
        back_populates="export", order_by="ExportEvent.id"
    )


class ExportEvent(Base):
    """Append-only log: every status change and every finer step of an export, in order."""

    __tablename__ = "export_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    export_id: Mapped[str] = mapped_column(ForeignKey("accounting_exports.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    from_status: Mapped[str | None] = mapped_column(String(20), nullable=True)
    to_status: Mapped[str | None] = mapped_column(String(20), nullable=True)
    actor: Mapped[str] = mapped_column(String(100))
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    celery_task_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    export: Mapped[AccountingExport] = relationship(back_populates="events")


class SourceConnection(Base):
    """Where an organization's expenses come from: an account in one source system.

    What the system needs beyond ``base_url`` is its registry entry's: ``credentials`` (its
    ``CredentialField``s, encrypted) and ``options`` (its ``options_model``).
    ``webhook_token`` is the unguessable path segment of this connection's webhook URL; an
    optional ``webhook_secret`` additionally requires an HMAC signature on every delivery.
    """

    __tablename__ = "source_connections"
    __table_args__ = (UniqueConstraint("organization_id", "source_system"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    source_system: Mapped[str] = mapped_column(String(40))
    base_url: Mapped[str] = mapped_column(String(500))
    # Fernet-encrypted JSON of the entry's credential fields; never returned, never logged.
    credentials_encrypted: Mapped[str] = mapped_column(Text)
    webhook_token: Mapped[str] = mapped_column(String(64), unique=True)
    webhook_secret_encrypted: Mapped[str | None] = mapped_column(Text, nullable=True)
    target_system: Mapped[str] = mapped_column(String(40))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Where the next poll starts: the adapter's opaque cursor (``PendingPage.next_cursor``),
    # stored only after that page's announcements are committed, so a crash re-reads a page
    # rather than skipping one. NULL: from the start (and always for a "not exported yet" feed).
    poll_cursor: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The last poll's failure in plain words; NULL once a poll succeeds.
    last_poll_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class SourceUnit(Base):
    """One export package announced by a source (a Findity exportId), processed once."""

    __tablename__ = "source_units"
    __table_args__ = (
        UniqueConstraint("source_connection_id", "external_export_id"),
        # The list reads an organization's units ORDER BY created_at DESC, id (migration 0011).
        Index("ix_source_units_org_created", "organization_id", text("created_at DESC"), "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    source_connection_id: Mapped[str] = mapped_column(ForeignKey("source_connections.id"))
    external_export_id: Mapped[str] = mapped_column(String(100))
    # Changed only by shared.domain.source_units.transition_unit().
    status: Mapped[SourceUnitStatus] = mapped_column(String(30))
    received_via: Mapped[str] = mapped_column(String(20))  # webhook | poll
    verification_lists_type: Mapped[str | None] = mapped_column(String(40), nullable=True)
    voucher_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When the source last vouched for the package (webhook, or the poll listing it again after
    # we had rejected it). The not-found grace is counted from here; NULL means ``created_at``.
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # What the source's poll listing (read with our own credentials) said about the unit, for
    # sources whose listing is the content (TRAEDE has no GET of one entry): handed to the
    # adapter's ``fetch_unit``. NULL when only a webhook announced it: a webhook body is never
    # trusted for content.
    listed_payload: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The version the last poll listed (``Announcement.version``; NULL: the source cannot
    # tell). Another version of a unit whose items are ingested makes the poll fetch it again
    # and compare each item's ``content_fingerprint``.
    listed_version: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    connection: Mapped[SourceConnection] = relationship()
    vouchers: Mapped[list[SourceUnitItem]] = relationship(back_populates="unit",
                                                         order_by="SourceUnitItem.id")


class SourceUnitItem(Base):
    """One voucher of a source package, and what we reported back about it.

    ``export_id`` is the accounting export that books it; a voucher that cannot be booked (a
    payment format, an invalid voucher) has none and carries ``outcome_error`` instead.
    """

    __tablename__ = "source_unit_items"
    __table_args__ = (UniqueConstraint("source_unit_id", "external_voucher_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_unit_id: Mapped[str] = mapped_column(ForeignKey("source_units.id"), index=True)
    external_voucher_id: Mapped[str] = mapped_column(String(100))
    expense_id: Mapped[str | None] = mapped_column(ForeignKey("expenses.id"), nullable=True)
    export_id: Mapped[str | None] = mapped_column(ForeignKey("accounting_exports.id"),
                                                  nullable=True)
    outcome_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # What the source was last told and accepted: status, and the voucher number of a SUCCESS.
    # The report task re-reports whenever our outcome differs from this.
    reported_status: Mapped[str | None] = mapped_column(String(20), nullable=True)
    reported_number: Mapped[str | None] = mapped_column(String(40), nullable=True)
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    report_payload: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The update put on the wire and not yet answered, committed before it is sent: a report
    # that finds it set knows the source may already hold that update (worker killed, answer
    # lost) and sends it again on its own, never inside another voucher's request.
    report_in_flight: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The source's refusal of our last report of this voucher, for operators.
    report_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # What operators should know about a booked voucher: its basis PDF was not attached, or
    # the source sent it again with other content after it was booked.
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    # What the booking depended on, hashed (``SourceItem.content_fingerprint``; NULL: the
    # source cannot tell): a re-fetch with another fingerprint is a change in the source.
    content_fingerprint: Mapped[str | None] = mapped_column(String(200), nullable=True)

    unit: Mapped[SourceUnit] = relationship(back_populates="vouchers")


class SourceUnitEvent(Base):
    """Append-only log of a source unit: every status change and every finer step, in order."""

    __tablename__ = "source_unit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    unit_id: Mapped[str] = mapped_column(ForeignKey("source_units.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    from_status: Mapped[str | None] = mapped_column(String(30), nullable=True)
    to_status: Mapped[str | None] = mapped_column(String(30), nullable=True)
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """Every webhook call as received: stored first, handled later (and once)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_connection_id: Mapped[str] = mapped_column(ForeignKey("source_connections.id"),
                                                      index=True)
    external_export_id: Mapped[str] = mapped_column(String(100))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    duplicate: Mapped[bool] = mapped_column(default=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
