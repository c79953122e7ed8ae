"""Export throughput: how fast one batch of exports reaches a (slow) Tripletex.

    .venv/bin/python -m bench.export_throughput [--exports N] [--orgs K] [--latency-ms L]
        [--workers W] [--concurrency C] [--pool threads|prefork|solo]
        [--rate-limit default|off|R] [--compare | --versus-bare] [--warm] [--keep]

Each run starts an isolated stack of real processes in a temporary directory (embedded Redis, a
freshly migrated SQLite file or AIC_BENCH_DATABASE_URL, the Tripletex sandbox, the API under
uvicorn, W Celery workers with the chosen pool), creates an organization, a sandbox company whose
every Tripletex request takes ``latency_ms``, the connection and N approved expenses through the
API, then posts ONE batch and times it until every export is terminal. ``--orgs K`` spreads the
N expenses over K organizations (K companies, K connections, one batch each, posted back to
back): every connection has its own client-side request budget (shared/integrations/rate_limit.py,
10 requests/s by default), so with one organization that budget, not the pool, bounds throughput.

What is timed: wall time from just before the (first) ``POST /api/v1/accounting-exports/batch``
until ``GET .../batch/{id}`` reports nothing left in ``processing`` (polled every 0.1 s). After the
window (untimed) it reads every export (``initiated_at`` -> ``exported_at``) and its events, and
checks that all N succeeded and the sandbox holds exactly N vouchers, one per export id: a run
that lost or doubled work prints no figures and exits 1.

``--compare`` runs the same load three times on fresh stacks: threads pool x16, prefork x2 (one
export per process, what Celery's default pool gives on this 2-core machine) and solo.

``--versus-bare`` (with ``--rate-limit off``) then runs the anchor of issue 12's targets 1 and 2
on a stack of its own: a bare Celery task (``bench.bare_celery``) doing the same voucher POST to
the same sandbox with the same pool and concurrency, and prints throughput and worker CPU per
export of both, their ratios and PASS/FAIL against the targets (>= 0.80 of the bare
throughput, <= 2x its CPU per task), and each worker's CPU split between its main thread
(Celery's consumer loop) and the others (the pool's threads running the tasks). The bare task's session and lookups are made by the
benchmark before its window; ours are made by the first exports inside the window (a cold start
of two round trips every export in flight waits for) unless ``--warm`` exports one expense per
organization first, untimed.

The machine is usually shared: the load average before/after and the CPU seconds used by this
stack versus the whole machine during the window are printed with every run, so a disturbed
figure shows itself.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import resource
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from devstack.processes import ManagedProcess, free_port, python_argv, wait_for_http
from devstack.redis_server import EmbeddedRedis

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CELERY_APP = "worker.celery_app:celery_app"
API_APP = "producers.api.app:app"
QUEUES = "exports,reports,maintenance"
BARE_APP = "bench.bare_celery:app"
BARE_QUEUE = "bare"
STARTUP_TIMEOUT = 90.0  # generous: imports are slow when the machine is busy
POLL_INTERVAL = 0.1
TERMINAL = ("success", "failed", "cancelled")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchFailure(RuntimeError):
    """The stack did not start, or the run lost, failed or doubled work: no figures."""


# --- configuration and results ---------------------------------------------------------------

@dataclass(frozen=True)
class PoolConfig:
    pool: str
    concurrency: int
    workers: int

    @property
    def in_flight(self) -> int:
        """Exports that can be in progress at once across all worker processes."""
        return self.workers * (1 if self.pool == "solo" else self.concurrency)

    @property
    def label(self) -> str:
        per = "solo" if self.pool == "solo" else f"{self.pool} x{self.concurrency}"
        return per if self.workers == 1 else f"{self.workers} workers x ({per})"


@dataclass
class CpuSample:
    """CPU seconds (user+system) of our children, of this process and of the whole machine."""

    by_child: dict[str, float]
    bench: float
    machine_busy: float
    # The worker processes' main threads together: Celery's consumer loop (receiving, acking,
    # scheduling). With the threads or prefork pool the tasks run elsewhere.
    worker_main_threads: float = 0.0


@dataclass
class RunResult:
    config: PoolConfig
    exports: int
    orgs: int
    batch_post_s: float
    wall_s: float
    server_span_s: float
    latencies: list[float]
    queue_waits: list[float]
    service_times: list[float]
    retries: int
    attempts_total: int
    sandbox_requests: dict[str, int]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    cpu_by_child: dict[str, float]
    cpu_bench: float
    cpu_machine: float
    log_dir: Path
    # First 'started' event -> last success event of the timed batch(es): the workers' own span,
    # without the batch POST and the poll (bench.latency_bound compares it with its bound).
    worker_span_s: float = 0.0
    cpu_worker_main: float = 0.0  # CpuSample.worker_main_threads over the window

    @property
    def throughput(self) -> float:
        return self.exports / self.wall_s

    @property
    def cpu_ours(self) -> float:
        return sum(self.cpu_by_child.values()) + self.cpu_bench

    @property
    def cpu_others(self) -> float:
        return max(0.0, self.cpu_machine - self.cpu_ours)


# --- measuring CPU from /proc (no psutil in the venv) ----------------------------------------

def _pgroup_cpu_seconds(pgids: dict[int, str]) -> dict[str, float]:
    """User+system CPU seconds of every live process in the given process groups, by name.

    ManagedProcess starts each child in its own session, so a prefork worker's pool processes
    are counted with their parent.
    """
    totals = {name: 0.0 for name in pgids.values()}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(f"/proc/{entry.name}/stat")
        name = pgids.get(int(fields[2])) if fields else None
        if name is not None:
            totals[name] += _cpu_of(fields)
    return totals


def _main_thread_cpu_seconds(pids: list[int]) -> float:
    """User+system CPU seconds of these processes' main threads (the thread whose id is the
    process id); 0 for a process that is gone."""
    total = 0.0
    for pid in pids:
        fields = _stat_fields(f"/proc/{pid}/task/{pid}/stat")
        if fields:
            total += _cpu_of(fields)
    return total


def _stat_fields(path: str) -> list[str] | None:
    """The fields of a /proc .../stat file after the command name (state first), or None for a
    process or thread that is gone."""
    try:
        with open(path, "rb") as stat:
            raw = stat.read().decode(errors="replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def _cpu_of(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _machine_busy_seconds() -> float:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the stack --------------------------------------------------------------------------------

def redact(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def _wait_for_log_line(process: ManagedProcess, marker: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise BenchFailure(f"{process.name} exited with {process.popen.returncode} at start; "
                               f"log {process.log_path}:\n{process.tail()}")
        if marker in process.log_path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise BenchFailure(f"{process.name} did not log {marker!r} within {timeout:.0f}s; "
                       f"log {process.log_path}:\n{process.tail()}")


class BenchStack:
    """Redis, database, Tripletex sandbox, API and workers for one run, all children of ours."""

    def __init__(self, run_dir: Path, config: PoolConfig, database_url: str | None,
                 *, bare: bool = False) -> None:
        """``bare``: the anchor stack of ``--versus-bare``: Redis, the sandbox and workers of
        ``bench.bare_celery`` only (no database, no API)."""
        self.bare = bare
        self.run_dir = run_dir
        self.log_dir = run_dir / "logs"
        self.config = config
        self.database_url = database_url or f"sqlite:///{run_dir / 'bench.db'}"
        self.admin_token = secrets.token_urlsafe(32)
        self.redis: EmbeddedRedis | None = None
        self.processes: list[ManagedProcess] = []
        self.api_url = ""
        self.sandbox_url = ""

    def start(self) -> None:
        from cryptography.fernet import Fernet

        from shared.db.migrate import upgrade

        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.redis = EmbeddedRedis(self.run_dir / "redis", log_dir=self.log_dir)
        try:
            self.redis.start()
        except TimeoutError as exc:
            tail = self.redis.process.tail() if self.redis.process else ""
            raise BenchFailure(f"redis-server did not start: {exc}\n{tail}") from exc
        if not self.bare:
            upgrade(self.database_url)
        env = {
            "AIC_DATABASE_URL": self.database_url,
            "AIC_REDIS_URL": self.redis.url,
            "AIC_ADMIN_TOKEN": self.admin_token,
            "AIC_SECRET_KEY": Fernet.generate_key().decode(),
            "AIC_WORKER_CONCURRENCY": str(self.config.concurrency),
            "PYTHONUNBUFFERED": "1",
        }
        sandbox_port, api_port = free_port(), free_port()
        self.sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        self.api_url = f"http://127.0.0.1:{api_port}"
        # Everything is spawned first and awaited afterwards, so the slow imports overlap.
        sandbox = self._spawn("tripletex-sandbox", python_argv(
            "-m", "sandbox.tripletex", "--port", str(sandbox_port), "--log-level", "warning"), env)
        waits = [(sandbox, f"{self.sandbox_url}/_sandbox/healthz")]
        if not self.bare:
            api = self._spawn("api", python_argv(
                "-m", "uvicorn", API_APP, "--host", "127.0.0.1", "--port", str(api_port),
                "--log-level", "warning"), env)
            waits.append((api, f"{self.api_url}/healthz"))
        app, queues = (BARE_APP, BARE_QUEUE) if self.bare else (CELERY_APP, QUEUES)
        workers = [
            # The Procfile's worker command, with the pool under test and a distinct hostname.
            self._spawn(f"worker{i}", python_argv(
                "-m", "celery", "-A", app, "worker", "--pool", self.config.pool,
                "--concurrency", str(self.config.concurrency), "-Q", queues,
                "--hostname", f"bench{i}@%h", "--loglevel", "INFO"), env)
            for i in range(1, self.config.workers + 1)
        ]
        for process, url in waits:
            try:
                wait_for_http(url, timeout=STARTUP_TIMEOUT, process=process)
            except (RuntimeError, TimeoutError) as exc:
                raise BenchFailure(f"{process.name} did not start: {exc}\n"
                                   f"log {process.log_path}:\n{process.tail()}") from exc
        for worker in workers:
            _wait_for_log_line(worker, " ready.", STARTUP_TIMEOUT)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, env=env, log_dir=self.log_dir, cwd=PROJECT_ROOT)
        self.processes.append(process)
        return process

    def process_groups(self) -> dict[int, str]:
        named = {p.pid: p.name for p in self.processes}
        if self.redis is not None and self.redis.process is not None:
            named[self.redis.process.pid] = "redis"
        return named

    def first_dead(self) -> ManagedProcess | None:
        return next((p for p in self.processes if not p.alive()), None)

    def stop(self) -> None:
        """Workers first (they finish in-flight tasks on SIGTERM), then API, sandbox, Redis."""
        for process in reversed(self.processes):
            process.stop(grace=15)
        self.processes = []
        if self.redis is not None:
            self.redis.stop()
            self.redis = None


@contextmanager
def signals_raise_interrupt():
    """SIGTERM behaves like Ctrl-C, so ``finally`` blocks stop every child either way.

    SIGINT is set explicitly: a process started in the background by a non-interactive shell
    inherits SIGINT as ignored.
    """
    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def signals_held():
    """A second Ctrl-C must not break off the clean-up halfway and leave children running."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def say(message: str) -> None:
    """Progress on stderr, so stdout holds only the figures."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def run_benchmark(prefix: str, keep: bool, body, cleanup=None) -> int:
    """The frame every benchmark's ``main`` runs in, so they end alike: ``body(tmp)`` runs in a
    fresh scratch directory with SIGTERM raised like Ctrl-C (every ``finally`` stops its
    children) and returns the exit code; then the load average at the end. A ``BenchFailure``
    prints "no figures" (exit 1), Ctrl-C exits 130. ``cleanup()`` (stopping what ``body``
    started) runs with signals held; the scratch directory goes unless ``keep`` or the run
    failed (then its logs are what to read)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    ok = False
    try:
        with signals_raise_interrupt():
            code = body(tmp)
        print(f"load average at the end: {_load(os.getloadavg())}")
        ok = True
        return code
    except BenchFailure as failure:
        print(f"BENCHMARK FAILED (no figures for this run): {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every child process was stopped", file=sys.stderr)
        return 130
    finally:
        if cleanup is not None:
            with signals_held():
                cleanup()
        if ok and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs and data kept in {tmp}", file=sys.stderr)


# --- the load ---------------------------------------------------------------------------------

_refs = itertools.count(1)


def _check(response: httpx.Response, expected: int, what: str) -> dict:
    if response.status_code != expected:
        raise BenchFailure(f"{what}: HTTP {response.status_code} (expected {expected}): "
                           f"{response.text[:2000]}")
    return response.json()


def _expense_body(i: int) -> dict:
    amount = Decimal("100.00") + Decimal(i % 97)
    return {
        "source_ref": f"bench-{i}-{next(_refs)}",
        "status": "approved",
        "description": f"Bench expense {i}",
        "employee_name": "Kari Nordmann",
        "expense_date": date.today().isoformat(),
        "currency": "NOK",
        "rows": [
            {"account": "6800", "amount": str(amount), "vat_code": "1",
             "description": "Office supplies"},
            {"account": "2930", "amount": str(-amount), "description": "Owed to employee"},
        ],
    }


@dataclass
class Tenant:
    """One organization with its own sandbox company and Tripletex connection (so its own
    per-connection request budget) and its share of the expenses."""

    api: httpx.Client
    company_id: str
    expense_ids: list[str] = field(default_factory=list)
    batch_id: str = ""
    export_ids: list[str] = field(default_factory=list)
    # Exported before the timed window (``warmup``), so every worker's client is warm.
    warmup_expense_ids: list[str] = field(default_factory=list)
    warmup_export_ids: list[str] = field(default_factory=list)


def connection_options(rate_limit: str) -> dict | None:
    """``--rate-limit``: ``default`` sends no option (the code's default policy applies)."""
    if rate_limit == "default":
        return None
    if rate_limit == "off":
        return {"rate_limit": False}
    rate = float(rate_limit)
    return {"rate_limit": {"requests_per_second": rate, "burst": max(1, int(rate))}}


def set_up_tenants(stack: BenchStack, control: httpx.Client, *, exports: int, orgs: int,
                   latency_ms: int, rate_limit: str, options: dict | None = None,
                   warmup: int = 0) -> list[Tenant]:
    """``options``: the connections' options instead of those ``rate_limit`` implies."""
    tenants: list[Tenant] = []
    with httpx.Client(base_url=stack.api_url, timeout=60,
                      headers={"Authorization": f"Bearer {stack.admin_token}"}) as admin:
        for n in range(1, orgs + 1):
            org = _check(admin.post("/api/v1/admin/organizations",
                                    json={"name": f"Bench {n} AS"}), 201, "create organization")
            company = _check(control.post("/_sandbox/companies", json={"name": f"Bench {n} AS"}),
                             201, "create sandbox company")
            _check(control.put(f"/_sandbox/companies/{company['company_id']}/faults",
                               json={"latency_ms": latency_ms}), 200, "set sandbox latency")
            body = {"base_url": f"{stack.sandbox_url}/v2",
                    "credentials": {"consumer_token": company["consumer_token"],
                                    "employee_token": company["employee_token"],
                                    "company_id": "0"}}
            chosen = options if options is not None else connection_options(rate_limit)
            if chosen is not None:
                body["options"] = chosen
            _check(admin.put(
                f"/api/v1/admin/organizations/{org['organization_id']}/connections/tripletex",
                json=body), 200, "create Tripletex connection")
            tenants.append(Tenant(
                api=httpx.Client(base_url=stack.api_url, timeout=60,
                                 headers={"Authorization": f"Bearer {org['api_key']}"}),
                company_id=company["company_id"]))
    # N expenses dealt out as evenly as possible: tenant k gets expenses k, k+orgs, ...
    for tenant, expense_id in create_expenses([tenants[i % orgs] for i in range(exports)]):
        tenant.expense_ids.append(expense_id)
    for tenant, expense_id in create_expenses([t for t in tenants for _ in range(warmup)]):
        tenant.warmup_expense_ids.append(expense_id)
    return tenants


def create_expenses(owners: list[Tenant]) -> list[tuple[Tenant, str]]:
    """One approved expense through the API for each entry of ``owners``."""

    def create(item: tuple[Tenant, int]) -> tuple[Tenant, str]:
        tenant, i = item
        return tenant, _check(tenant.api.post("/api/v1/expenses", json=_expense_body(i)), 201,
                              f"create expense {i}")["expense_id"]

    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bench-expense")
    try:
        return list(pool.map(create, list(zip(owners, itertools.count()))))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def post_batch(tenant: Tenant, expense_ids: list[str]) -> dict:
    return _check(tenant.api.post("/api/v1/accounting-exports/batch", json={
        "expense_ids": expense_ids, "target_system": "tripletex"}), 202, "post batch")


def wait_for_batches(stack: BenchStack, batches: list[tuple[Tenant, str]], started: float,
                     timeout: float) -> dict[str, int]:
    """Poll until every batch is done; the status counts of all of them."""
    counts: dict[str, int] = {}
    # One GET per tick whatever the number of batches (the poll is load on the same two
    # cores): ask the first unfinished batch; when it is done, move on to the next at once.
    pending = list(batches)
    while pending:
        tenant, batch_id = pending[0]
        progress = _check(tenant.api.get(f"/api/v1/accounting-exports/batch/{batch_id}"), 200,
                          "batch progress")
        if progress["done"]:
            for status, n in progress["counts"].items():
                counts[status] = counts.get(status, 0) + n
            pending.pop(0)
            continue
        dead = stack.first_dead()
        if dead is not None:
            raise BenchFailure(f"{dead.name} died during the run (exit "
                               f"{dead.popen.returncode}); log {dead.log_path}:\n"
                               f"{dead.tail()}")
        if time.perf_counter() - started > timeout:
            raise BenchFailure(f"not finished after {timeout:.0f}s (finished batches: "
                               f"{counts}); logs in {stack.log_dir}")
        time.sleep(POLL_INTERVAL)
    return counts


def _parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _cpu_sample(stack: BenchStack) -> CpuSample:
    groups = stack.process_groups()
    return CpuSample(_pgroup_cpu_seconds(groups), _own_cpu_seconds(), _machine_busy_seconds(),
                     _main_thread_cpu_seconds([pid for pid, name in groups.items()
                                               if name.startswith("worker")]))


def run_once(config: PoolConfig, *, exports: int, orgs: int, latency_ms: int, rate_limit: str,
             timeout: float, run_dir: Path, database_url: str | None, say,
             warmup: int = 0) -> RunResult:
    """``warmup``: that many exports per organization are exported first, untimed, so every
    worker starts the timed window with warm clients (session, lookups)."""
    stack = BenchStack(run_dir, config, database_url)
    tenants: list[Tenant] = []
    control: httpx.Client | None = None
    try:
        say(f"[{config.label}] starting stack in {run_dir}")
        stack.start()
        control = httpx.Client(base_url=stack.sandbox_url, timeout=60)
        say(f"[{config.label}] creating {orgs} organization(s) and {exports} approved expenses "
            "through the API")
        tenants = set_up_tenants(stack, control, exports=exports, orgs=orgs,
                                 latency_ms=latency_ms, rate_limit=rate_limit, warmup=warmup)
        if warmup:
            say(f"[{config.label}] warming up: {warmup} export(s) per organization, untimed")
            warm = []
            for tenant in tenants:
                batch = post_batch(tenant, tenant.warmup_expense_ids)
                tenant.warmup_export_ids = batch["export_ids"]
                warm.append((tenant, batch["batch_id"]))
            counts = wait_for_batches(stack, warm, time.perf_counter(), timeout)
            if counts.get("success", 0) != warmup * orgs:
                raise BenchFailure(f"warm-up: not every export succeeded: {counts}")
        for tenant in tenants:
            _check(control.delete(f"/_sandbox/companies/{tenant.company_id}/requests"), 200,
                   "reset sandbox request counts")
        say(f"[{config.label}] posting {orgs} batch(es), {exports} exports in all")

        # --- the timed window -------------------------------------------------------------
        load_before = os.getloadavg()
        cpu_before = _cpu_sample(stack)
        started = time.perf_counter()
        for tenant in tenants:  # one batch per organization, back to back
            batch = post_batch(tenant, tenant.expense_ids)
            tenant.batch_id, tenant.export_ids = batch["batch_id"], batch["export_ids"]
        batch_post_s = time.perf_counter() - started
        counts = wait_for_batches(stack, [(t, t.batch_id) for t in tenants], started, timeout)
        wall_s = time.perf_counter() - started
        cpu_after = _cpu_sample(stack)
        load_after = os.getloadavg()

        # --- untimed: read the record and verify nothing was lost or doubled ----------------
        if counts.get("success", 0) != exports:
            raise BenchFailure(f"not every export succeeded: {counts}; logs in {stack.log_dir}")
        initiated: dict[str, datetime] = {}
        exported: dict[str, datetime] = {}
        requests: dict[str, int] = {}
        for tenant in tenants:
            listed = _list_batch(tenant.api, tenant.batch_id)
            export_ids = set(tenant.export_ids)
            if {e["export_id"] for e in listed} != export_ids or len(listed) != len(export_ids):
                raise BenchFailure(f"the list API shows {len(listed)} exports of batch "
                                   f"{tenant.batch_id}, expected exactly the {len(export_ids)} "
                                   "it created")
            export_ids |= set(tenant.warmup_export_ids)
            vouchers = _check(control.get(f"/_sandbox/companies/{tenant.company_id}/vouchers"),
                              200, "sandbox vouchers")
            numbers = [v.get("externalVoucherNumber") for v in vouchers]
            if len(vouchers) != len(export_ids) or set(numbers) != export_ids:
                raise BenchFailure(
                    f"sandbox company {tenant.company_id} holds {len(vouchers)} vouchers "
                    f"({len(set(numbers))} distinct export ids) for {len(export_ids)} successful "
                    "exports: work was lost or doubled")
            for key, n in _check(control.get(
                    f"/_sandbox/companies/{tenant.company_id}/requests"), 200,
                    "sandbox request counts").items():
                requests[key] = requests.get(key, 0) + n
            initiated.update({e["export_id"]: _parse_time(e["initiated_at"]) for e in listed})
            exported.update({e["export_id"]: _parse_time(e["exported_at"]) for e in listed})
        latencies = [(exported[i] - initiated[i]).total_seconds() for i in initiated]
        span = (max(exported.values()) - min(initiated.values())).total_seconds()
        queue_waits, service_times, retries, attempts = [], [], 0, 0
        first_start, last_done = [], []
        for tenant in tenants:
            q, s, r, a, ends = _event_timings(tenant.api, tenant.export_ids, initiated)
            queue_waits += q
            service_times += s
            retries += r
            attempts += a
            first_start.append(ends[0])
            last_done.append(ends[1])

        return RunResult(
            config=config, exports=exports, orgs=orgs, batch_post_s=batch_post_s, wall_s=wall_s,
            server_span_s=span, latencies=latencies, queue_waits=queue_waits,
            service_times=service_times, retries=retries, attempts_total=attempts,
            sandbox_requests=requests, load_before=load_before, load_after=load_after,
            cpu_by_child={name: cpu_after.by_child.get(name, 0.0) - seconds
                          for name, seconds in cpu_before.by_child.items()},
            cpu_bench=cpu_after.bench - cpu_before.bench,
            cpu_worker_main=cpu_after.worker_main_threads - cpu_before.worker_main_threads,
            cpu_machine=cpu_after.machine_busy - cpu_before.machine_busy,
            log_dir=stack.log_dir,
            worker_span_s=(max(last_done) - min(first_start)).total_seconds(),
        )
    finally:
        with signals_held():
            for tenant in tenants:
                tenant.api.close()
            if control is not None:
                control.close()
            say(f"[{config.label}] stopping the stack")
            stack.stop()


@dataclass
class BareResult:
    """The anchor: the same vouchers POSTed by a bare Celery task (``bench.bare_celery``)."""

    config: PoolConfig
    exports: int
    wall_s: float
    sandbox_requests: dict[str, int]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    cpu_by_child: dict[str, float]
    cpu_machine: float
    cpu_worker_main: float = 0.0  # CpuSample.worker_main_threads over the window

    @property
    def throughput(self) -> float:
        return self.exports / self.wall_s

    @property
    def cpu_workers(self) -> float:
        return sum(v for k, v in self.cpu_by_child.items() if k.startswith("worker"))


def run_bare(config: PoolConfig, *, exports: int, latency_ms: int, timeout: float,
             run_dir: Path, say) -> BareResult:
    """``exports`` vouchers, each one task of ``bench.bare_celery`` doing one POST, on a stack of
    its own with the same pool and concurrency. Timed from the first task sent until the tasks
    counted ``exports`` successes in Redis (polled every 0.1 s)."""
    import redis as redis_lib

    from bench import bare_celery
    from shared.integrations.tripletex import TripletexClient

    stack = BenchStack(run_dir, config, None, bare=True)
    try:
        say(f"[bare {config.label}] starting stack in {run_dir}")
        stack.start()
        with httpx.Client(base_url=stack.sandbox_url, timeout=60) as control:
            company = _check(control.post("/_sandbox/companies", json={"name": "Bare AS"}), 201,
                             "create sandbox company")
            company_id = company["company_id"]
            # The same voucher bodies our worker sends, built by our client (session and
            # lookups happen here, outside the window; the bare task gets them ready-made).
            base_url = f"{stack.sandbox_url}/v2"
            with TripletexClient(base_url, consumer_token=company["consumer_token"],
                                 employee_token=company["employee_token"]) as client:
                bodies = [client.prepare_voucher(_expense_draft(i)).payload.decode()
                          for i in range(exports)]
                token = client._session.token  # noqa: SLF001 - the bench hands it to the task
            _check(control.put(f"/_sandbox/companies/{company_id}/faults",
                               json={"latency_ms": latency_ms}), 200, "set sandbox latency")
            _check(control.delete(f"/_sandbox/companies/{company_id}/requests"), 200,
                   "reset sandbox request counts")
            assert stack.redis is not None
            redis = redis_lib.Redis.from_url(stack.redis.url)
            sender = bare_celery.app
            sender.conf.broker_url = stack.redis.url
            say(f"[bare {config.label}] sending {exports} tasks")

            load_before = os.getloadavg()
            cpu_before = _cpu_sample(stack)
            started = time.perf_counter()
            with sender.producer_or_acquire() as producer:
                for body in bodies:
                    sender.send_task("bench.bare_voucher_post", producer=producer,
                                     args=[f"{base_url}/ledger/voucher", "0", token, body])
            while True:
                done, failed = (int(v or 0) for v in redis.mget(bare_celery.DONE_KEY,
                                                                bare_celery.FAILED_KEY))
                if done + failed >= exports:
                    break
                dead = stack.first_dead()
                if dead is not None:
                    raise BenchFailure(f"{dead.name} died during the bare run; log "
                                       f"{dead.log_path}:\n{dead.tail()}")
                if time.perf_counter() - started > timeout:
                    raise BenchFailure(f"bare run not finished after {timeout:.0f}s ({done} "
                                       f"done); logs in {stack.log_dir}")
                time.sleep(POLL_INTERVAL)
            wall_s = time.perf_counter() - started
            cpu_after = _cpu_sample(stack)
            load_after = os.getloadavg()
            redis.close()
            if failed:
                raise BenchFailure(f"{failed} bare POSTs were refused; logs in {stack.log_dir}")
            vouchers = _check(control.get(f"/_sandbox/companies/{company_id}/vouchers"), 200,
                              "sandbox vouchers")
            numbers = [v.get("externalVoucherNumber") for v in vouchers]
            if len(numbers) != exports or len(set(numbers)) != exports:
                raise BenchFailure(f"bare run: the sandbox holds {len(numbers)} vouchers "
                                   f"({len(set(numbers))} distinct) for {exports} tasks")
            requests = _check(control.get(f"/_sandbox/companies/{company_id}/requests"), 200,
                              "sandbox request counts")
        return BareResult(
            config=config, exports=exports, wall_s=wall_s, sandbox_requests=requests,
            load_before=load_before, load_after=load_after,
            cpu_by_child={name: cpu_after.by_child.get(name, 0.0) - seconds
                          for name, seconds in cpu_before.by_child.items()},
            cpu_machine=cpu_after.machine_busy - cpu_before.machine_busy,
            cpu_worker_main=cpu_after.worker_main_threads - cpu_before.worker_main_threads)
    finally:
        with signals_held():
            say(f"[bare {config.label}] stopping the stack")
            stack.stop()


def _expense_draft(i: int):
    """The voucher our mapping builds from ``_expense_body(i)`` (same accounts, VAT, amounts)."""
    from shared.domain.vouchers import PostingDraft, VoucherDraft

    amount = Decimal("100.00") + Decimal(i % 97)
    return VoucherDraft(
        external_number=f"bare-{i}", date=date.today(), description=f"Bench expense {i}",
        postings=[PostingDraft(account_number="6800", amount=amount, vat_code="1",
                               description="Office supplies"),
                  PostingDraft(account_number="2930", amount=-amount,
                               description="Owed to employee")])


# Issue 12's targets against the bare anchor.
TARGET_THROUGHPUT_SHARE = 0.80
TARGET_CPU_FACTOR = 2.0


def versus_bare_table(ours: RunResult, bare: BareResult) -> str:
    ours_cpu = sum(v for k, v in ours.cpu_by_child.items() if k.startswith("worker"))
    ours_ms = 1000 * ours_cpu / ours.exports
    bare_ms = 1000 * bare.cpu_workers / bare.exports
    share = ours.throughput / bare.throughput
    factor = ours_ms / bare_ms if bare_ms else float("inf")
    lines = [
        f"--- bare Celery task, {bare.config.label}: one voucher POST per task "
        f"(bench.bare_celery)",
        f"  throughput                : {bare.throughput:.2f} tasks/s (wall {bare.wall_s:.2f} s, "
        f"first task sent -> all counted done)",
        f"  Tripletex calls           : "
        f"{', '.join(f'{k} {v}' for k, v in sorted(bare.sandbox_requests.items()))}",
        f"  load average              : {_load(bare.load_before)} before -> "
        f"{_load(bare.load_after)} after",
        f"  CPU in the window         : workers {bare.cpu_workers:.2f} s; whole machine "
        f"{bare.cpu_machine:.1f} s",
        f"{'':<26}{'ours':>12}{'bare Celery':>14}{'ratio':>9}   target",
        f"{'exports/s':<26}{ours.throughput:>12.2f}{bare.throughput:>14.2f}{share:>9.2f}   "
        f">= {TARGET_THROUGHPUT_SHARE:.2f}  {'PASS' if share >= TARGET_THROUGHPUT_SHARE else 'FAIL'}",
        f"{'worker CPU ms per export':<26}{ours_ms:>12.1f}{bare_ms:>14.1f}{factor:>9.2f}   "
        f"<= {TARGET_CPU_FACTOR:.1f}   {'PASS' if factor <= TARGET_CPU_FACTOR else 'FAIL'}",
        # Where the difference is: Celery's consumer loop runs in the main thread, the tasks in
        # the pool's (with --pool solo both are the main thread).
        f"{'  main thread (consumer)':<26}{1000 * ours.cpu_worker_main / ours.exports:>12.1f}"
        f"{1000 * bare.cpu_worker_main / bare.exports:>14.1f}",
        f"{'  other threads (tasks)':<26}"
        f"{1000 * (ours_cpu - ours.cpu_worker_main) / ours.exports:>12.1f}"
        f"{1000 * (bare.cpu_workers - bare.cpu_worker_main) / bare.exports:>14.1f}",
    ]
    return "\n".join(lines)


def _list_batch(api: httpx.Client, batch_id: str) -> list[dict]:
    rows: list[dict] = []
    for page in itertools.count(1):
        body = _check(api.get("/api/v1/accounting-exports", params={
            "batch_id": batch_id, "limit": 100, "page": page}), 200, "list exports")
        rows += body["data"]
        if not body["data"] or len(rows) >= body["pagination"]["total"]:
            return rows


def _event_timings(api: httpx.Client, export_ids: list[str], initiated: dict[str, datetime]
                   ) -> tuple[list[float], list[float], int, int, tuple[datetime, datetime]]:
    """Per export: queue wait (initiated -> first ``started``) and service time (last
    ``started`` -> ``success``), plus retries and attempts across the batch, and the batch's
    first ``started`` and last ``success``."""

    def events(export_id: str) -> list[dict]:
        return _check(api.get(f"/api/v1/accounting-exports/{export_id}/events"), 200,
                      f"events of {export_id}")["events"]

    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bench-events")
    try:
        all_events = dict(zip(export_ids, pool.map(events, export_ids), strict=True))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    queue_waits, service_times, retries, attempts = [], [], 0, 0
    first: datetime | None = None
    last: datetime | None = None
    for export_id, log in all_events.items():
        starts = [_parse_time(e["at"]) for e in log if e["kind"] == "started"]
        done = [_parse_time(e["at"]) for e in log
                if e["kind"] == "status_changed" and e["to_status"] == "success"]
        retries += sum(1 for e in log if e["kind"] == "retry_scheduled")
        attempts += len(starts)
        if starts and done:
            queue_waits.append((starts[0] - initiated[export_id]).total_seconds())
            service_times.append((done[-1] - starts[-1]).total_seconds())
            first = starts[0] if first is None else min(first, starts[0])
            last = done[-1] if last is None else max(last, done[-1])
    return queue_waits, service_times, retries, attempts, (first, last)


# --- reporting --------------------------------------------------------------------------------

def pct(values: list[float], p: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def _load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{v:.2f}" for v in load)


def describe_run(r: RunResult, latency_ms: int, rate_per_connection: float | None) -> str:
    calls = sum(r.sandbox_requests.values())
    floor = calls * latency_ms / 1000 / r.config.in_flight
    floors = f"latency-only floor {floor:.2f} s at {r.config.in_flight} in flight"
    if rate_per_connection:
        floors += (f"; rate-limit floor ~{calls / (rate_per_connection * r.orgs):.2f} s at "
                   f"{rate_per_connection:g} requests/s per connection x {r.orgs}")
    by_child = ", ".join(f"{name} {seconds:.1f}" for name, seconds in r.cpu_by_child.items())
    capacity = (os.cpu_count() or 1) * r.wall_s
    lines = [
        f"--- {r.config.label}: {r.config.workers} worker process(es), pool {r.config.pool}, "
        f"concurrency {r.config.concurrency} -> at most {r.config.in_flight} export(s) in flight;"
        f" {r.orgs} organization(s)",
        f"  throughput                : {r.throughput:.2f} exports/s",
        f"  wall time                 : {r.wall_s:.2f} s (first batch POST -> all terminal, "
        f"polled every {POLL_INTERVAL} s); batch POST(s) {r.batch_post_s:.2f} s",
        f"  server-side span          : {r.server_span_s:.2f} s (first initiated_at -> "
        f"last exported_at)",
        f"  end-to-end per export     : p50 {pct(r.latencies, 50):.2f} s  "
        f"p95 {pct(r.latencies, 95):.2f} s  max {max(r.latencies):.2f} s  "
        f"(initiated_at -> exported_at, list API)",
        f"    of which queue wait     : p50 {pct(r.queue_waits, 50):.2f} s  "
        f"p95 {pct(r.queue_waits, 95):.2f} s  (initiated -> first 'started' event)",
        f"    of which in the worker  : p50 {pct(r.service_times, 50):.3f} s  "
        f"p95 {pct(r.service_times, 95):.3f} s  ('started' -> success event)",
        f"  verified                  : {r.exports} success, 0 failed; sandbox holds "
        f"{r.exports} vouchers, one per export id; attempts {r.attempts_total}, "
        f"retries {r.retries}",
        f"  Tripletex calls           : {calls} at {latency_ms} ms each "
        f"({', '.join(f'{k} {v}' for k, v in sorted(r.sandbox_requests.items()))}); "
        f"{floors}",
        f"  load average              : {_load(r.load_before)} before -> "
        f"{_load(r.load_after)} after",
        f"  CPU in the window         : this stack {r.cpu_ours:.1f} s ({by_child}, bench "
        f"{r.cpu_bench:.1f}); whole machine {r.cpu_machine:.1f} of {capacity:.1f} s available "
        f"-> others {r.cpu_others:.1f} s",
    ]
    return "\n".join(lines)


def comparison_table(results: list[RunResult]) -> str:
    header = (f"{'configuration':<22}{'in flight':>10}{'wall s':>9}{'exports/s':>11}"
              f"{'p50 s':>8}{'p95 s':>8}{'worker p50 s':>14}{'CPU ours/others s':>19}"
              f"{'load before->after':>21}")
    rows = [header, "-" * len(header)]
    for r in results:
        rows.append(
            f"{r.config.label:<22}{r.config.in_flight:>10}{r.wall_s:>9.2f}{r.throughput:>11.2f}"
            f"{pct(r.latencies, 50):>8.2f}{pct(r.latencies, 95):>8.2f}"
            f"{pct(r.service_times, 50):>14.3f}"
            f"{f'{r.cpu_ours:.1f}/{r.cpu_others:.1f}':>19}"
            f"{f'{r.load_before[0]:.2f}->{r.load_after[0]:.2f}':>21}")
    first = results[0]
    ratios = "; ".join(f"{first.throughput / r.throughput:.2f}x the throughput of "
                       f"{r.config.label}" for r in results[1:])
    rows.append(f"=> {first.config.label} ({first.throughput:.2f} exports/s) had {ratios}")
    return "\n".join(rows)


def _commit() -> str:
    def git(*args: str) -> str:
        # --no-optional-locks: never take .git/index.lock (others use git in this tree).
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=20).stdout

    try:
        sha = git("rev-parse", "--short", "HEAD").strip() or "unknown"
        changed = sorted({line[3:].split("/")[0] for line in git("status", "--porcelain")
                          .splitlines() if line[3:]})
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    return sha + (f" + uncommitted changes in: {', '.join(changed)}" if changed else "")


def command_line(module: str) -> str:
    """The command that is running, as it can be typed again from the project root."""
    exe = Path(sys.executable)
    try:
        exe_shown = str(exe.relative_to(PROJECT_ROOT))
    except ValueError:
        exe_shown = str(exe)
    return shlex.join([exe_shown, "-m", module, *sys.argv[1:]])


def header(args: argparse.Namespace, database_url: str | None,
           rate_per_connection: float | None) -> str:
    command = command_line("bench.export_throughput")
    inherited = sorted(k for k in os.environ
                       if k.startswith("AIC_") and k != "AIC_BENCH_DATABASE_URL")
    affinity = len(os.sched_getaffinity(0))
    lines = [
        "=== bench.export_throughput ===",
        f"command  : {command}   (cwd {Path.cwd()})",
        f"date     : {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"code     : {_commit()}",
        f"machine  : {platform.system()} {platform.machine()}, nproc {affinity}, "
        f"Python {platform.python_version()}, load average {_load(os.getloadavg())} (1/5/15 min)",
        f"database : {redact(database_url) if database_url else 'SQLite, a fresh file per run'}"
        f"; broker: embedded redis-server per run",
        f"load     : {args.exports} approved expenses in {args.orgs} organization(s), one batch "
        f"each; every Tripletex request delayed {args.latency_ms} ms (sandbox latency_ms)",
        "rate     : client-side Tripletex budget per connection: "
        + (f"{rate_per_connection:g} requests/s" if rate_per_connection else "none")
        + f" (--rate-limit {args.rate_limit})",
        "start    : " + ("warm: one export per organization first, untimed (--warm)"
                         if args.warm else "cold: the first exports make the worker's session "
                                           "and lookups inside the window"),
    ]
    if inherited:
        lines.append(f"note     : children also inherit these AIC_* variables from your "
                     f"environment: {', '.join(inherited)}")
    return "\n".join(lines)


def effective_rate(rate_limit: str) -> float | None:
    """Requests/s per connection the workers will allow themselves (for the printed floor)."""
    if rate_limit == "off":
        return None
    if rate_limit != "default":
        return float(rate_limit)
    # The default policy of the code under test: read from the same settings the children
    # build (they inherit this environment). Absent on code without a client-side limiter.
    from shared.config import get_settings

    return getattr(get_settings(), "tripletex_rate_limit_per_second", None) or None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.export_throughput",
        description="Time one batch of exports through a real, isolated stack.")
    parser.add_argument("--exports", type=int, default=300,
                        help="expenses exported in all (default 300)")
    parser.add_argument("--orgs", type=int, default=1,
                        help="organizations the expenses are spread over, each with its own "
                             "sandbox company and connection, so its own request budget; one "
                             "batch each (default 1)")
    parser.add_argument("--rate-limit", default="default", metavar="default|off|R",
                        help="the connections' client-side Tripletex rate limit: the code's "
                             "default policy, off, or R requests/s (burst R)")
    parser.add_argument("--latency-ms", type=int, default=200,
                        help="delay of every Tripletex request in the sandbox (default 200)")
    parser.add_argument("--workers", type=int, default=1, help="Celery worker processes")
    parser.add_argument("--concurrency", type=int, default=16, help="per worker (default 16)")
    parser.add_argument("--pool", choices=["threads", "prefork", "solo"], default="threads")
    parser.add_argument("--compare", action="store_true",
                        help="run threads x16, prefork x2 and solo (ignores --pool and "
                             "--concurrency) and print a table")
    parser.add_argument("--versus-bare", action="store_true",
                        help="also run a bare Celery task doing the same voucher POST with the "
                             "same pool and concurrency (bench.bare_celery) and print the "
                             "throughput ratio and CPU per export of each (needs --rate-limit "
                             "off: the bare task has no limiter)")
    parser.add_argument("--warm", action="store_true",
                        help="export one expense per organization first, untimed, so the timed "
                             "window starts with the worker's Tripletex client warm (session and "
                             "lookups made), as the bare task's are made before its window")
    parser.add_argument("--timeout", type=float, default=600,
                        help="give up a run after this many seconds (default 600)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (logs, database) after success")
    args = parser.parse_args(argv)
    if args.orgs < 1 or args.exports < args.orgs:
        parser.error("--orgs must be >= 1 and <= --exports")
    if -(-args.exports // args.orgs) > 500:
        parser.error("at most 500 exports per organization (the API's batch limit)")
    if args.rate_limit not in ("default", "off"):
        try:
            if float(args.rate_limit) <= 0:
                raise ValueError
        except ValueError:
            parser.error("--rate-limit takes default, off or a number of requests/s > 0")
    if args.versus_bare and (args.compare or args.orgs != 1 or args.rate_limit != "off"):
        parser.error("--versus-bare runs one configuration for one organization with "
                     "--rate-limit off (the bare task has neither tenants nor a limiter)")
    if args.workers < 1 or args.concurrency < 1 or args.latency_ms < 0:
        parser.error("--workers and --concurrency must be >= 1, --latency-ms >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Like AIC_TEST_DATABASE_URL for the tests: a PostgreSQL to run on instead of SQLite. It is
    # migrated, never emptied; each run uses an organization of its own.
    database_url = os.environ.get("AIC_BENCH_DATABASE_URL") or None
    if args.compare:
        configs = [PoolConfig("threads", 16, args.workers), PoolConfig("prefork", 2, args.workers),
                   PoolConfig("solo", 1, args.workers)]
    else:
        concurrency = 1 if args.pool == "solo" else args.concurrency
        configs = [PoolConfig(args.pool, concurrency, args.workers)]

    rate_per_connection = effective_rate(args.rate_limit)
    print(header(args, database_url, rate_per_connection), flush=True)

    def body(tmp: Path) -> int:
        results: list[RunResult] = []
        for n, config in enumerate(configs, 1):
            result = run_once(config, exports=args.exports, orgs=args.orgs,
                              latency_ms=args.latency_ms, rate_limit=args.rate_limit,
                              timeout=args.timeout, run_dir=tmp / f"run{n}-{config.pool}",
                              database_url=database_url, say=say,
                              warmup=1 if args.warm else 0)
            results.append(result)
            print(describe_run(result, args.latency_ms, rate_per_connection), flush=True)
        if args.versus_bare:
            bare = run_bare(configs[0], exports=args.exports, latency_ms=args.latency_ms,
                            timeout=args.timeout, run_dir=tmp / "bare", say=say)
            print(versus_bare_table(results[0], bare), flush=True)
        if len(results) > 1:
            print(comparison_table(results))
        return 0

    return run_benchmark("aic-bench-", args.keep, body)


if __name__ == "__main__":
    sys.exit(main())
