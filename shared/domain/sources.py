"""Expense sources: connections, announced export packages, webhook deliveries.

A package is known once per (connection, external export id): the unique constraint makes a
webhook redelivered five times at once, or a webhook racing the poller, create one
``SourceUnit`` and one processing job.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Row, bindparam, exists, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from shared import crypto, ids
from shared.config import get_settings
from shared.db.models import (
    AccountingExport,
    ExportStatus,
    SourceConnection,
    SourceUnit,
    TargetConnection,
    WebhookDelivery,
)
from shared.db.paging import newest_first_page
from shared.db.session import Transaction
from shared.db.types import utcnow
from shared.domain import exports as export_service
from shared.domain.errors import Conflict, DomainError, NotFound, ValidationFailed
from shared.domain.organizations import check_system_options, get_organization
from shared.domain.source_units import (
    SETTLED,
    SourceUnitStatus,
    insert_event_of_each,
    record_unit_event,
    transition_unit,
    write_unit_event,
)
from shared.integrations import registry
from shared.jobs import Job, enqueue_after_commit, enqueue_job_after_commit
from shared.logs import get_logger
from shared.queue import TASK_INGEST_SOURCE_UNIT, TASK_REPORT_TO_SOURCE

log = get_logger(__name__)

SIGNATURE_HEADER = "X-AIC-Signature"
SIGNATURE_TOLERANCE_SECONDS = 300


class InvalidSignature(DomainError):
    code = "invalid_signature"


def upsert_source_connection(
    session: Session,
    org_id: str,
    source_system: str,
    *,
    base_url: str,
    credentials: dict[str, Any] | None = None,
    webhook_secret: str | None = None,
    target_system: str | None = None,
    options: dict[str, Any] | None = None,
) -> SourceConnection:
    """Create or replace the organization's connection to one source system.

    ``credentials``: the fields the source's registry entry declares (``CredentialField``),
    replaced as a whole; omitted on update to keep the stored ones, but not together with a new
    ``base_url`` (the stored secrets would then go to whatever host it names, see
    ``upsert_connection``). A URL the secrets go to that is itself a credential (Findity's
    token endpoint) can therefore only change with them. ``options``: validated against the
    entry's ``options_model``; omitted on update to keep the stored ones. ``target_system``:
    where the source's expenses are booked; when omitted, the one it already books to, else the
    organization's only target connection, else the only target system registered.
    """
    get_organization(session, org_id)
    connection = source_connection_for(session, org_id, source_system)
    try:
        system = registry.source(source_system)
        target_system = registry.target(
            target_system or _default_target(session, org_id, connection)).name
    except registry.UnknownSystem as unknown:
        raise ValidationFailed(str(unknown)) from None
    if not base_url.startswith(("http://", "https://")):
        raise ValidationFailed("base_url must start with http:// or https://")
    if credentials is not None:
        _check_credentials(system, credentials)
    elif connection is not None and base_url.rstrip("/") != connection.base_url:
        message = (
            f"base_url would change from {connection.base_url} to {base_url.rstrip('/')}, and "
            "the stored credentials would then be sent there: send the credentials "
            f"({system.describe_credentials()}) together with the new base_url (`credentials` "
            "in the admin API; `aic source set` without --keep-credentials). "
            "Nothing was changed."
        )
        raise ValidationFailed(message, details=[{"field": "credentials", "message": message}])
    if options is not None or connection is None:
        check_system_options(system, options or {})
    if options is not None and connection is not None:
        _check_fixed_options(session, system, connection, options)
    if connection is None:
        if credentials is None:
            raise ValidationFailed(f"credentials are required for a new {source_system} "
                                   f"connection: {system.describe_credentials()}")
        connection = SourceConnection(
            id=ids.new_id("src", 6), organization_id=org_id, source_system=source_system,
            webhook_token=secrets.token_urlsafe(24), options={})
        session.add(connection)
    connection.base_url = base_url.rstrip("/")
    connection.target_system = target_system
    if credentials is not None:
        connection.credentials_encrypted = crypto.encrypt_json(credentials)
    if webhook_secret is not None:
        connection.webhook_secret_encrypted = (
            crypto.encrypt_json({"secret": webhook_secret}) if webhook_secret else None)
    if options is not None:
        connection.options = options
    connection.updated_at = utcnow()
    session.flush()
    return connection


def _check_fixed_options(session: Session, system: registry.SourceSystem,
                         connection: SourceConnection, options: dict[str, Any]) -> None:
    """Refuse changing an option the entry declares fixed once used
    (``SourceSystem.options_fixed_once_used``) when the connection has received work: the
    source keeps its state under that value, so a new one would hand us again what was already
    booked, or no longer see what we report. The first value, the same value again, and any
    change before the first unit pass."""
    stored = connection.options or {}
    changed = [name for name in system.options_fixed_once_used
               if stored.get(name) is not None and options.get(name) != stored[name]]
    if not changed:
        return
    units = session.scalar(select(func.count()).select_from(SourceUnit).where(
        SourceUnit.source_connection_id == connection.id))
    if not units:
        return
    details = [{"field": f"options.{name}", "message": (
        f"options.{name} is fixed once the connection has received work: it is "
        f"{stored[name]!r}, and {units} unit(s) were received from {system.display_name} under "
        f"it. {system.display_name} keeps its own state under this value, so another one "
        "would hand over again what was already booked (or no longer see what we report). "
        f"Keep {stored[name]!r}; to start over, use a new connection. Nothing was changed.")}
        for name in changed]
    raise ValidationFailed("; ".join(d["message"] for d in details), details=details)


def _check_credentials(system: registry.SourceSystem, credentials: dict[str, Any]) -> None:
    """The entry's credential fields, each a non-empty string; nothing it does not declare
    (a misspelt field would otherwise be stored and the real one found missing at run time)."""
    known = {field.name: field for field in system.credentials}
    unknown = sorted(set(credentials) - set(known))
    if unknown:
        raise ValidationFailed(f"credentials for {system.name} have no field "
                               f"{', '.join(unknown)}; they are: {system.describe_credentials()}")
    missing = [name for name in system.required_credentials if not credentials.get(name)]
    if missing:
        raise ValidationFailed(
            f"credentials for {system.name} need: {', '.join(missing)} (credentials are "
            "replaced as a whole: send every one of them)")
    for name, value in credentials.items():
        if not isinstance(value, str):
            raise ValidationFailed(f"credentials.{name} must be a string")
        if known[name].url and not value.startswith(("http://", "https://")):
            raise ValidationFailed(f"credentials.{name} must start with http:// or https://")


def _default_target(session: Session, org_id: str, existing: SourceConnection | None) -> str:
    if existing is not None and existing.target_system:
        return existing.target_system
    names = list(registry.targets())
    if len(names) == 1:
        return names[0]
    connected = sorted(set(session.scalars(select(TargetConnection.target_system).where(
        TargetConnection.organization_id == org_id))))
    if len(connected) == 1:
        return connected[0]
    raise ValidationFailed("name the target_system the expenses go to: one of "
                           + ", ".join(connected or names))


def source_connection_for(session: Session, org_id: str,
                          source_system: str) -> SourceConnection | None:
    return session.scalar(select(SourceConnection).where(
        SourceConnection.organization_id == org_id, SourceConnection.source_system == source_system))


def source_credentials(connection: SourceConnection) -> dict[str, str]:
    return crypto.decrypt_json(connection.credentials_encrypted)


# Statements of the receiver's hot path, built once (see _insert_unit_statement).
_CONNECTION_FOR_WEBHOOK = select(
    SourceConnection.id, SourceConnection.organization_id, SourceConnection.source_system,
    SourceConnection.options, SourceConnection.webhook_secret_encrypted,
    SourceConnection.updated_at,
).where(SourceConnection.webhook_token == bindparam("token"))
_DELIVERIES = WebhookDelivery.__table__
_DELIVERY_COLUMNS = ["source_connection_id", "external_export_id", "body", "duplicate",
                     "received_at"]
# The delivery's row is written only while its connection is still as the delivery was checked
# against (same id, same updated_at: every change of a connection sets it, see
# upsert_source_connection, and the ORM's onupdate for the poll's own columns; a change made
# by hand in SQL must set it too, or deliveries checked before it go on). INSERT ...
# SELECT ... WHERE, so the check costs no statement of its own; its RETURNING row says it was
# written.
_CONNECTION_UNCHANGED = select(SourceConnection.id).where(
    SourceConnection.id == bindparam("source_connection_id"),
    SourceConnection.updated_at == bindparam("checked_updated_at",
                                             type_=SourceConnection.updated_at.type),
).exists()


def _delivery_value(name: str):
    return bindparam(name, type_=_DELIVERIES.c[name].type)


def _insert_delivery_if_unchanged(duplicate):
    """The delivery's row, ``duplicate`` bound or (the one-statement form) computed."""
    values = {name: _delivery_value(name) for name in _DELIVERY_COLUMNS} | {"duplicate": duplicate}
    return insert(_DELIVERIES).from_select(
        _DELIVERY_COLUMNS,
        select(*(values[name] for name in _DELIVERY_COLUMNS)).where(_CONNECTION_UNCHANGED),
    ).returning(_DELIVERIES.c.id)


_INSERT_DELIVERY_IF_UNCHANGED = _insert_delivery_if_unchanged(_delivery_value("duplicate"))


class ConnectionChanged(Exception):
    """The source connection a webhook delivery was checked against changed (its secret, its
    options) or went away before the delivery's commit: nothing of the delivery may be
    committed; check it again against the connection as it is now."""


# The connections of the webhook tokens this process answered recently, by token, so that a
# delivery costs no SELECT of its connection: the webhook routes' busiest statement after the
# writes (issue 12, target 6). Never trusted beyond what it is checked against: a delivery
# checked against a kept row commits only if the connection is unchanged (record_webhook), and
# the receiver checks again against a fresh read whatever a kept row refused. Only tokens that
# exist are kept (no unknown token takes a place), at most this many; a full map starts over.
_WEBHOOK_CONNECTIONS: dict[str, Row] = {}
WEBHOOK_CONNECTIONS_KEPT = 1000


def kept_webhook_connection(token: str) -> Row | None:
    """The connection row of an earlier delivery to ``token`` in this process, or None."""
    return _WEBHOOK_CONNECTIONS.get(token)


def forget_webhook_connection(token: str) -> None:
    _WEBHOOK_CONNECTIONS.pop(token, None)


def connection_for_webhook(connection: Connection, token: str) -> Row:
    """What a webhook delivery needs of the source connection its URL token names: ``id``,
    ``organization_id``, ``source_system``, ``options``, ``webhook_secret_encrypted`` and
    ``updated_at`` (what ``record_webhook`` checks it against), read now and kept for the
    next deliveries to the token (``kept_webhook_connection``).

    The columns, not the ORM object: nothing here changes the connection.
    """
    found = connection.execute(_CONNECTION_FOR_WEBHOOK, {"token": token}).first()
    if found is None:
        raise NotFound("no webhook is registered at this URL; copy the URL from `aic source show`")
    if len(_WEBHOOK_CONNECTIONS) >= WEBHOOK_CONNECTIONS_KEPT:
        _WEBHOOK_CONNECTIONS.clear()
    _WEBHOOK_CONNECTIONS[token] = found
    return found


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(connection: SourceConnection | Row, header: str | None, body: bytes,
                     now: float | None = None) -> None:
    """Required only when the connection has a webhook secret. Replays outside the window fail."""
    if not connection.webhook_secret_encrypted:
        return
    if not header:
        raise InvalidSignature(f"this webhook requires a {SIGNATURE_HEADER} header")
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        raise InvalidSignature(f"{SIGNATURE_HEADER} must look like t=<unix time>,v1=<hex>") from None
    now = now if now is not None else time.time()
    if abs(now - timestamp) > SIGNATURE_TOLERANCE_SECONDS:
        raise InvalidSignature("the signature's timestamp is outside the allowed 5-minute window "
                               "(a replayed or delayed delivery)")
    secret = crypto.decrypt_json(connection.webhook_secret_encrypted)["secret"]
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, given):
        raise InvalidSignature("the signature does not match the body")


def announce_unit(session: Session, connection: SourceConnection, external_export_id: str, *,
                  via: str, listed: dict[str, Any] | None = None,
                  version: str | None = None) -> tuple[SourceUnit, bool]:
    """Record that the source has a unit for us; queue it once. Returns (row, newly_known).

    ``listed``: a poll listing's payload (read with our own credentials), kept on the unit for
    the adapter's ``fetch_unit``; the newest listing of a unit not ingested yet replaces it.
    A webhook passes None: its body is never content.
    """
    existing = _find(session, connection.id, external_export_id)
    if existing is None:
        unit_id = _insert_unit(session.connection(), connection, external_export_id, via=via,
                               listed=listed, version=version)
        if unit_id is not None:
            _announced(session, unit_id, external_export_id, via=via)
            return session.get(SourceUnit, unit_id), True
        # A concurrent delivery (or the poller) recorded it first: that one queued the job.
        existing = _find(session, connection.id, external_export_id)
    _refresh_listing(session, existing, listed)
    return existing, False


def _insert_unit(db: Connection, connection: SourceConnection | Row, external_export_id: str,
                 *, via: str, listed: dict[str, Any] | None = None,
                 version: str | None = None) -> str | None:
    """Insert the unit unless the connection already has one with this external id: its new id,
    or None. ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (SQLite >= 3.35 and PostgreSQL):
    the unique constraint decides between concurrent deliveries in one statement, without a
    SAVEPOINT to roll back to, and the loser neither fails nor waits for a retry."""
    inserted = db.execute(_insert_unit_statement(db.dialect.name), _new_unit_values(
        connection, external_export_id, via=via, listed=listed, version=version)).first()
    return inserted.id if inserted is not None else None


def _new_unit_values(connection: SourceConnection | Row, external_export_id: str, *, via: str,
                     listed: dict[str, Any] | None = None,
                     version: str | None = None) -> dict[str, Any]:
    """The values of a new unit's row, by the names ``_insert_unit_statement`` binds."""
    now = utcnow()
    return {
        "id": ids.new_id("srcexp", 6), "organization_id": connection.organization_id,
        "source_connection_id": connection.id, "external_export_id": external_export_id,
        "status": SourceUnitStatus.RECEIVED.value, "received_via": via, "attempts": 0,
        "received_at": now, "listed_payload": listed, "listed_version": version,
        "created_at": now, "updated_at": now}


_UNIT_COLUMNS = ("id", "organization_id", "source_connection_id", "external_export_id",
                 "status", "received_via", "attempts", "received_at", "listed_payload",
                 "listed_version", "created_at", "updated_at")
_INSERT_UNIT: dict[str, Any] = {}


def _insert_unit_statement(dialect: str):
    # Built once per dialect, the values bound at execution: building the statement with
    # .values() on every delivery cost more CPU than running it (issue 12, target 6). Each
    # column bound by name (not left to the execution's keys), so that the same statement also
    # works inside a CTE (_record_webhook_statement).
    if dialect not in _INSERT_UNIT:
        insert_for = {"postgresql": postgresql_insert, "sqlite": sqlite_insert}.get(dialect)
        if insert_for is None:
            raise RuntimeError(f"no INSERT ... ON CONFLICT for the {dialect} dialect")
        units = SourceUnit.__table__
        _INSERT_UNIT[dialect] = (
            insert_for(units)
            .values({name: bindparam(name, type_=units.c[name].type) for name in _UNIT_COLUMNS})
            .on_conflict_do_nothing(index_elements=["source_connection_id",
                                                    "external_export_id"])
            .returning(units.c.id))
    return _INSERT_UNIT[dialect]


def _announced(session: Session, unit_id: str, external_export_id: str, *, via: str) -> None:
    """A unit was just inserted: its first event, and its ingestion job (sent after commit)."""
    record_unit_event(session, unit_id, "announced", actor=via,
                      data={"external_id": external_export_id})
    enqueue_job_after_commit(session, ingest_job(unit_id))


def ingest_job(unit_id: str) -> Job:
    """The job that ingests a unit: sent only once the unit's row is committed (a worker must
    find it), and again by the stuck-work sweeper if it is lost."""
    return Job(TASK_INGEST_SOURCE_UNIT, [unit_id], get_settings().export_queue)


def _refresh_listing(session: Session, unit: SourceUnit, listed: dict[str, Any] | None) -> None:
    # Only before ingestion: what was ingested stays what the unit's items were made from.
    if listed is not None and listed != unit.listed_payload:
        session.execute(
            update(SourceUnit)
            .where(SourceUnit.id == unit.id,
                   SourceUnit.status.in_([SourceUnitStatus.RECEIVED.value,
                                            SourceUnitStatus.INGESTING.value,
                                            SourceUnitStatus.REJECTED.value]))
            .values(listed_payload=listed)
            .execution_options(synchronize_session=False))


def reannounce_rejected(session: Session, export: SourceUnit) -> bool:
    """The source lists a package we rejected (it answered 404 past the grace): take it again.

    Only the poll calls this: the list is read with the organization's own credentials, so the
    package exists, unlike a webhook's export id, which anyone who knows the URL can send. The
    grace starts again from now. Compare-and-set, so two polls queue it once. True if it did.
    """
    previous = export.last_error or "no reason recorded"
    if not transition_unit(
            session, export, SourceUnitStatus.RECEIVED, actor="poll",
            reason="the source lists it as pending again",
            values={"received_at": utcnow(), "attempts": 0, "lease_expires_at": None,
                    "last_error": f"the source lists this export as unprocessed again; it had "
                                  f"been rejected: {previous}"}):
        return False
    requeue_unit(session, export)
    return True


def report_again(session: Session, unit: SourceUnit, *, actor: str = "poll") -> bool:
    """The source's own pending listing names a unit we completed: it does not hold our reports
    (a mark lost on its side, a crash between booking and the recorded answer, a stale read).

    Only the poll calls this, for a ``completed`` unit (every item booked and reported): its
    reports are sent again, never its bookings; repeating a report is harmless (the same
    outcome, the same number). Compare-and-set, so two polls reopen it once. True if it did.
    """
    if unit.status != SourceUnitStatus.COMPLETED.value or not transition_unit(
            session, unit, SourceUnitStatus.PROCESSING, actor=actor,
            reason="the source lists it as pending again: its reports are sent again (nothing "
                   "is booked again)"):
        return False
    for item in unit.vouchers:
        item.reported_status = None
        item.reported_number = None
    enqueue_report(session, unit.id)
    return True


def reopen_package(session: Session, source_export_id: str, *, actor: str) -> None:
    """A package's export is running again (an operator's retry): the package is not done.

    Called in the transaction of that status change, so the stuck-work sweeper, which re-sends
    the reports of packages in ``processing``, covers a report task lost on the way.
    """
    unit = session.get(SourceUnit, source_export_id)
    if unit is not None and SourceUnitStatus(unit.status) in SETTLED:
        transition_unit(session, unit, SourceUnitStatus.PROCESSING, actor=actor,
                        reason="an export of it runs again")


def requeue_unit(session: Session, export: SourceUnit) -> None:
    enqueue_job_after_commit(session, ingest_job(export.id))


def enqueue_report(session: Transaction, source_export_id: str) -> None:
    enqueue_after_commit(session, TASK_REPORT_TO_SOURCE, source_export_id,
                         queue=get_settings().report_queue)


def _find(session: Session, connection_id: str, external_export_id: str) -> SourceUnit | None:
    return session.scalar(select(SourceUnit).where(
        SourceUnit.source_connection_id == connection_id,
        SourceUnit.external_export_id == external_export_id))


def record_webhook(db: Connection, connection: SourceConnection | Row, external_export_id: str,
                   body: dict[str, Any]) -> tuple[str | None, Job | None]:
    """Store one delivery, in ``db``'s transaction; a new export id becomes a unit. Returns the
    new unit's id and its ingestion job: the caller sends it (``shared.jobs.send_jobs``) once
    the transaction has committed, never before. A redelivery or a concurrent copy changes
    nothing but the delivery log, and has neither (None, None).

    The hot path of the receiver, on a Core connection (no ORM session): the insert goes first
    (no SELECT before it), and a duplicate reads nothing more (the id of the unit it repeats
    would only have fed a DEBUG line; the delivery row names the export id). ``connection`` is
    the row the delivery was checked against (token, signature, organization); its
    ``updated_at`` must still be the connection's when the delivery's row is written, else
    ``ConnectionChanged`` is raised and the caller must not commit.
    """
    unit = _new_unit_values(connection, external_export_id, via="webhook")
    announced = {"external_id": external_export_id}
    if db.dialect.name == "postgresql":
        # The same three rows in one statement (see _record_webhook_statement).
        written = db.execute(_record_webhook_statement(), {
            **unit, "event_kind": "announced", "event_actor": "webhook",
            "event_data": announced, "body": body,
            "checked_updated_at": connection.updated_at}).one()
        unit_id, logged = written.unit_id, written.delivery_id is not None
    else:
        unit_id = db.execute(_insert_unit_statement(db.dialect.name), unit).scalar()
        if unit_id is not None:
            write_unit_event(db, unit_id, "announced", actor="webhook", data=announced,
                             at=unit["created_at"])
        logged = db.execute(_INSERT_DELIVERY_IF_UNCHANGED, {
            "source_connection_id": connection.id, "external_export_id": external_export_id,
            "body": body, "duplicate": unit_id is None, "received_at": unit["received_at"],
            "checked_updated_at": connection.updated_at}).first() is not None
    if not logged:
        raise ConnectionChanged(f"source connection {connection.id} changed during the delivery")
    return unit_id, (ingest_job(unit_id) if unit_id is not None else None)


@lru_cache(maxsize=1)  # built once, the values bound at execution
def _record_webhook_statement():
    """PostgreSQL: a delivery's unit (when new), its "announced" event and the delivery's row
    in one statement, built from the statements SQLite runs one by one (the unit's
    ``INSERT ... ON CONFLICT DO NOTHING RETURNING id``, ``write_unit_event``'s row, the
    delivery's ``INSERT ... SELECT ... WHERE`` the connection is unchanged), as
    data-modifying CTEs:

        WITH new_unit AS (INSERT INTO source_units ... ON CONFLICT DO NOTHING RETURNING id),
             announced AS (INSERT INTO source_unit_events ... SELECT id FROM new_unit),
             logged AS (INSERT INTO webhook_deliveries ... SELECT ..., NOT EXISTS (SELECT
                        FROM new_unit) WHERE the connection is unchanged RETURNING id)
        SELECT (SELECT id FROM new_unit) AS unit_id, (SELECT id FROM logged) AS delivery_id

    The same rows with the same values; one round trip and one statement's execution
    instead of three: of a delivery's database work, about a third of the receiver's CPU and
    of PostgreSQL's (issue 12, target 6; docs/PERFORMANCE.md). PostgreSQL runs every
    data-modifying CTE once and to the end, whether or not the query reads it; the event's
    foreign key sees the unit of the same statement. SQLite has no INSERT inside a WITH, so
    it keeps the three statements; tests/unit/test_webhook_receiver.py checks the rows on
    whichever database the tests run."""
    new_unit = _insert_unit_statement("postgresql").cte("new_unit")
    announced = insert_event_of_each(new_unit).cte("announced")
    logged = _insert_delivery_if_unchanged(~exists(select(new_unit.c.id))).cte("logged")
    return select(
        select(new_unit.c.id).scalar_subquery().label("unit_id"),
        select(logged.c.id).scalar_subquery().label("delivery_id"),
    ).add_cte(announced)


def get_source_unit(session: Session, org_id: str, source_export_id: str) -> SourceUnit:
    export = session.get(SourceUnit, source_export_id)
    if export is None or export.organization_id != org_id:
        raise NotFound(f"source export {source_export_id} does not exist")
    return export


def list_source_units(session: Session, org_id: str, *, page: int, limit: int,
                      external_export_id: str | None = None) -> tuple[list[SourceUnit], int]:
    """One organization's units newest first (``GET /api/v1/source-exports``), one page and how
    many match; off ``ix_source_units_org_created`` (migration 0011). A feed source (TRAEDE,
    Brex) makes one unit per expense, so this list grows as the export list does."""
    conditions = [SourceUnit.organization_id == org_id]
    if external_export_id:
        # The organization's connections named too (one per source system): the lookup by
        # reference then comes off the (connection, reference) unique index instead of walking
        # every unit of the organization.
        conditions += [SourceUnit.external_export_id == external_export_id,
                       SourceUnit.source_connection_id.in_(select(SourceConnection.id).where(
                           SourceConnection.organization_id == org_id))]
    return newest_first_page(session, SourceUnit, conditions, page=page, limit=limit)


def retry_source_unit(session: Session, org_id: str, source_export_id: str, *,
                      actor: str) -> SourceUnit:
    """An operator's retry of what failed in a settled unit (after fixing a mapping, say).

    Items refused at ingest (nothing was ever posted for them: an unmapped account, a date
    before go-live) are forgotten and the unit goes back to ``received``: the next ingest
    converts them again with the connection's current options, and only those (the others are
    known and skipped). Items whose export failed in the target are retried as exports
    (``retry_export``). Nothing booked is touched, so nothing can be booked twice. Refused with
    409 while the unit is still working, or when nothing in it failed.
    """
    unit = get_source_unit(session, org_id, source_export_id)
    if unit.status not in {s.value for s in SETTLED}:
        raise Conflict(f"source export {source_export_id} is {unit.status}; only a completed "
                       "one is retried (its items are still being worked on)")
    refused = [v for v in unit.vouchers if v.outcome_error is not None and v.export_id is None]
    failed_exports = [
        v.export_id for v in unit.vouchers if v.export_id is not None
        and session.scalar(select(AccountingExport.status).where(
            AccountingExport.id == v.export_id)) == ExportStatus.FAILED.value]
    if not refused and not failed_exports:
        raise Conflict(f"nothing failed in source export {source_export_id}: nothing to retry")
    if refused:
        reasons = {v.external_voucher_id: v.outcome_error for v in refused}
        if not transition_unit(
                session, unit, SourceUnitStatus.RECEIVED, actor=actor,
                reason="retried on request: the items refused at ingest are converted again",
                # The listing is read again (fetch_unit without ``listed``): the entry may have
                # been corrected in the source rather than in our mapping.
                values={"received_at": utcnow(), "attempts": 0, "lease_expires_at": None,
                        "last_error": None, "listed_payload": None},
                data={"refused": reasons}):
            raise Conflict(f"source export {source_export_id} changed meanwhile; try again")
        for item in refused:
            session.delete(item)
        session.flush()
        requeue_unit(session, unit)
    for export_id in failed_exports:
        export_service.retry_export(session, org_id, export_id, actor=actor)
    return unit


def resend_since(session: Session, connection: SourceConnection, announcements: list[Any], *,
                 actor: str, since: Any) -> dict[str, list[str]]:
    """An operator's re-send: what the source lists as not exported since ``since`` (TRAEDE's
    ``not_exported_since``: also entries marked for our system before then). Our own table,
    not the source, decides what is a duplicate, so nothing is ever posted a second time:

    - unknown to us -> announced like a poll's entry (ingested and booked as usual);
    - known and completed (booked and reported) -> its report is sent again (``report_again``:
      the same voucher number as before);
    - anything else (failed, still working) -> left as it is, still visible as it was.

    Returns the external ids per outcome. Logged, and each re-reported unit's event names the
    actor. The caller lists the announcements with its own credentials (``list_pending``'s
    rules: a poll-like listing, so ``listed`` content may be stored).
    """
    outcome: dict[str, list[str]] = {"announced": [], "reported_again": [], "left": []}
    for item in announcements:
        unit, new = announce_unit(session, connection, item.external_id, via="resend",
                                  listed=item.payload or None, version=item.version)
        if new:
            outcome["announced"].append(item.external_id)
        elif unit.status == SourceUnitStatus.COMPLETED.value and report_again(
                session, unit, actor=actor):
            outcome["reported_again"].append(item.external_id)
        else:
            outcome["left"].append(item.external_id)
    log.warning("source re-send since a date", connection_id=connection.id, actor=actor,
                since=str(since), **{key: len(ids) for key, ids in outcome.items()})
    return outcome
