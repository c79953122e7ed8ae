"""`aic`: the operator's command line. Same services as the API, straight on the database.

    aic migrate
    aic org create "Acme AS"                 # prints the organization id and its first API key
    aic apikey create org_x --name booking --scope callbacks   # a key for the status callback
    aic connection set org_x tripletex --base-url https://api-test.tripletex.tech/v2
    aic connection test org_x tripletex
    aic exports list org_x --status failed    # a table; --all for every organization, --json
    aic exports wait bat_123                 # a progress bar until the batch ended
    aic exports cancel exp_xp_123
    aic exports show exp_xp_123              # the export and its whole event log
    aic exports retry exp_xp_123             # failed -> processing, queued again
    aic status [--watch]                     # the whole system at a glance

Which systems, and which credential flags, come from ``shared.integrations.registry``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from shared import config as shared_config
from shared.config import (
    PROJECT_ROOT,
    adopt_running_devstack,
    get_settings,
    require_safe_settings,
)
from shared.integrations import registry


def _credential_options(parser: argparse.ArgumentParser, systems) -> None:
    """One ``--<field>`` flag per credential field of any of ``systems`` (registry)."""
    seen: set[str] = set()
    for system in systems:
        for field in system.credentials:
            if field.name in seen:
                continue
            seen.add(field.name)
            hint = "prompted when omitted" if field.secret else "optional" if not field.required \
                else "required"
            parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name,
                                help=f"{system.name}: {field.description} ({hint})")


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def cmd_migrate(args) -> int:
    from shared.db.migrate import upgrade

    upgrade()
    print(f"database migrated: {get_settings().database_url.split('@')[-1]}")
    return 0


def cmd_keygen(args) -> int:
    from shared.crypto import generate_secret_key

    print(generate_secret_key())
    return 0


def cmd_org_create(args) -> int:
    from shared.db.session import session_scope
    from shared.domain import organizations

    with session_scope() as session:
        org = organizations.create_organization(session, args.name)
        key, plaintext = organizations.create_api_key(session, org.id, scopes=args.scopes)
    print(f"organization: {org.id}\napi key {key.id}, scopes {','.join(key.scopes)} "
          f"(shown once, store it now): {plaintext}")
    return 0


def cmd_org_list(args) -> int:
    from sqlalchemy import select

    from shared.db.models import Organization
    from shared.db.session import session_scope

    with session_scope() as session:
        for org in session.scalars(select(Organization).order_by(Organization.created_at)):
            print(f"{org.id}\t{org.name}\t{org.created_at:%Y-%m-%d}")
    return 0


def cmd_apikey_create(args) -> int:
    from shared.db.session import session_scope
    from shared.domain import organizations

    with session_scope() as session:
        key, plaintext = organizations.create_api_key(session, args.org, args.name,
                                                      scopes=args.scopes)
    print(f"api key {key.id}, scopes {','.join(key.scopes)} (shown once, store it now): "
          f"{plaintext}")
    return 0


def cmd_apikey_list(args) -> int:
    from shared.db.session import session_scope
    from shared.domain import organizations

    with session_scope() as session:
        for k in organizations.get_organization(session, args.org).api_keys:
            state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
            print(f"{k.id}\t{k.name}\t{k.key_prefix}...\t{','.join(k.scopes)}\t{state}")
    return 0


def cmd_apikey_revoke(args) -> int:
    from shared.db.session import session_scope
    from shared.domain import organizations

    with session_scope() as session:
        organizations.revoke_api_key(session, args.org, args.key_id)
    print(f"revoked {args.key_id}")
    return 0


def cmd_connection_set(args) -> int:
    from shared.db.session import session_scope
    from shared.domain import organizations

    # Credentials stored under the committed development key are readable by anyone who has the
    # repository: refuse before asking for them (AIC_ENVIRONMENT=development allows it).
    require_safe_settings("aic connection set", variables=("AIC_SECRET_KEY",))
    credentials = None
    if not args.keep_credentials:
        # Secrets are prompted for rather than taken as flags by default, so tokens stay out of
        # shell history (or read from --credentials-file, for scripts); optional fields left out
        # are left to the system's default.
        credentials = {}
        from_file = _credentials_file(args.credentials_file, registry.target(args.target))
        for field in registry.target(args.target).credentials:
            value = getattr(args, field.name, None)
            if value is None:
                value = from_file.get(field.name)
            if value is None and field.secret:
                if field.required:
                    value = _prompt_secret(field.name, "--credentials-file")
                elif sys.stdin.isatty():
                    # Optional (BillDiary: a token, or a key with its secret): Enter skips it.
                    value = getpass.getpass(
                        f"{field.name.replace('_', ' ')} (optional, Enter to skip): ") or None
            if value is not None:
                credentials[field.name] = value
    # --draft and --voucher-type are options of targets whose options schema has them; for any
    # other target they are refused here instead of being stored as options it does not know.
    option_fields = registry.target(args.target).options_model.model_fields
    for flag, given, field in (("--draft", args.draft, "send_to_ledger"),
                               ("--voucher-type", args.voucher_type, "voucher_type_name")):
        if given and field not in option_fields:
            print(f"{flag} does not apply to {args.target}", file=sys.stderr)
            return 2
    mapping = json.loads(Path(args.mapping_file).read_text()) if args.mapping_file else None
    with session_scope() as session:
        existing = organizations.connection_for(session, args.org, args.target)
        # Keep options this command has no flag for (rate_limit, ...); change only what it sets.
        options = dict(existing.options or {}) if existing is not None else {}
        if "send_to_ledger" in option_fields:
            options["send_to_ledger"] = not args.draft
        if args.voucher_type:
            options["voucher_type_name"] = args.voucher_type
        if args.options_file:
            options.update(json.loads(Path(args.options_file).read_text()))
        connection = organizations.upsert_connection(
            session, args.org, args.target, base_url=args.base_url, credentials=credentials,
            account_mapping=mapping, options=options)
    print(f"connection {connection.id}: {args.target} at {connection.base_url}")
    return 0


class UsageError(Exception):
    """A command that cannot run as asked: the message says what to do instead (exit 2)."""


def _prompt_secret(name: str, alternative: str) -> str:
    if not sys.stdin.isatty():
        raise UsageError(f"{name} is needed and there is no terminal to ask for it: give it in a "
                         f"JSON file with {alternative} FILE ('-' reads the JSON from stdin)")
    return getpass.getpass(f"{name.replace('_', ' ')}: ")


def _credentials_file(path: str | None, system) -> dict[str, str]:
    """A JSON object of credential fields, from a file or stdin ('-'): tokens stay out of the
    command line (``ps``, shell history) and scripts need no terminal."""
    if path is None:
        return {}
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        values = json.loads(text)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read credentials from {path}: {error}") from None
    known = {field.name for field in system.credentials}
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise UsageError(f"{path} must hold a JSON object of strings, e.g. "
                         + json.dumps({name: "..." for name in sorted(known)}))
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"{path}: {', '.join(unknown)} is not a credential of {system.name}; "
                         f"its fields are {', '.join(sorted(known))}")
    return values


def cmd_connection_show(args) -> int:
    from sqlalchemy import func, select

    from shared.db.models import AccountingExport
    from shared.db.session import session_scope
    from shared.domain import organizations

    with session_scope() as session:
        connection = organizations.connection_for(session, args.org, args.target)
        if connection is None:
            print(f"error: {args.org} has no {args.target} connection; create it with "
                  f"`aic connection set {args.org} {args.target} --base-url ...`", file=sys.stderr)
            return 1
        counts = dict(session.execute(
            select(AccountingExport.status, func.count())
            .where(AccountingExport.connection_id == connection.id)
            .group_by(AccountingExport.status)).all())
        shown = {
            "connection_id": connection.id, "organization_id": connection.organization_id,
            "target_system": connection.target_system, "base_url": connection.base_url,
            # Credentials never leave the database; only whether they are set.
            "has_credentials": bool(connection.credentials_encrypted),
            "options": connection.options or {}, "account_mapping": connection.account_mapping
            or {}, "updated_at": connection.updated_at, "exports_by_status": counts,
        }
    _print_json(shown)
    return 0


def cmd_connection_test(args) -> int:
    from shared.db.session import session_scope
    from shared.domain import organizations
    from shared.integrations.errors import IntegrationError
    from shared.integrations.targets import client_for

    with session_scope() as session:
        connection = organizations.connection_for(session, args.org, args.target)
        if connection is None:
            print(f"{args.org} has no {args.target} connection", file=sys.stderr)
            return 1
        client = client_for(connection)
    try:
        who = client.check_connection()
    except IntegrationError as error:
        print(f"connection failed: {error.message}", file=sys.stderr)
        return 1
    print(f"connection works: {who}")
    return 0


def cmd_exports_list(args) -> int:
    from producers.api.schemas import ExportSummary
    from shared.db.session import session_scope
    from shared.domain import exports

    if (args.org is None) == (not args.all):
        raise UsageError("name an organization, or --all for every organization")
    filters = exports.ExportFilters(status=args.status, target_system=args.target,
                                    initiated_from=_since(args.since) if args.since else None)
    with session_scope() as session:
        rows, total = exports.list_exports(session, args.org, filters, page=1, limit=args.limit,
                                           every_organization=args.all)
        if args.json:
            _print_json({"total": total, "data": [
                {**ExportSummary.of(e).model_dump(mode="json"),
                 "organization_id": e.organization_id, "attempts": e.attempts} for e in rows]})
            return 0
        table = [("EXPORT", *(("ORGANIZATION",) if args.all else ()), "STATUS", "TARGET",
                  "REFERENCE", "TRIES", "CREATED", "MESSAGE")]
        for e in rows:
            table.append((e.id, *((e.organization_id,) if args.all else ()), e.status,
                          e.target_system, e.external_reference or "-", str(e.attempts),
                          f"{e.created_at:%Y-%m-%d %H:%M}", e.error_message or ""))
    print(_table(table))
    print(f"{len(rows)} of {total} exports" + (" (newest first; --limit shows more)"
                                               if total > len(rows) else ""))
    return 0


def _since(value: str):
    """An ISO date/time (UTC when it names no offset) or an age: 30m, 2h, 7d."""
    import re
    from datetime import datetime, timedelta, timezone

    match = re.fullmatch(r"(\d+)([mhd])", value.strip())
    if match:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return datetime.now(timezone.utc) - timedelta(**{unit: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--since {value!r}: give an age (30m, 2h, 7d) or an ISO date/time "
                         "(2026-11-29 or 2026-11-29T08:00)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _table(rows: list[tuple[str, ...]]) -> str:
    """Columns as wide as their widest cell; the last one (a message) is cut to the terminal."""
    import shutil

    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    room = max(20, shutil.get_terminal_size((160, 20)).columns - sum(widths) - 2 * len(widths))
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        last = row[-1] if len(row[-1]) <= room else row[-1][:room - 1] + "…"
        lines.append("  ".join([*cells, last]).rstrip())
    return "\n".join(lines)


def cmd_exports_cancel(args) -> int:
    from shared.db.session import session_scope
    from shared.domain import exports

    with session_scope() as session:
        org_id = _org_of(session, args.export_id)
        export = exports.cancel_export(session, org_id, args.export_id, actor="cli")
        print(f"{export.id} is {export.status}")
    return 0


def cmd_exports_wait(args) -> int:
    """Until every export of a batch (or the given exports) ended; a progress bar on a terminal.
    Exit 0: all succeeded; 1: some failed or were cancelled; 3: still running at --timeout."""
    import time

    from sqlalchemy import func, select
    from tqdm import tqdm

    from shared.db.models import AccountingExport
    from shared.db.session import session_scope

    ids = args.ids
    if len(ids) == 1 and ids[0].startswith("bat_"):
        condition = AccountingExport.batch_id == ids[0]
    else:
        condition = AccountingExport.id.in_(ids)
    deadline = time.monotonic() + args.timeout
    bar = None
    try:
        while True:
            with session_scope() as session:
                counts = dict(session.execute(
                    select(AccountingExport.status, func.count()).where(condition)
                    .group_by(AccountingExport.status)).all())
            total = sum(counts.values())
            if not total:
                raise UsageError(f"no export matches {' '.join(ids)}: give a batch id (bat_...) "
                                 "or export ids (exp_...)")
            done = total - counts.get("processing", 0)
            if bar is None:
                bar = tqdm(total=total, unit="export", disable=not sys.stderr.isatty()
                           and not args.progress, file=sys.stderr)
            bar.n = done
            bar.set_postfix({k: v for k, v in sorted(counts.items())}, refresh=True)
            if done == total or time.monotonic() > deadline:
                break
            time.sleep(args.interval)
    finally:
        if bar is not None:
            bar.close()
    print("  ".join(f"{status} {count}" for status, count in sorted(counts.items())))
    if done < total:
        print(f"still processing after {args.timeout:g}s", file=sys.stderr)
        return 3
    return 0 if counts.get("success", 0) == total else 1


def _org_of(session, export_id: str) -> str:
    from shared.db.models import AccountingExport
    from shared.domain.errors import NotFound

    export = session.get(AccountingExport, export_id)
    if export is None:
        raise NotFound(f"export {export_id} does not exist")
    return export.organization_id


def cmd_exports_show(args) -> int:
    from producers.api.schemas import EventOut, ExportDetail
    from shared.db.session import session_scope
    from shared.domain import exports

    with session_scope() as session:
        org_id = _org_of(session, args.export_id)
        detail = ExportDetail.of(exports.get_export(session, org_id, args.export_id))
        events = [EventOut.of(e).model_dump() for e in exports.export_events(session, org_id,
                                                                             args.export_id)]
    if args.json:
        _print_json({**detail.model_dump(), "events": events})
        return 0
    d = detail
    print(f"{d.export_id}  {d.status.upper()}  to {d.target_system}  ({d.organization_id})")
    print(f"  expense {d.expense_id}   attempts {d.attempts}   reference "
          f"{d.external_reference or '-'}   batch {d.batch_id or '-'}")
    print(f"  created {d.initiated_at:%Y-%m-%d %H:%M:%S}   updated {d.updated_at:%Y-%m-%d %H:%M:%S}"
          + (f"   exported {d.exported_at:%Y-%m-%d %H:%M:%S}" if d.exported_at else ""))
    if d.error_message:
        print(f"  message {d.error_message}")
    print("  events (oldest first):")
    for e in events:
        step = (f"{e['from_status'] or '-'} -> {e['to_status']}" if e["kind"] == "status_changed"
                else e["kind"] + (" -> " + e["to_status"] if e["to_status"] else ""))
        attempt = f"#{e['attempt']}" if e["attempt"] else ""
        print(f"    {e['at']:%H:%M:%S.%f}"[:-3] + f"  {step:<30} {attempt:<4} {e['actor']}"
              + (f"  {e['reason']}" if e["reason"] else ""))
    return 0


def cmd_exports_retry(args) -> int:
    from shared.db.session import session_scope
    from shared.domain import exports

    from shared.jobs import unsent_jobs

    with session_scope() as session:
        org_id = _org_of(session, args.export_id)
        exports.retry_export(session, org_id, args.export_id, actor="cli")
    unsent = unsent_jobs(session)
    if unsent:
        _, error = unsent[0]
        print(f"error: {args.export_id} is back in processing, but the broker at "
              f"{_redacted_broker()} could not be reached ({type(error).__name__}: {error}), so "
              "nothing is queued yet; the sweeper sends it once a worker's broker answers. Is "
              "the stack running, and does AIC_REDIS_URL point at its Redis?", file=sys.stderr)
        return 1
    print(f"{args.export_id} queued again")
    return 0


def _redacted_broker() -> str:
    from urllib.parse import urlsplit

    url = urlsplit(get_settings().redis_url)
    return f"{url.scheme}://{url.hostname}:{url.port or 6379}{url.path}"


def cmd_sweep(args) -> int:
    from shared.domain.sweeper import requeue_stuck_exports

    print(f"re-queued {requeue_stuck_exports()} stuck exports")
    return 0


def cmd_status(args) -> int:
    import time

    from shared.db.session import session_scope
    from shared.domain.overview import export_status
    from shared.queue import broker_overview

    while True:
        with session_scope() as session:
            exports = export_status(session).as_dict()
        broker = broker_overview()
        if args.json:
            print(json.dumps({"exports": exports, "broker": broker}, indent=2, default=str))
        else:
            if args.watch:
                print("\033[2J\033[H", end="")  # clear the terminal between refreshes
            print(_render_status(exports, broker))
        if not args.watch:
            # Non-zero when an operator should look: scripts and monitors can use it.
            healthy = broker["reachable"] and broker["workers"] and not exports["stuck"]
            return 0 if healthy else 1
        sys.stdout.flush()
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


def _render_status(exports: dict, broker: dict) -> str:
    lines = [f"at {exports['at']:%Y-%m-%d %H:%M:%S} UTC (database clock)", "",
             "exports   " + "  ".join(f"{status} {count}"
                                      for status, count in exports["by_status"].items())]
    oldest = exports["oldest_processing"]
    if oldest:
        lines.append(f"          oldest processing: {oldest['export_id']} "
                     f"({oldest['organization_id']}), {_age(oldest['age_seconds'])} old"
                     + (f": {oldest['error_message']}" if oldest["error_message"] else ""))
    lines.append(f"          in doubt (looked up before any new POST): {exports['in_doubt']}")
    stuck = exports["stuck"]
    lines.append(f"          stuck (no message will run them): {stuck}"
                 + (f" - `aic sweep` re-queues them; e.g. {', '.join(exports['stuck_sample'])}"
                    if stuck else ""))
    lines += ["", "failures in the last hour"]
    lines += [f"  {group['count']:>5}  {group['error_code']}: {group['example'] or ''}"
              for group in exports["failures_last_hour"]] or ["  none"]
    lines += ["", "connections in trouble (last hour)"]
    lines += [f"  {c['connection_id']} {c['target_system']} ({c['organization_id']}): "
              f"{c['failed_last_hour']} failed, {c['waiting']} waiting - {c['last_error'] or ''}"
              for c in exports["connections_in_trouble"]] or ["  none"]
    lines += [""]
    if not broker["reachable"]:
        lines.append(f"broker    UNREACHABLE at {_redacted_broker()}: {broker['error']}")
    else:
        lines.append("queues    " + "  ".join(f"{name} {depth}"
                                             for name, depth in broker["queues"].items())
                     + f"  (held by workers: {broker['unacked']}, due later: "
                       f"{broker['delayed']})")
        lines.append("workers   " + (", ".join(broker["workers"]) or
                                     "NONE answered: nothing is being processed"))
    return "\n".join(lines)


def _age(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def cmd_source_set(args) -> int:
    from shared.db.session import session_scope
    from shared.domain import sources

    require_safe_settings("aic source set", variables=("AIC_SECRET_KEY",))  # as connection set
    system = registry.source(args.system)
    given = [f"--{field.name.replace('_', '-')}" for field in system.credentials
             if getattr(args, field.name, None) is not None]
    credentials = None
    if args.keep_credentials:
        if given:
            # Credentials are replaced as a whole (one of them may be the URL the secret goes
            # to): a credential flag next to --keep-credentials would be silently dropped.
            print(f"{', '.join(given)} cannot be combined with --keep-credentials: give every "
                  f"credential ({system.describe_credentials()}) to change one", file=sys.stderr)
            return 2
    else:
        credentials = {}
        for field in system.credentials:
            value = getattr(args, field.name, None)
            if value is None and field.secret:
                value = getpass.getpass(f"{system.display_name} {field.name.replace('_', ' ')}: ")
            if value is not None:
                credentials[field.name] = value
    updates = {}
    for option in args.options or []:
        key, separator, raw = option.partition("=")
        if not separator or not key:
            print(f"--option {option!r} must look like KEY=VALUE", file=sys.stderr)
            return 2
        updates[key] = _option_value(raw)
    if args.external_org is not None:
        if not system.organization_option:
            print(f"--external-org does not apply to {args.system}", file=sys.stderr)
            return 2
        updates[system.organization_option] = args.external_org
    with session_scope() as session:
        existing = sources.source_connection_for(session, args.org, args.system)
        # Keep options this command is not told about; change only the ones given.
        options = dict(existing.options or {}) if existing is not None else {}
        options.update(updates)
        options = {key: value for key, value in options.items() if value is not None}
        connection = sources.upsert_source_connection(
            session, args.org, args.system, base_url=args.base_url, credentials=credentials,
            webhook_secret=args.webhook_secret, target_system=args.target, options=options)
        path = f"/webhooks/{args.system}/{connection.webhook_token}"
        target = connection.target_system
    print(f"source {connection.id}: {args.system} -> {target}\n"
          f"webhook URL for {system.display_name}: <your public base URL>{path}")
    return 0


def _option_value(raw: str):
    """``--option`` values: JSON when they parse as JSON (numbers, objects), else the text;
    empty removes the option."""
    if raw == "":
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def cmd_source_retry(args) -> int:
    from shared.db.models import SourceUnit
    from shared.db.session import session_scope
    from shared.domain import sources
    from shared.jobs import unsent_jobs

    with session_scope() as session:
        unit = session.get(SourceUnit, args.source_export_id)
        if unit is None:
            print(f"error: source export {args.source_export_id} does not exist "
                  "(`GET /api/v1/source-exports` lists them)", file=sys.stderr)
            return 2
        sources.retry_source_unit(session, unit.organization_id, args.source_export_id,
                                  actor="cli")
    if unsent_jobs(session):
        print(f"error: {args.source_export_id} is to be retried, but the broker at "
              f"{_redacted_broker()} could not be reached, so nothing is queued yet; the next "
              "poll or sweep sends it. Is the stack running?", file=sys.stderr)
        return 1
    print(f"{args.source_export_id}: what failed in it is retried (refused items converted "
          "again with the connection's current options, failed exports queued again)")
    return 0


def cmd_source_resend(args) -> int:
    """Deliberate and logged: an explicit UTC time, a count and a confirmation first."""
    from datetime import UTC, datetime

    from shared.db.session import session_scope
    from shared.domain import sources
    from shared.integrations.errors import IntegrationError
    from shared.integrations.sources import source_client_for

    try:
        since = datetime.fromisoformat(args.not_exported_since.replace("Z", "+00:00"))
    except ValueError:
        print(f"--not-exported-since {args.not_exported_since!r} is not a date-time like "
              "2026-11-01T00:00:00Z", file=sys.stderr)
        return 2
    if since.tzinfo is None:
        print("--not-exported-since needs a time zone (e.g. 2026-11-01T00:00:00Z)",
              file=sys.stderr)
        return 2
    if since > datetime.now(UTC):
        print("--not-exported-since is in the future: nothing can have been exported since",
              file=sys.stderr)
        return 2
    with session_scope() as session:
        connection = sources.source_connection_for(session, args.org, args.system)
        if connection is None:
            print(f"{args.org} has no {args.system} connection", file=sys.stderr)
            return 1
        session.expunge(connection)
    adapter = source_client_for(connection)
    if not hasattr(adapter, "list_not_exported_since"):
        print(f"{registry.display_name(args.system)} cannot list what was exported since a date",
              file=sys.stderr)
        return 2
    try:
        page = adapter.list_not_exported_since(since)
    except IntegrationError as error:
        print(f"listing failed: {error.message}", file=sys.stderr)
        return 1
    print(f"{registry.display_name(args.system)} lists {len(page.announcements)} items not "
          f"exported to this connection since {since.isoformat()}: unknown ones are booked, "
          "booked ones are only reported again, failed ones are left as they are")
    if not args.yes and input("go ahead? [y/N] ").strip().lower() != "y":
        print("nothing done")
        return 1
    with session_scope() as session:
        connection = sources.source_connection_for(session, args.org, args.system)
        outcome = sources.resend_since(session, connection, page.announcements, actor="cli",
                                       since=since)
    for key, ids in outcome.items():
        print(f"{key.replace('_', ' ')}: {len(ids)}" + (f" ({', '.join(ids[:20])}"
                                                        f"{' ...' if len(ids) > 20 else ''})"
                                                        if ids else ""))
    return 0


def cmd_source_poll(args) -> int:
    # Polling speaks to the sources' APIs and takes the poll's Redis lock: worker work, so the
    # CLI asks a worker for it through the queue, as beat does, instead of running worker code.
    from shared.jobs import Job, send_now
    from shared.queue import TASK_POLL_SOURCES

    try:
        send_now(Job(TASK_POLL_SOURCES, [], queue=get_settings().maintenance_queue))
    except Exception as error:  # the broker is unreachable: nothing was queued
        print(f"error: the broker at {_redacted_broker()} could not be reached "
              f"({type(error).__name__}: {error}), so no poll is queued; beat polls every "
              "AIC_POLL_INTERVAL_SECONDS once it answers. Is the stack running, and does "
              "AIC_REDIS_URL point at its Redis?", file=sys.stderr)
        return 1
    print("poll of every source queued; a worker runs it (its log says what it recovered)")
    return 0


def _scope_option(parser: argparse.ArgumentParser) -> None:
    from shared.domain.organizations import API_KEY_SCOPES

    # argparse refuses an unknown scope with exit status 2 and the list of valid ones.
    parser.add_argument(
        "--scope", dest="scopes", action="append", choices=list(API_KEY_SCOPES),
        help="what the key may do; repeat for several: "
             + "; ".join(f"{name}: {what}" for name, what in API_KEY_SCOPES.items())
             + " (default: exports only)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aic", description="Accounting Integration Client")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("keygen", help="print a new AIC_SECRET_KEY").set_defaults(func=cmd_keygen)
    sub.add_parser("sweep", help="re-queue stuck exports once").set_defaults(func=cmd_sweep)
    st = sub.add_parser("status", help="the whole system at a glance: exports, stuck and in "
                                       "doubt, failures of the last hour, queues, workers")
    st.add_argument("--json", action="store_true", help="the same as GET /api/v1/admin/status")
    st.add_argument("--watch", type=float, metavar="SECONDS", nargs="?", const=5.0,
                    help="refresh every SECONDS (default 5) until Ctrl-C")
    st.set_defaults(func=cmd_status)

    org = sub.add_parser("org", help="organizations").add_subparsers(dest="org_cmd", required=True)
    create = org.add_parser("create", help="create an organization and its first API key")
    create.add_argument("name")
    _scope_option(create)
    create.set_defaults(func=cmd_org_create)
    org.add_parser("list").set_defaults(func=cmd_org_list)

    key = sub.add_parser("apikey", help="API keys").add_subparsers(dest="key_cmd", required=True)
    kc = key.add_parser("create")
    kc.add_argument("org")
    kc.add_argument("--name", default="default")
    _scope_option(kc)
    kc.set_defaults(func=cmd_apikey_create)
    kl = key.add_parser("list", help="an organization's keys with their scopes")
    kl.add_argument("org")
    kl.set_defaults(func=cmd_apikey_list)
    kr = key.add_parser("revoke")
    kr.add_argument("org")
    kr.add_argument("key_id")
    kr.set_defaults(func=cmd_apikey_revoke)

    conn = sub.add_parser("connection", help="target connections").add_subparsers(
        dest="conn_cmd", required=True)
    cs = conn.add_parser("set", help="create or update an organization's target connection")
    cs.add_argument("org")
    cs.add_argument("target", choices=list(registry.targets()))
    cs.add_argument("--base-url", required=True, help="e.g. " + ", ".join(
        f"{name}: {system.base_url_example}" for name, system in registry.targets().items()))
    _credential_options(cs, registry.targets().values())
    cs.add_argument("--keep-credentials", action="store_true",
                    help="keep the stored credentials (refused when --base-url changes)")
    cs.add_argument("--credentials-file", metavar="FILE",
                    help="a JSON object of the credential fields ('-': read it from stdin); "
                         "keeps tokens off the command line")
    cs.add_argument("--mapping-file", help="JSON account mapping (see shared/domain/mapping.py)")
    cs.add_argument("--options-file",
                    help="JSON object of connection options, merged into the stored ones (the "
                         "target's options, see the admin API's PUT .../connections/{target}, "
                         "and rate_limit)")
    cs.add_argument("--voucher-type", help="voucher type name, e.g. 'Reiseregning'")
    cs.add_argument("--draft", action="store_true",
                    help="post vouchers as drafts (sendToLedger=false) for an accountant to approve")
    cs.set_defaults(func=cmd_connection_set)
    cw = conn.add_parser("show", help="a connection (never its credentials) and its exports")
    cw.add_argument("org")
    cw.add_argument("target", choices=list(registry.targets()))
    cw.set_defaults(func=cmd_connection_show)
    ct = conn.add_parser("test", help="check that the stored credentials work")
    ct.add_argument("org")
    ct.add_argument("target", choices=list(registry.targets()))
    ct.set_defaults(func=cmd_connection_test)

    source_names = list(registry.sources())
    src = sub.add_parser("source", help="expense sources (" + ", ".join(
        s.display_name for s in registry.sources().values()) + ")").add_subparsers(
        dest="src_cmd", required=True)
    ss = src.add_parser("set", help="create or update an organization's source connection")
    ss.add_argument("org")
    ss.add_argument("--system", choices=source_names, default=source_names[0],
                    help=f"the source system (default {source_names[0]})")
    ss.add_argument("--base-url", required=True, help="the source's API base URL, e.g. " + ", ".join(
        f"{name}: {system.base_url_example}" for name, system in registry.sources().items()))
    _credential_options(ss, registry.sources().values())
    ss.add_argument("--keep-credentials", action="store_true",
                    help="keep the stored credentials (refused when --base-url changes)")
    # --<system>-org (e.g. the first source's) is kept as an alias of --external-org.
    ss.add_argument("--external-org", *[f"--{name}-org" for name in source_names],
                    dest="external_org",
                    help="your organization id in the source system (the option its registry "
                         "entry names for it)")
    ss.add_argument("--option", dest="options", action="append", metavar="KEY=VALUE",
                    help="set one option, repeatable; VALUE is read as JSON when it is JSON, "
                         "else as text; KEY= removes it. Options: " + "; ".join(
                             f"{name}: {', '.join(system.options_model.model_fields)}"
                             for name, system in registry.sources().items()))
    ss.add_argument("--webhook-secret", help="require HMAC-signed webhooks ('' to remove)")
    ss.add_argument("--target", choices=list(registry.targets()),
                    help="where the expenses are booked (default: the only target system)")
    ss.set_defaults(func=cmd_source_set)
    src.add_parser("poll", help="ask a worker to poll every source once now").set_defaults(func=cmd_source_poll)
    sr = src.add_parser("retry", help="retry what failed in a completed source export (after "
                                      "fixing the mapping): refused items and failed exports")
    sr.add_argument("source_export_id")
    sr.set_defaults(func=cmd_source_retry)
    rs = src.add_parser("resend", help="re-send what the source lists as not exported since a "
                                       "date (sources that offer it): unknown items are "
                                       "booked, booked ones only reported again, never posted "
                                       "twice")
    rs.add_argument("org")
    rs.add_argument("--system", choices=source_names, required=True)
    rs.add_argument("--not-exported-since", required=True, metavar="UTC_DATETIME",
                    help="e.g. 2026-11-01T00:00:00Z (required: no default)")
    rs.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rs.set_defaults(func=cmd_source_resend)

    ex = sub.add_parser("exports", help="accounting exports").add_subparsers(
        dest="ex_cmd", required=True)
    el = ex.add_parser("list", help="exports as a table, newest first")
    el.add_argument("org", nargs="?", help="the organization (or --all)")
    el.add_argument("--all", action="store_true", help="every organization")
    el.add_argument("--status", choices=["processing", "success", "failed", "cancelled"])
    el.add_argument("--target", choices=list(registry.targets()))
    el.add_argument("--since", help="created since: an age (30m, 2h, 7d) or an ISO date/time")
    el.add_argument("--limit", type=int, default=50)
    el.add_argument("--json", action="store_true", help="JSON instead of a table")
    el.set_defaults(func=cmd_exports_list)
    ec = ex.add_parser("cancel", help="cancel a processing export that has not started posting")
    ec.add_argument("export_id")
    ec.set_defaults(func=cmd_exports_cancel)
    ew = ex.add_parser("wait", help="wait until a batch's (or the given) exports ended, with a "
                                    "progress bar; exit 0 all succeeded, 1 some did not, "
                                    "3 timed out")
    ew.add_argument("ids", nargs="+", metavar="ID", help="a batch id, or export ids")
    ew.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    ew.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    ew.add_argument("--progress", action="store_true",
                    help="draw the bar even when stderr is not a terminal")
    ew.set_defaults(func=cmd_exports_wait)
    es = ex.add_parser("show", help="an export and its event log")
    es.add_argument("export_id")
    es.add_argument("--json", action="store_true", help="JSON (the API's fields and events)")
    es.set_defaults(func=cmd_exports_show)
    er = ex.add_parser("retry", help="queue a failed export again")
    er.add_argument("export_id")
    er.set_defaults(func=cmd_exports_retry)
    return parser


def _redacted_database() -> str:
    from sqlalchemy.engine import make_url

    return make_url(get_settings().database_url).render_as_string(hide_password=True)


def _shown(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    from sqlalchemy.exc import DBAPIError

    from shared.domain.errors import DomainError
    from shared.logs import configure_logging

    # First: building the parser loads the systems, which import the Celery app, and that takes
    # its broker URL when it is created. The operator's `make run` (its database and its own
    # Redis) must be known by then, or a retry goes to a Redis no worker reads.
    adopted = adopt_running_devstack()
    configure_logging()
    args = build_parser().parse_args(argv)
    if adopted:
        print(f"aic: using the running local stack's {', '.join(sorted(adopted))} "
              f"({_shown(shared_config.DEVSTACK_ENV_FILE)})", file=sys.stderr)
    try:
        return args.func(args)
    except DomainError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except DBAPIError as error:
        # An unreachable database, or one older than this code (a column it does not have yet).
        reason = str(error.orig).splitlines()[0] if error.orig else type(error).__name__
        print(f"error: the database at {_redacted_database()} could not answer ({reason}). "
              "Is it running? If this code is newer than the database, run `aic migrate`.",
              file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `aic ... | head`: the reader left; not an error worth a traceback. stdout is
        # pointed at /dev/null so the interpreter's final flush does not fail again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
