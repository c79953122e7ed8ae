"""Webhook receiver capacity: our Findity webhook against a bare FastAPI endpoint, side by side.

    .venv/bin/python -m bench.webhook_receiver [--workers 1,2] [--step-seconds 5]
        [--duplicates 0.25] [--start-rate 20] [--keep]
    AIC_BENCH_DATABASE_URL=postgresql+psycopg://.../aic_bench .venv/bin/python -m bench.webhook_receiver

Target 6 of issue 12: the receiver's capacity (the highest request rate at which p99 stays
under 50 ms) at least 0.70 of a bare FastAPI endpoint under the same uvicorn settings that does
only the minimum durable work (``bench.bare_webhook``: one INSERT ... ON CONFLICT DO NOTHING and
one Redis LPUSH), with duplicate deliveries in the load and each export announced once.

One run starts, as children of its own: an embedded ``redis-server``, a fresh SQLite file per
app (or the PostgreSQL database in AIC_BENCH_DATABASE_URL, migrated, never emptied: each run uses
a new organization and a table of its own for the bare app), and for each uvicorn worker count
N both apps at once with the same command line (``uvicorn <app> --workers N --log-level
warning``, through ``bench._uvicorn_tcp``: with N > 1 uvicorn 0.54 leaves TCP_NODELAY off on
every connection, and each answer's body waits ~40 ms for the client's delayed ACK; the
launcher gives the workers a listening socket marked TCP, as uvicorn's fix does). No Celery worker runs: the jobs our receiver publishes stay on the queue, where they
are counted.

The load is open-loop: request i of a step is due at t0 + i/rate whatever the answers (a slow
server gets more requests in flight, not fewer), and its latency is measured from that due time,
not from when it was sent (coordinated omission: a client that waits for an answer before the
next request hides the queueing it causes). The client is a minimal HTTP/1.1 client on asyncio
streams with a pool of keep-alive connections (httpx would cost the shared 2 cores more than the
servers do). About ``--duplicates`` of the requests redeliver one of the last 64 export ids sent,
often while its first delivery is still in flight (concurrent duplicates).

Capacity search, for each app, interleaved (ours, bare, ours, ... so a change of the machine's
load hits both): rates rise by x1.25 from ``--start-rate``; a step passes when every request got
200 and p99 < 50 ms; a failing rate is tried once more before it counts; then two bisection
steps between the last pass and the first fail. Capacity = the highest rate that passed.

After the steps of a worker count: our database must hold one source unit per distinct export id
answered 200 (and none that was not sent), the broker one ingest job per unit; the bare table one
row per id and its list one entry per row. A run that lost or doubled an announcement exits 1
without a verdict. Exit code 1 also when the capacity ratio misses the target.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.export_throughput import (
    PROJECT_ROOT,
    BenchFailure,
    _commit,
    _load,
    _machine_busy_seconds,
    _own_cpu_seconds,
    _pgroup_cpu_seconds,
    command_line,
    redact,
    signals_held,
    signals_raise_interrupt,
)
from devstack.processes import ManagedProcess, free_port, python_argv, wait_for_http
from devstack.redis_server import EmbeddedRedis

OUR_APP = "producers.api.app:app"
BARE_APP = "bench.bare_webhook:app"
TARGET_P99_MS = 50.0
TARGET_RATIO = 0.70
RATE_FACTOR = 1.25
MAX_RATE = 3000.0
MAX_CONNECTIONS = 512
REQUEST_TIMEOUT = 5.0
STARTUP_TIMEOUT = 90.0
RECENT_IDS = 64
IDLE_SECONDS = 2.0
GENERATOR_NICE = -10
INGEST_TASK = "worker.tasks.ingest_source_unit"
__all__ = ["main"]


# --- the load generator -----------------------------------------------------------------------

@dataclass
class StepResult:
    app: str
    rate: float
    sent: int
    duplicates_sent: int
    latencies_ms: list[float]
    errors: Counter
    max_send_lag_ms: float
    answered_duplicate: int
    ok_ids: set[str] = field(default_factory=set)
    sent_ids: set[str] = field(default_factory=set)

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("inf")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered))) - 1))]

    @property
    def passed(self) -> bool:
        return not self.errors and self.ok == self.sent and self.pct(99) < TARGET_P99_MS

    def row(self) -> str:
        errors = ",".join(f"{k}:{v}" for k, v in sorted(self.errors.items())) or "0"
        return (f"  {self.app:<5} {self.rate:8.1f} {self.sent:6d} {self.duplicates_sent:5d} "
                f"{self.pct(50):8.1f} {self.pct(99):8.1f} {max(self.latencies_ms or [0]):8.1f} "
                f"{self.max_send_lag_ms:8.1f}  {errors:<12} {'pass' if self.passed else 'FAIL'}")


ROW_HEADER = (f"  {'app':<5} {'rate/s':>8} {'sent':>6} {'dups':>5} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'max ms':>8} {'lag ms':>8}  {'errors':<12} step")


class Client:
    """HTTP/1.1 POSTs over a pool of keep-alive connections to one host:port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.open = 0

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        now = time.monotonic()
        # uvicorn closes a connection idle for 5 s (--timeout-keep-alive); one idle for a while
        # (the other app's step ran meanwhile) is closed here first, so no request meets a
        # connection the server is closing.
        while self.idle and now - self.idle[0][2] > IDLE_SECONDS:
            self.open -= 1
            self.idle.pop(0)[1].close()
        if self.idle:
            reader, writer, _ = self.idle.pop()
        else:
            if self.open >= MAX_CONNECTIONS:
                raise ConnectionError("client connection cap")
            self.open += 1
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except BaseException:
                self.open -= 1
                raise
        try:
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("closed")
            status = int(status_line.split()[1])
            length, close = 0, False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            payload = await reader.readexactly(length) if length else b""
        except BaseException:
            self.open -= 1
            writer.close()
            raise
        if close:
            self.open -= 1
            writer.close()
        else:
            self.idle.append((reader, writer, time.monotonic()))
        return status, payload

    def close(self) -> None:
        for _reader, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


async def run_step(app: str, client: Client, path: str, rate: float, seconds: float,
                   duplicates: float, prefix: str, org_id: str, rng: random.Random,
                   recent: list[str]) -> StepResult:
    loop = asyncio.get_running_loop()
    n = max(1, int(round(rate * seconds)))
    latencies: list[float] = []
    errors: Counter = Counter()
    ok_ids: set[str] = set()
    sent_ids: set[str] = set()
    answered_duplicate = 0
    duplicates_sent = 0
    max_lag = 0.0

    async def one(export_id: str, due: float) -> None:
        nonlocal answered_duplicate
        body = json.dumps({"exportId": export_id, "organizationId": org_id,
                           "numberOfVouchers": 1, "numberOfReports": 1}).encode()
        try:
            status, payload = await asyncio.wait_for(client.post(path, body), REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            errors["timeout"] += 1
            return
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            errors[type(exc).__name__] += 1
            return
        if status != 200:
            errors[str(status)] += 1
            return
        latencies.append((loop.time() - due) * 1000)
        ok_ids.add(export_id)
        if json.loads(payload).get("duplicate"):
            answered_duplicate += 1

    tasks = []
    start = loop.time() + 0.02
    for i in range(n):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        max_lag = max(max_lag, loop.time() - due)
        if recent and rng.random() < duplicates:
            export_id = rng.choice(recent)
            duplicates_sent += 1
        else:
            export_id = f"{prefix}-{i}"
            recent.append(export_id)
            del recent[:-RECENT_IDS]
        sent_ids.add(export_id)
        tasks.append(asyncio.ensure_future(one(export_id, due)))
    await asyncio.gather(*tasks)
    return StepResult(app, rate, n, duplicates_sent, latencies, errors, max_lag * 1000,
                      answered_duplicate, ok_ids, sent_ids)


# --- the stack --------------------------------------------------------------------------------

@dataclass
class AppUnderTest:
    name: str  # "ours" | "bare"
    module: str
    path: str = ""
    port: int = 0
    process: ManagedProcess | None = None
    org_id: str = ""
    connection_id: str = ""
    sent_ids: set[str] = field(default_factory=set)
    ok_ids: set[str] = field(default_factory=set)
    steps: list[StepResult] = field(default_factory=list)


class Stack:
    def __init__(self, run_dir: Path, database_url: str | None) -> None:
        self.run_dir = run_dir
        self.log_dir = run_dir / "logs"
        self.database_url = database_url or f"sqlite:///{run_dir / 'ours.db'}"
        self.bare_database_url = database_url or f"sqlite:///{run_dir / 'bare.db'}"
        suffix = secrets.token_hex(4)
        self.bare_table = f"bench_bare_webhooks_{suffix}"
        self.bare_queue = f"bench_bare_announced_{suffix}"
        self.admin_token = secrets.token_urlsafe(32)
        self.redis: EmbeddedRedis | None = None
        self.processes: list[ManagedProcess] = []
        self.env: dict[str, str] = {}

    def start(self) -> None:
        from cryptography.fernet import Fernet
        from sqlalchemy import text

        from shared.db.migrate import upgrade
        from shared.db.session import get_engine

        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.redis = EmbeddedRedis(self.run_dir / "redis", log_dir=self.log_dir)
        self.redis.start()
        upgrade(self.database_url)
        with get_engine(self.bare_database_url).begin() as connection:
            connection.execute(text(f"CREATE TABLE {self.bare_table} "
                                    "(external_id VARCHAR(100) PRIMARY KEY)"))
        self.env = {
            "AIC_DATABASE_URL": self.database_url,
            "AIC_REDIS_URL": self.redis.url,
            "AIC_ADMIN_TOKEN": self.admin_token,
            "AIC_SECRET_KEY": Fernet.generate_key().decode(),
            "AIC_BENCH_BARE_DATABASE_URL": self.bare_database_url,
            "AIC_BENCH_BARE_TABLE": self.bare_table,
            "AIC_BENCH_BARE_QUEUE": self.bare_queue,
            "PYTHONUNBUFFERED": "1",
        }

    def start_app(self, app: AppUnderTest, workers: int) -> None:
        app.port = free_port()
        app.process = ManagedProcess(
            f"{app.name}-w{workers}", python_argv(*uvicorn_args(app.module, app.port, workers)),
            env=self.env, log_dir=self.log_dir, cwd=PROJECT_ROOT)
        self.processes.append(app.process)

    def wait_app(self, app: AppUnderTest) -> None:
        try:
            wait_for_http(f"http://127.0.0.1:{app.port}/healthz", timeout=STARTUP_TIMEOUT,
                          process=app.process)
        except (RuntimeError, TimeoutError) as exc:
            raise BenchFailure(f"{app.name} did not start: {exc}\n{app.process.tail()}") from exc

    def stop_app(self, app: AppUnderTest) -> None:
        if app.process is not None:
            app.process.stop(grace=15)
            self.processes.remove(app.process)
            app.process = None

    def process_groups(self) -> dict[int, str]:
        named = {p.pid: p.name for p in self.processes}
        if self.redis is not None and self.redis.process is not None:
            named[self.redis.process.pid] = "redis"
        return named

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(grace=15)
        self.processes = []
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self.bare_table:
            try:
                from sqlalchemy import text

                from shared.db.session import get_engine

                if not self.bare_database_url.startswith("sqlite"):
                    with get_engine(self.bare_database_url).begin() as connection:
                        connection.execute(text(f"DROP TABLE IF EXISTS {self.bare_table}"))
            except Exception:  # noqa: BLE001 - clean-up of a bench table only
                pass


def uvicorn_args(module: str, port: int, workers: int) -> list[str]:
    """The same uvicorn settings for both apps: only the application differs. uvicorn runs
    through ``bench._uvicorn_tcp`` so that N workers get TCP_NODELAY as one worker does."""
    return ["-m", "bench._uvicorn_tcp", module, "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--log-level", "warning"]


def uvicorn_version() -> str:
    from importlib.metadata import version

    return version("uvicorn")


def set_up_source(stack: Stack, port: int, app: AppUnderTest, tag: str) -> None:
    """A new organization and Findity source connection (through the admin API) per worker
    count; the webhook's path carries the connection's token."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                      headers={"Authorization": f"Bearer {stack.admin_token}"}) as admin:
        org = admin.post("/api/v1/admin/organizations", json={"name": f"Webhook bench {tag}"})
        org.raise_for_status()
        app.org_id = f"findity-org-{tag}"
        source = admin.put(
            f"/api/v1/admin/organizations/{org.json()['organization_id']}/sources/findity",
            json={"base_url": "http://127.0.0.1:9/api", "target_system": "tripletex",
                  "credentials": {"client_id": "bench", "client_secret": "bench",
                                  "token_url": "http://127.0.0.1:9/token"},
                  "options": {"organization_id": app.org_id}})
        if source.status_code != 200:
            raise BenchFailure(f"could not create the Findity source: {source.text}")
        app.path = source.json()["webhook_path"]
        app.connection_id = source.json()["source_connection_id"]


# --- verification -----------------------------------------------------------------------------

def verify_ours(stack: Stack, app: AppUnderTest) -> str:
    """One source unit per distinct id answered 200 (none unsent), one ingest job per unit."""
    import redis as redis_lib
    from sqlalchemy import text

    from shared.db.session import get_engine

    with get_engine(stack.database_url).connect() as connection:
        rows = connection.execute(text(
            "SELECT id, external_export_id FROM source_units WHERE source_connection_id = :c"),
            {"c": app.connection_id}).all()
    units = {row.id: row.external_export_id for row in rows}
    stored = Counter(units.values())
    problems = []
    if any(count > 1 for count in stored.values()):
        problems.append("an export id has more than one source unit")
    if missing := app.ok_ids - set(stored):
        problems.append(f"{len(missing)} export id(s) answered 200 have no source unit")
    if unsent := set(stored) - app.sent_ids:
        problems.append(f"{len(unsent)} source unit(s) for ids never sent")
    client = redis_lib.Redis.from_url(stack.redis.url)
    jobs: Counter = Counter()
    for raw in client.lrange("exports", 0, -1):
        message = json.loads(raw)
        if message["headers"].get("task") != INGEST_TASK:
            continue
        args = json.loads(base64.b64decode(message["body"]))[0]
        if args[0] in units:
            jobs[args[0]] += 1
    client.close()
    if doubled := [u for u, c in jobs.items() if c > 1]:
        problems.append(f"{len(doubled)} source unit(s) announced more than once")
    if unannounced := set(units) - set(jobs):
        problems.append(f"{len(unannounced)} source unit(s) without an ingest job")
    if problems:
        raise BenchFailure("ours: " + "; ".join(problems))
    return (f"ours: {len(app.sent_ids)} distinct export ids sent, {len(app.ok_ids)} answered "
            f"200 -> {len(units)} source units, {sum(jobs.values())} ingest jobs (one each)")


def verify_bare(stack: Stack, app: AppUnderTest) -> str:
    import redis as redis_lib
    from sqlalchemy import text

    from shared.db.session import get_engine

    with get_engine(stack.bare_database_url).connect() as connection:
        stored = {r[0] for r in connection.execute(text(
            f"SELECT external_id FROM {stack.bare_table} WHERE external_id LIKE :p"),
            {"p": f"{app.org_id}-%"})}
    client = redis_lib.Redis.from_url(stack.redis.url)
    pushed = Counter(v.decode() for v in client.lrange(stack.bare_queue, 0, -1)
                     if v.decode().startswith(f"{app.org_id}-"))
    client.close()
    problems = []
    if missing := app.ok_ids - stored:
        problems.append(f"{len(missing)} id(s) answered 200 have no row")
    if any(c > 1 for c in pushed.values()):
        problems.append("an id was pushed more than once")
    if set(pushed) != stored:
        problems.append("rows and pushed ids differ")
    if problems:
        raise BenchFailure("bare: " + "; ".join(problems))
    return (f"bare: {len(app.sent_ids)} distinct export ids sent, {len(app.ok_ids)} answered "
            f"200 -> {len(stored)} rows, {sum(pushed.values())} LPUSHes (one each)")


# --- the load generator's priority ---

@contextmanager
def generator_priority(nice: int):
    """While the steps run (the apps already started, so they do not inherit it), the load
    generator asks the kernel to schedule it before the equal-priority apps and everything else
    on a busy machine: it must not be what is late. Its CPU is small and printed; its lateness
    ("lag ms") is printed per step and counted in the latencies anyway."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, 0)


def renice_groups(pgids: list[int], nice: int) -> None:
    """Every live process of these process groups (uvicorn's master and its workers) to
    ``nice``."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                raw = stat.read().decode(errors="replace")
            if int(raw[raw.rfind(")") + 2:].split()[2]) in pgids:
                os.setpriority(os.PRIO_PROCESS, int(entry.name), nice)
        except (OSError, ValueError):
            continue


def _priority_note(nice: int) -> str:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        pass
    apps = (f"both apps and Redis at nice {nice} (--nice: they go before the machine's other "
            "work; compare with a run without it)" if nice else
            "apps, Redis and database at normal priority")
    if os.geteuid() == 0:
        return (f"load generator at nice {min(GENERATOR_NICE, nice - 5)} during the steps; "
                f"{apps}")
    return f"load generator at normal priority (renice needs root); {apps}"


# --- the search -------------------------------------------------------------------------------

class Search:
    """Rates to try for one app: x1.25 up until a confirmed fail (or /1.25 down until a pass
    when the first rate fails), then two bisections between the last pass and the first fail."""

    def __init__(self, start: float) -> None:
        self.next_rate: float | None = start
        self.best: float | None = None
        self.failed_at: float | None = None
        self.retried: set[float] = set()
        self.bisections = 0

    def record(self, rate: float, passed: bool) -> None:
        if passed:
            self.best = max(self.best or 0, rate)
            if self.failed_at is None:
                self.next_rate = rate * RATE_FACTOR if rate * RATE_FACTOR <= MAX_RATE else None
                return
        elif rate not in self.retried:
            self.retried.add(rate)
            self.next_rate = rate  # one retry before a failure counts
            return
        else:
            self.failed_at = min(self.failed_at or rate, rate)
            if self.best is None:  # nothing passed yet: step down
                lower = round(rate / RATE_FACTOR, 1)
                self.next_rate = lower if lower >= 1 else None
                self.retried.add(lower)  # steps down are not retried
                return
        if self.bisections >= 2 or self.failed_at is None:
            self.next_rate = None
            return
        self.bisections += 1
        self.next_rate = round((self.best * self.failed_at) ** 0.5, 1)
        self.retried.add(self.next_rate)  # bisection probes are not retried
        if self.next_rate in (self.best, self.failed_at):
            self.next_rate = None


def run_worker_count(stack: Stack, workers: int, args: argparse.Namespace,
                     rng: random.Random) -> tuple[dict[str, AppUnderTest], list[str], str]:
    ours = AppUnderTest("ours", OUR_APP)
    bare = AppUnderTest("bare", BARE_APP, path="/webhooks/bare/anytoken0000000000")
    bare.org_id = f"bare-w{workers}-{secrets.token_hex(3)}"
    for app in (ours, bare):
        stack.start_app(app, workers)
    for app in (ours, bare):
        stack.wait_app(app)
    if args.nice:
        # Both apps (every uvicorn process of each) and the Redis they share, alike.
        groups_to_renice = [ours.process.pid, bare.process.pid]
        if stack.redis is not None and stack.redis.process is not None:
            groups_to_renice.append(stack.redis.process.pid)
        renice_groups(groups_to_renice, args.nice)
    set_up_source(stack, ours.port, ours, f"w{workers}-{secrets.token_hex(3)}")
    lines: list[str] = []
    groups = {ours.process.pid: "ours", bare.process.pid: "bare"}

    async def search() -> None:
        clients = {"ours": Client(ours.port), "bare": Client(bare.port)}
        recents: dict[str, list[str]] = {"ours": [], "bare": []}
        # Warm-up (not counted): imports, first connections, the pool's first sessions.
        for app in (ours, bare):
            for n in range(3):
                warm = await run_step(app.name, clients[app.name], app.path, 10, 1.0,
                                      args.duplicates, f"{app.org_id}-warm{n}", app.org_id, rng,
                                      recents[app.name])
                app.ok_ids |= warm.ok_ids
                app.sent_ids |= warm.sent_ids
        searches = {"ours": Search(args.start_rate), "bare": Search(args.start_rate)}
        step = 0
        while any(s.next_rate is not None for s in searches.values()):
            for app in (ours, bare):
                s = searches[app.name]
                if s.next_rate is None:
                    continue
                step += 1
                rate = s.next_rate
                before = _pgroup_cpu_seconds(groups)
                result = await run_step(app.name, clients[app.name], app.path, rate,
                                        args.step_seconds, args.duplicates,
                                        f"{app.org_id}-s{step}", app.org_id, rng,
                                        recents[app.name])
                after = _pgroup_cpu_seconds(groups)
                cpu = after[app.name] - before[app.name]
                app.steps.append(result)
                app.ok_ids |= result.ok_ids
                app.sent_ids |= result.sent_ids
                s.record(rate, result.passed)
                line = (result.row() + f"   cpu {cpu * 1000 / max(1, result.sent):5.2f} ms/req"
                        + f"   load {os.getloadavg()[0]:.2f}")
                lines.append(line)
                print(line, file=sys.stderr, flush=True)
        for client in clients.values():
            client.close()
        ours_best, bare_best = searches["ours"].best, searches["bare"].best
        lines.append(f"  capacity (p99 < {TARGET_P99_MS:.0f} ms, no errors): ours "
                     f"{ours_best or 0:.1f} requests/s, bare {bare_best or 0:.1f} requests/s")
        ours.capacity, bare.capacity = ours_best or 0.0, bare_best or 0.0  # type: ignore[attr-defined]

    with generator_priority(min(GENERATOR_NICE, args.nice - 5)):
        asyncio.run(search())
    for app in (ours, bare):
        stack.stop_app(app)
    verified = verify_ours(stack, ours) + "\n  " + verify_bare(stack, bare)
    return {"ours": ours, "bare": bare}, lines, verified


# --- output -----------------------------------------------------------------------------------

def header(args: argparse.Namespace, database_url: str | None) -> str:
    inherited = sorted(k for k in os.environ
                       if k.startswith("AIC_") and k != "AIC_BENCH_DATABASE_URL")
    lines = [
        "=== bench.webhook_receiver ===",
        f"command  : {command_line('bench.webhook_receiver')}   (cwd {Path.cwd()})",
        f"date     : {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"code     : {_commit()}",
        f"machine  : {platform.system()} {platform.machine()}, nproc "
        f"{len(os.sched_getaffinity(0))}, Python {platform.python_version()}, load average "
        f"{_load(os.getloadavg())} (1/5/15 min)",
        f"database : {redact(database_url) if database_url else 'SQLite, a fresh file per app'}"
        "; broker: embedded redis-server (no Celery worker: jobs stay queued and are counted)",
        f"apps     : ours = {OUR_APP} (POST /webhooks/findity/<token>); bare = {BARE_APP} "
        "(INSERT ... ON CONFLICT DO NOTHING + LPUSH); both: uvicorn "
        + " ".join(uvicorn_args("<app>", 0, 0)[3:]).replace("--port 0 --workers 0",
                                                             "--port <free> --workers N")
        + f" (uvicorn {uvicorn_version()} through bench._uvicorn_tcp: TCP_NODELAY with N > 1 "
        "too, Kludex/uvicorn#3149)",
        f"load     : open loop, {args.step_seconds:g} s per step, rates x{RATE_FACTOR} from "
        f"{args.start_rate:g}/s, then 2 bisections; ~{args.duplicates:.0%} duplicate deliveries "
        f"(of the last {RECENT_IDS} ids); latency from each request's due time",
        f"target   : capacity (highest rate with p99 < {TARGET_P99_MS:.0f} ms and no errors) "
        f"ours/bare >= {TARGET_RATIO:.2f} (issue 12, target 6)",
    ]
    if inherited:
        lines.append(f"note     : children also inherit: {', '.join(inherited)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook_receiver",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2",
                        help="uvicorn worker counts to measure, comma-separated (default 1,2)")
    parser.add_argument("--step-seconds", type=float, default=5.0)
    parser.add_argument("--start-rate", type=float, default=20.0)
    parser.add_argument("--duplicates", type=float, default=0.25,
                        help="share of requests that redeliver a recent export id (default 0.25)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--nice", type=int, default=0,
                        help="run both apps and Redis at this nice value (e.g. -5, needs root) "
                             "when other work swamps the machine; default 0 (normal)")
    parser.add_argument("--keep", action="store_true", help="keep logs and databases")
    args = parser.parse_args(argv)
    try:
        args.worker_counts = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error("--workers takes comma-separated integers, e.g. 1,2")
    if not 0 <= args.duplicates < 1:
        parser.error("--duplicates must be in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    database_url = os.environ.get("AIC_BENCH_DATABASE_URL")
    if database_url and database_url.rstrip("/").rsplit("/", 1)[-1] == "test":
        print("refusing the database named 'test': give the benchmark its own", file=sys.stderr)
        return 2
    print(header(args, database_url) + f"\nnote     : {_priority_note(args.nice)}", flush=True)
    run_dir = Path(tempfile.mkdtemp(prefix="aic-webhook-bench-"))
    stack = Stack(run_dir, database_url)
    rng = random.Random(args.seed)
    summary = []
    failed = False
    try:
        with signals_raise_interrupt():
            stack.start()
            for workers in args.worker_counts:
                print(f"--- {workers} uvicorn worker(s) per app", flush=True)
                print(ROW_HEADER, flush=True)
                load_before = os.getloadavg()
                busy0, own0 = _machine_busy_seconds(), _own_cpu_seconds()
                t0 = time.monotonic()
                apps, lines, verified = run_worker_count(stack, workers, args, rng)
                wall = time.monotonic() - t0
                busy, own = _machine_busy_seconds() - busy0, _own_cpu_seconds() - own0
                print("\n".join(lines))
                print(f"  announced once: {verified}")
                ours_cap, bare_cap = apps["ours"].capacity, apps["bare"].capacity
                ratio = ours_cap / bare_cap if bare_cap else 0.0
                verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
                failed |= verdict == "FAIL"
                print(f"  ratio ours/bare {ratio:.2f} (target >= {TARGET_RATIO:.2f}): {verdict}")
                print(f"  machine: load {_load(load_before)} before -> {_load(os.getloadavg())} "
                      f"after; {wall:.0f} s, whole machine busy {busy:.0f} of "
                      f"{wall * len(os.sched_getaffinity(0)):.0f} CPU s, of which the load "
                      f"generator {own:.0f} s")
                summary.append((workers, ours_cap, bare_cap, ratio, verdict))
    except BenchFailure as failure:
        print(f"FAILED: {failure}\nlogs kept in {run_dir}", file=sys.stderr)
        args.keep = True
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; logs kept in {run_dir}", file=sys.stderr)
        args.keep = True
        return 130
    finally:
        with signals_held():
            stack.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
    print(f"{'uvicorn workers':>15} {'ours req/s':>11} {'bare req/s':>11} {'ratio':>6}  verdict")
    for workers, ours_cap, bare_cap, ratio, verdict in summary:
        print(f"{workers:>15} {ours_cap:>11.1f} {bare_cap:>11.1f} {ratio:>6.2f}  {verdict}")
    print(f"load average at the end: {_load(os.getloadavg())}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
