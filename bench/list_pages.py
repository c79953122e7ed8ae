"""The export list at a million rows: p50/p99 of its pages and filters against 10,000 rows.

    AIC_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python -m bench.list_pages [--rows 10000,1000000] [--requests 300]

Target 7 of issue 12 ("a million rows"): with 1,000,000 exports in PostgreSQL across 100
organizations, the p99 of ``GET /api/v1/accounting-exports`` stays within 1.5x of its p99 at
10,000 rows for page 1, deep pages (the middle and the last), a status filter and a date-range
filter; the sweeper's scan stays under 100 ms.

For each size in ``--rows`` (the first is the baseline) it creates a database of its own on the
server of the given URL (``aic_bench_rows_<size>``; dropped at the end unless ``--keep``),
migrates it with Alembic, makes 100 organizations with a real API key and a Tripletex connection
each through the domain services, then bulk-loads the expenses and exports with one
``INSERT ... SELECT generate_series`` each: organizations round-robin, ``created_at`` spread
evenly over the last 365 days in insertion order (as a live table grows), statuses success 95%,
failed 3%, cancelled 2%, the newest 0.5% processing (held by a worker or waiting for a retry) and
one in 20,000 processing and stuck (its message lost). ``VACUUM ANALYZE`` follows, as autovacuum
would have done on a table that grew this big.

One API process per size (``uvicorn producers.api.app:app``, its own database) serves the
requests; one client sends them one at a time, alternating between the sizes request by request
so that both see the same machine load, each time with the next organization's key. The timed
window is the client's, around one HTTP request on a kept-alive connection. Every response is
checked (200, the contract's shape, ``total`` equal to the organization's rows matching the
filter, counted in SQL beforehand). The sweeper's scan (``shared.domain.sweeper.
stuck_export_candidates``) runs in this process against each database.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from bench.export_throughput import (
    API_APP,
    PROJECT_ROOT,
    STARTUP_TIMEOUT,
    BenchFailure,
    _commit,
    _load,
    command_line,
    pct,
    redact,
    signals_raise_interrupt,
)
from devstack.processes import ManagedProcess, free_port, python_argv, wait_for_http

ORGS = 100
TARGET_RATIO = 1.5
SWEEP_TARGET_MS = 100.0
SPAN = timedelta(days=365)
DATABASE_PREFIX = "aic_bench_rows_"
WARMUP = 20  # requests per query and size before the timed ones (imports, plan cache, buffers)


EXPORTS_URL = "/api/v1/accounting-exports"
UNITS_URL = "/api/v1/source-exports"


@dataclass(frozen=True)
class Query:
    name: str
    params: dict
    # SQL counting one organization's matching rows (bound :org, :now), to check ``total``.
    count_sql: str
    path: str = EXPORTS_URL
    # A deep page is a depth into an organization's list, not a page number: at 10,000 rows an
    # organization has 100 exports (4 pages of 25), so "page 400" there is past the end, an
    # empty answer that is no anchor for a full page at a million rows. With ``depth`` the page
    # is that fraction of the way through the organization's pages at each size (0.5 the
    # middle, 1.0 the last).
    depth: float | None = None
    # False: printed for reading, left out of the verdict (says why in its name).
    target: bool = True

    def params_at(self, rows: int) -> dict:
        if self.depth is None:
            return self.params
        pages = -(-(rows // ORGS) // self.params["limit"])  # ceil: an organization's pages
        return {**self.params, "page": max(1, round(self.depth * pages))}


def queries(now: datetime) -> list[Query]:
    month_from = (now - timedelta(days=60)).isoformat()
    month_to = (now - timedelta(days=30)).isoformat()
    base = "SELECT count(*) FROM accounting_exports WHERE organization_id = :org"
    units = "SELECT count(*) FROM source_units WHERE organization_id = :org"
    return [
        Query("page 1", {"page": 1, "limit": 20}, base),
        # The middle page is the longest walk (a page in the older half is read from the
        # oldest end); at a million rows it is page 200, the last page 400.
        Query("middle page (limit 25)", {"limit": 25}, base, depth=0.5),
        Query("last page (limit 25)", {"limit": 25}, base, depth=1.0),
        Query("page 400, past the end @10k", {"page": 400, "limit": 25}, base, target=False),
        Query("status=failed", {"status": "failed", "page": 1, "limit": 20},
              base + " AND status = 'failed'"),
        Query("status=success", {"status": "success", "page": 1, "limit": 20},
              base + " AND status = 'success'"),
        Query("a month (initiated_from/to)",
              {"initiated_from": month_from, "initiated_to": month_to, "page": 1, "limit": 20},
              base + f" AND created_at >= '{month_from}' AND created_at < '{month_to}'"),
        # The source units' list (as many units as exports: a feed source makes one per expense).
        Query("units page 1", {"page": 1, "limit": 20}, units, UNITS_URL),
        Query("units last page (limit 25)", {"limit": 25}, units, UNITS_URL, depth=1.0),
        # Every organization has a unit with this reference (references count per organization).
        Query("unit by reference", {"source_export_ref": "pkg-42", "page": 1, "limit": 20},
              units + " AND external_export_id = 'pkg-42'", UNITS_URL),
    ]


@dataclass
class Size:
    rows: int
    url: str
    engine: Engine
    keys: list[tuple[str, str]] = field(default_factory=list)  # (organization id, API key)
    api: ManagedProcess | None = None
    api_url: str = ""
    load_seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    in_process: dict[str, list[float]] = field(default_factory=dict)
    sweep_ms: list[float] = field(default_factory=list)
    stuck_found: int = 0
    status_ms: list[float] = field(default_factory=list)


# --- databases ----------------------------------------------------------------------------------

def server_url(given: str) -> str:
    url = make_url(given)
    if url.get_backend_name() != "postgresql":
        raise SystemExit("bench.list_pages measures PostgreSQL: give a postgresql+psycopg:// URL "
                         "with --database-url or AIC_BENCH_DATABASE_URL")
    return url.render_as_string(hide_password=False)


def database_url(server: str, rows: int) -> str:
    return make_url(server).set(database=f"{DATABASE_PREFIX}{rows}").render_as_string(
        hide_password=False)


def recreate_database(server: str, name: str, *, drop_only: bool = False) -> None:
    if not name.startswith(DATABASE_PREFIX):  # never anybody else's database (nor `test`)
        raise ValueError(name)
    admin = create_engine(make_url(server).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if not drop_only:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def load(size: Size, now: datetime) -> None:
    """Organizations, keys and connections through the domain; the rows in bulk."""
    from shared.db.migrate import upgrade
    from shared.domain import organizations, sources

    upgrade(size.url)
    with Session(size.engine) as session:
        connections, source_connections = [], []
        for i in range(ORGS):
            org = organizations.create_organization(session, f"Bench {i:03d} AS",
                                                    org_id=f"org_bench_{i:03d}")
            _, key = organizations.create_api_key(session, org.id, scopes=["exports"])
            connection = organizations.upsert_connection(
                session, org.id, "tripletex", base_url="http://127.0.0.1:9/v2",
                credentials={"consumer_token": "c", "employee_token": "e"})
            source = sources.upsert_source_connection(
                session, org.id, "findity", base_url="http://127.0.0.1:9/api",
                credentials={"client_id": "c", "client_secret": "s",
                             "token_url": "http://127.0.0.1:9/token"},
                options={"organization_id": f"f-bench-{i:03d}"}, target_system="tripletex")
            size.keys.append((org.id, key))
            connections.append(connection.id)
            source_connections.append(source.id)
        session.commit()
    params = {"n": size.rows, "orgs": [o for o, _ in size.keys], "conns": connections,
              "sources": source_connections,
              "now": now, "span": SPAN.total_seconds(), "orgcount": ORGS}
    started = time.monotonic()
    with size.engine.begin() as connection:
        connection.execute(text("""
            INSERT INTO expenses (id, organization_id, source, source_ref, status, description,
                                  expense_date, currency, amount, rows, created_at)
            SELECT 'exp_b' || lpad(to_hex(g), 8, '0'), (CAST(:orgs AS text[]))[g % :orgcount + 1],
                   'bench', 'r-' || g, 'approved', 'Bench expense',
                   CAST(CAST(:now AS timestamptz) - make_interval(secs => :span * (:n - g) / :n)
                        AS date),
                   'NOK', 100 + g % 900, '[]',
                   CAST(:now AS timestamptz) - make_interval(secs => :span * (:n - g) / :n)
            FROM generate_series(0, :n - 1) AS g"""), params)
        # Newest last, like a live table; the newest 0.5% are in flight; 1 in 20,000 is stuck.
        connection.execute(text("""
            INSERT INTO accounting_exports (
                id, organization_id, expense_id, connection_id, target_system, status,
                active_key, attempts, next_attempt_at, lease_owner, lease_expires_at,
                external_reference, error_code, error_message, created_at, updated_at,
                exported_at)
            SELECT 'exp_xp_b' || lpad(to_hex(g), 8, '0'), (CAST(:orgs AS text[]))[g % :orgcount + 1],
                   'exp_b' || lpad(to_hex(g), 8, '0'), (CAST(:conns AS text[]))[g % :orgcount + 1],
                   'tripletex', s.status,
                   CASE WHEN s.status IN ('success', 'processing')
                        THEN 'exp_b' || lpad(to_hex(g), 8, '0') || ':' || 'tripletex' END,
                   CASE WHEN s.status = 'processing' THEN g % 3 ELSE 1 END,
                   CASE WHEN s.stuck THEN s.created
                        WHEN s.status = 'processing' AND g % 2 = 0
                            THEN CAST(:now AS timestamptz) + interval '5 minutes'
                        ELSE s.created END,
                   CASE WHEN s.status = 'processing' AND NOT s.stuck AND g % 2 = 1
                        THEN 'bench@worker' END,
                   CASE WHEN s.status = 'processing' AND NOT s.stuck AND g % 2 = 1
                        THEN CAST(:now AS timestamptz) + interval '1 hour' END,
                   CASE WHEN s.status = 'success' THEN 'TTX-' || g END,
                   CASE WHEN s.status = 'failed' THEN 'validation' END,
                   CASE WHEN s.status = 'failed' THEN 'the target refused the voucher' END,
                   s.created, s.created + interval '3 seconds',
                   CASE WHEN s.status = 'success' THEN s.created + interval '3 seconds' END
            FROM (
                SELECT g,
                       CAST(:now AS timestamptz) - make_interval(secs => :span * (:n - g) / :n)
                           AS created,
                       g % 20000 = 7777 AS stuck,
                       CASE WHEN g >= :n - :n / 200 OR g % 20000 = 7777 THEN 'processing'
                            WHEN (CAST(g AS bigint) * 7919) % 100 < 3 THEN 'failed'
                            WHEN (CAST(g AS bigint) * 7919) % 100 < 5 THEN 'cancelled'
                            ELSE 'success' END AS status
                FROM generate_series(0, :n - 1) AS g
            ) AS s"""), params)
        # As many source units, spread the same way; references pkg-0, pkg-1, ... per
        # organization (unique per connection, as the schema wants).
        connection.execute(text("""
            INSERT INTO source_units (id, organization_id, source_connection_id,
                                      external_export_id, status, received_via, attempts,
                                      created_at, updated_at)
            SELECT 'su_b' || lpad(to_hex(g), 8, '0'), (CAST(:orgs AS text[]))[g % :orgcount + 1],
                   (CAST(:sources AS text[]))[g % :orgcount + 1], 'pkg-' || (g / :orgcount),
                   CASE WHEN g >= :n - :n / 200 THEN 'processing' ELSE 'completed' END,
                   'webhook', 1,
                   CAST(:now AS timestamptz) - make_interval(secs => :span * (:n - g) / :n),
                   CAST(:now AS timestamptz) - make_interval(secs => :span * (:n - g) / :n)
                       + interval '5 seconds'
            FROM generate_series(0, :n - 1) AS g"""), params)
    with size.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
    size.load_seconds = time.monotonic() - started


# --- measuring --------------------------------------------------------------------------------

def start_api(size: Size, log_dir: Path) -> None:
    from cryptography.fernet import Fernet

    port = free_port()
    env = {
        "AIC_DATABASE_URL": size.url,
        # No broker is needed to list; an unreachable one keeps a stray enqueue from going
        # anywhere. Fresh secrets: the API's start-up check refuses the development defaults.
        "AIC_REDIS_URL": "redis://127.0.0.1:9/0",
        "AIC_ADMIN_TOKEN": secrets.token_urlsafe(32),
        "AIC_SECRET_KEY": Fernet.generate_key().decode(),
        "AIC_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    size.api = ManagedProcess(f"api-{size.rows}", python_argv(
        "-m", "uvicorn", API_APP, "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--no-access-log"), env=env, log_dir=log_dir,
        cwd=PROJECT_ROOT)
    size.api_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{size.api_url}/openapi.json", timeout=STARTUP_TIMEOUT, process=size.api)
    except (RuntimeError, TimeoutError) as exc:
        raise BenchFailure(f"the API on {size.rows} rows did not start: {exc}\n"
                           f"{size.api.tail()}") from exc


def expected_totals(size: Size, query: Query, now: datetime) -> dict[str, int]:
    with size.engine.connect() as connection:
        return {org: connection.execute(text(query.count_sql), {"org": org}).scalar_one()
                for org, _ in size.keys}


def measure(sizes: list[Size], query: Query, requests: int, now: datetime) -> None:
    expected = {s.rows: expected_totals(s, query, now) for s in sizes}
    clients = {s.rows: httpx.Client(base_url=s.api_url, timeout=60) for s in sizes}
    try:
        for s in sizes:
            s.latencies[query.name] = []
        for i in range(WARMUP + requests):
            for s in sizes:  # alternate request by request: the same machine load for both
                org, key = s.keys[i % ORGS]
                started = time.perf_counter()
                response = clients[s.rows].get(query.path, params=query.params_at(s.rows),
                                               headers={"Authorization": f"Bearer {key}"})
                elapsed = time.perf_counter() - started
                check(response, query, expected[s.rows][org], s.rows)
                if i >= WARMUP:
                    s.latencies[query.name].append(elapsed * 1000)
    finally:
        for client in clients.values():
            client.close()


def check(response: httpx.Response, query: Query, total: int, rows: int) -> None:
    if response.status_code != 200:
        raise BenchFailure(f"{query.name} on {rows} rows answered {response.status_code}: "
                           f"{response.text[:500]}")
    body = response.json()
    page, limit = query.params_at(rows)["page"], query.params["limit"]
    if body["pagination"] != {"page": page, "limit": limit, "total": total}:
        raise BenchFailure(f"{query.name} on {rows} rows: pagination {body['pagination']}, "
                           f"expected total {total}")
    shown = max(0, min(limit, total - (page - 1) * limit))
    if len(body["data"]) != shown:
        raise BenchFailure(f"{query.name} on {rows} rows: {len(body['data'])} rows, "
                           f"expected {shown}")


def measure_in_process(sizes: list[Size], query: Query, requests: int) -> None:
    """The same page through ``list_exports`` (``list_source_units``) in this process: the
    database and ORM share of a request without HTTP, the API key lookup or the machine's noise
    in the API process."""
    from shared.domain.exports import ExportFilters, list_exports
    from shared.domain.sources import list_source_units

    params = {k: v for k, v in query.params.items() if k not in ("page", "limit")}
    limit = query.params["limit"]
    if query.path == UNITS_URL:
        def list_page(session: Session, org: str, page: int) -> None:
            list_source_units(session, org, page=page, limit=limit,
                              external_export_id=params.get("source_export_ref"))
    else:
        filters = ExportFilters(**{k: datetime.fromisoformat(v) if k.startswith("initiated")
                                   else v for k, v in params.items()})

        def list_page(session: Session, org: str, page: int) -> None:
            list_exports(session, org, filters, page=page, limit=limit)
    sessions = {s.rows: Session(s.engine) for s in sizes}
    try:
        for s in sizes:
            s.in_process[query.name] = []
        for i in range(WARMUP + requests):
            for s in sizes:
                session = sessions[s.rows]
                started = time.perf_counter()
                list_page(session, s.keys[i % ORGS][0], query.params_at(s.rows)["page"])
                elapsed = time.perf_counter() - started
                session.rollback()  # a transaction per call, as a request has
                session.expunge_all()
                if i >= WARMUP:
                    s.in_process[query.name].append(elapsed * 1000)
    finally:
        for session in sessions.values():
            session.close()


def measure_sweep(size: Size, repeats: int) -> None:
    from shared.config import get_settings
    from shared.db.clock import database_now
    from shared.domain.sweeper import stuck_export_candidates

    stuck_after = get_settings().stuck_after_seconds
    with Session(size.engine) as session:
        for i in range(3 + repeats):
            now = database_now(session)
            started = time.perf_counter()
            found = stuck_export_candidates(session, now, stuck_after)
            elapsed = (time.perf_counter() - started) * 1000
            session.rollback()
            if i >= 3:
                size.sweep_ms.append(elapsed)
        size.stuck_found = len(found)


def measure_status(size: Size, repeats: int) -> None:
    """The operators' overview (``aic status``, ``GET /api/v1/admin/status``) over every
    organization's exports: asked for by a person, not on every request; timed to show how it
    grows with the table."""
    from shared.domain.overview import export_status

    with Session(size.engine) as session:
        for i in range(1 + repeats):
            started = time.perf_counter()
            export_status(session)
            elapsed = (time.perf_counter() - started) * 1000
            session.rollback()
            if i >= 1:
                size.status_ms.append(elapsed)


# --- reporting --------------------------------------------------------------------------------

def header(args: argparse.Namespace, server: str, sizes: list[int]) -> str:
    return "\n".join([
        "=== bench.list_pages ===",
        f"command  : {command_line('bench.list_pages')}   (cwd {Path.cwd()})",
        f"date     : {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"code     : {_commit()}",
        f"machine  : {platform.system()} {platform.machine()}, nproc "
        f"{len(os.sched_getaffinity(0))}, Python {platform.python_version()}, load average "
        f"{_load(os.getloadavg())} (1/5/15 min)",
        f"database : {redact(server)} -> "
        + ", ".join(f"{DATABASE_PREFIX}{n}" for n in sizes),
        f"load     : {', '.join(f'{n:,}' for n in sizes)} exports (and as many source units) "
        f"over {ORGS} organizations "
        f"(created_at over {SPAN.days} days); {args.requests} timed requests per query and size "
        f"after {WARMUP} warm-up, one at a time, sizes alternating; each request with the next "
        f"organization's API key",
        f"target   : p99 at {sizes[-1]:,} <= {TARGET_RATIO}x p99 at {sizes[0]:,} per query; "
        f"sweeper scan < {SWEEP_TARGET_MS:.0f} ms (issue 12, target 7)",
    ])


def table(sizes: list[Size], queries_run: list[Query], figures: str, verdicts: bool
          ) -> tuple[list[str], bool]:
    small, big = sizes[0], sizes[-1]
    head = (f"{'query':<28}" + "".join(f"{f'p50 @{s.rows:,}':>16}{f'p99 @{s.rows:,}':>16}"
                                         for s in sizes) + f"{'p99 ratio':>11}"
            + ("   verdict" if verdicts else ""))
    lines = [head, "-" * len(head)]
    ok = True
    for query in queries_run:
        name = query.name
        row = f"{name:<28}"
        for s in sizes:
            values = getattr(s, figures)[name]
            row += f"{pct(values, 50):>13.1f} ms{pct(values, 99):>13.1f} ms"
        ratio = pct(getattr(big, figures)[name], 99) / pct(getattr(small, figures)[name], 99)
        passed = ratio <= TARGET_RATIO
        if query.target:
            ok = ok and passed
            verdict = "PASS" if passed else "FAIL"
        else:
            verdict = "(no target)"
        lines.append(row + f"{ratio:>10.2f}x" + (f"   {verdict}" if verdicts else ""))
    return lines, ok


def report(sizes: list[Size], queries_run: list[Query]) -> tuple[str, bool]:
    big = sizes[-1]
    lines = [f"GET {EXPORTS_URL} (and the 'units' rows: GET {UNITS_URL}) over HTTP (the "
             "target):"]
    api_lines, ok = table(sizes, queries_run, "latencies", verdicts=True)
    lines += api_lines
    lines += ["", "the same pages through shared.domain.exports.list_exports (sources."
                  "list_source_units) in this process (database + ORM only; for reading the "
                  "above, no target):"]
    lines += table(sizes, queries_run, "in_process", verdicts=False)[0]
    lines.append("")
    for s in sizes:
        p99 = pct(s.sweep_ms, 99)
        passed = p99 < SWEEP_TARGET_MS
        if s is big:
            ok = ok and passed
        lines.append(f"sweeper scan @{s.rows:>9,}: p50 {pct(s.sweep_ms, 50):.1f} ms, p99 "
                     f"{p99:.1f} ms ({len(s.sweep_ms)} scans, {s.stuck_found} stuck found)   "
                     + ("PASS" if passed else "FAIL"))
    for s in sizes:
        lines.append(f"admin status @{s.rows:>9,}: p50 {pct(s.status_ms, 50):.1f} ms, p99 "
                     f"{pct(s.status_ms, 99):.1f} ms ({len(s.status_ms)} overviews, in this "
                     "process; no target)")
    return "\n".join(lines), ok


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.list_pages",
        description="p50/p99 of the export list at N rows against a baseline (issue 12, target 7).")
    parser.add_argument("--database-url", default=os.environ.get("AIC_BENCH_DATABASE_URL"),
                        help="a PostgreSQL server URL (any database on it; default "
                             "$AIC_BENCH_DATABASE_URL). The benchmark creates and drops its own "
                             f"databases {DATABASE_PREFIX}<rows> there")
    parser.add_argument("--rows", default="10000,1000000",
                        help="comma-separated sizes, the first is the baseline (default "
                             "10000,1000000; e.g. 2000,20000 for a quick check)")
    parser.add_argument("--requests", type=int, default=300,
                        help="timed requests per query and size (default 300)")
    parser.add_argument("--sweeps", type=int, default=50, help="timed sweeper scans per size")
    parser.add_argument("--keep", action="store_true",
                        help="leave the databases in place (they are recreated on every run)")
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("no PostgreSQL given: pass --database-url postgresql+psycopg://... or set "
                     "AIC_BENCH_DATABASE_URL (the benchmark creates its own databases there)")
    args.sizes = [int(n.replace("_", "")) for n in args.rows.split(",")]
    if len(args.sizes) < 2 or any(n < ORGS for n in args.sizes):
        parser.error(f"--rows needs at least two sizes of at least {ORGS} rows")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = server_url(args.database_url)
    print(header(args, server, args.sizes), flush=True)
    now = datetime.now(UTC).replace(microsecond=0)
    sizes: list[Size] = []
    with signals_raise_interrupt(), tempfile.TemporaryDirectory(prefix="aic-bench-rows-") as tmp:
        try:
            for n in args.sizes:
                recreate_database(server, f"{DATABASE_PREFIX}{n}")
                url = database_url(server, n)
                size = Size(rows=n, url=url, engine=create_engine(url))
                sizes.append(size)
                load(size, now)
                print(f"loaded   : {n:,} exports (and as many expenses and source units) in "
                      f"{size.load_seconds:.1f} s incl. VACUUM ANALYZE", flush=True)
            for size in sizes:
                start_api(size, Path(tmp))
            print(f"load average before the timed requests: {_load(os.getloadavg())}", flush=True)
            queries_run = []
            for query in queries(now):
                measure(sizes, query, args.requests, now)
                measure_in_process(sizes, query, args.requests)
                queries_run.append(query)
            for size in sizes:
                measure_sweep(size, args.sweeps)
                measure_status(size, args.sweeps // 5 or 1)
            table, ok = report(sizes, queries_run)
            print(table)
            print(f"load average at the end: {_load(os.getloadavg())}")
        except BenchFailure as failure:
            print(f"FAILED: {failure}", file=sys.stderr)
            return 2
        finally:
            for size in sizes:
                if size.api is not None:
                    size.api.stop(grace=10)
                size.engine.dispose()
                if not args.keep:
                    recreate_database(server, f"{DATABASE_PREFIX}{size.rows}", drop_only=True)
    print("verdict  : " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
