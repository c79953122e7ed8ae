"""The whole system on one machine: Redis, the sandboxes (Tripletex, Findity, BillDiary, TRAEDE,
Brex), the API, a Celery worker, beat, Flower.

``make run`` (devstack.run) and ``make demo`` (devstack.demo) start it through this one class,
so the two cannot drift apart::

    stack = Stack(var_dir)
    try:
        stack.start()             # migrate, start every child, wait until each one answers
        seed = stack.seed()       # demo organization, sandbox company, API key, demo expenses
        ...
    finally:
        stack.stop()              # children in reverse order of start

Every child gets ``AIC_DATABASE_URL`` and ``AIC_REDIS_URL`` explicitly, so a child can never fall
back to a different default than the one the stack migrated and seeded, and
``AIC_ENVIRONMENT=development`` (unless set), so the development secrets are accepted. Each child writes its
output to ``<var_dir>/log/<name>.log``; the previous run's log is kept as ``<name>.log.1``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from devstack.processes import ManagedProcess, free_port, python_argv, wait_for_http
from devstack.redis_server import EmbeddedRedis
from shared.config import (
    DEFAULT_VAR_DIR,
    DEVSTACK_ENV_FILE,
    DEVSTACK_PID_KEY,
    PROJECT_ROOT,
    get_settings,
)
from shared.db.migrate import upgrade

CELERY_APP = "worker.celery_app:celery_app"
API_APP = "producers.api.app:app"

# Ports ``make run`` tries first, so the URLs stay the same from one run to the next. A port that
# is taken falls back to a free one (the banner prints whatever was chosen).
PREFERRED_PORTS = {"api": 8000, "flower": 5555, "tripletex": 8100, "findity": 8200,
                   "billdiary": 8300, "traede": 8400, "brex": 8500,
                   "worker_metrics": 9540}

STARTUP_TIMEOUT = 60.0


class StackError(RuntimeError):
    """A child did not start, or died; the message names it and shows the end of its log."""


@dataclass(frozen=True)
class SeedResult:
    """What ``devstack.seed`` created or found (see that module)."""

    organization_id: str
    api_key: str
    sandbox_company_id: str
    expenses: list[dict]
    # The second target: a BillDiary sandbox business and the expenses meant for it.
    billdiary_business_id: int
    billdiary_expenses: list[dict]


def redact_url(url: str) -> str:
    """The URL with its password replaced, for banners and error messages."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_log_line(process: ManagedProcess, marker: str, timeout: float) -> None:
    """Wait until the child's log contains ``marker`` (Celery worker and beat have no port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise StackError(
                f"{process.name} exited with {process.popen.returncode} during start-up; "
                f"log: {process.log_path}\n{process.tail()}"
            )
        try:
            if marker in process.log_path.read_text(errors="replace"):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise StackError(
        f"{process.name} did not log {marker!r} within {timeout:.0f}s; "
        f"log: {process.log_path}\n{process.tail()}"
    )


def _raise_interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (`kill`, systemd, a CI timeout) both raise KeyboardInterrupt.

    SIGINT is set explicitly too: a process started in the background by a non-interactive shell
    inherits SIGINT as ignored, and Python then never installs its own handler.
    """
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while the children are being stopped.

    The children run in their own sessions, so a terminal's Ctrl-C reaches only this process:
    a second Ctrl-C that broke off ``stop()`` halfway would leave the rest running unowned.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Stack:
    def __init__(
        self,
        var_dir: Path = DEFAULT_VAR_DIR,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
        preferred_ports: bool = False,
        persistent_redis: bool = True,
        say: Callable[[str], None] = print,
    ) -> None:
        """
        ``database_url``: defaults to the configured one (``AIC_DATABASE_URL``, else the SQLite
        file var/aic.db). ``redis_url``: defaults to ``AIC_REDIS_URL`` when it is set in the
        environment; otherwise an embedded redis-server is started with its data in
        ``<var_dir>/redis``.
        """
        settings = get_settings()
        self.settings = settings
        self.var_dir = Path(var_dir)
        self.log_dir = self.var_dir / "log"
        self.database_url = database_url or settings.database_url
        if redis_url is None and "redis_url" in settings.model_fields_set:
            redis_url = settings.redis_url
        self._external_redis_url = redis_url
        self.redis: EmbeddedRedis | None = None
        self.persistent_redis = persistent_redis
        self.say = say

        def port(name: str) -> int:
            wanted = PREFERRED_PORTS[name]
            return wanted if preferred_ports and _port_is_free(wanted) else free_port()

        self.api_port = port("api")
        self.flower_port = port("flower")
        self.worker_metrics_port = port("worker_metrics")
        self.tripletex_port = port("tripletex")
        self.findity_port = port("findity")
        self.billdiary_port = port("billdiary")
        self.traede_port = port("traede")
        self.brex_port = port("brex")
        self.processes: list[ManagedProcess] = []

    # --- URLs -------------------------------------------------------------------------------------
    @property
    def redis_url(self) -> str:
        if self._external_redis_url:
            return self._external_redis_url
        if self.redis is None:
            raise RuntimeError("the embedded Redis has not been started")
        return self.redis.url

    @property
    def redis_is_embedded(self) -> bool:
        return not self._external_redis_url

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def docs_url(self) -> str:
        return f"{self.api_url}/docs"

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.flower_port}"

    @property
    def tripletex_url(self) -> str:
        """The sandbox's root; its Tripletex API is under ``/v2``, its control API ``/_sandbox``."""
        return f"http://127.0.0.1:{self.tripletex_port}"

    @property
    def findity_url(self) -> str:
        return f"http://127.0.0.1:{self.findity_port}"

    @property
    def billdiary_url(self) -> str:
        """The sandbox's root; BillDiary's API base is ``/api``, its control API ``/_sandbox``."""
        return f"http://127.0.0.1:{self.billdiary_port}"

    @property
    def traede_url(self) -> str:
        """The sandbox's root; TRAEDE's API base is ``/v10``, its control API ``/_sandbox``."""
        return f"http://127.0.0.1:{self.traede_port}"

    @property
    def brex_url(self) -> str:
        """The sandbox's root: Brex's API (``/v1``) and its control API ``/_sandbox``."""
        return f"http://127.0.0.1:{self.brex_port}"

    def child_env(self) -> dict[str, str]:
        return {
            "AIC_DATABASE_URL": self.database_url,
            "AIC_REDIS_URL": self.redis_url,
            # Only the worker reads it (its Prometheus /metrics); the API serves its own.
            "AIC_WORKER_METRICS_PORT": str(self.worker_metrics_port),
            # A local stack: the API, worker and beat may start with the development admin token
            # and secret key (outside development they refuse them). An AIC_ENVIRONMENT the user
            # set is kept, so `AIC_ENVIRONMENT=production make run` checks real secrets.
            "AIC_ENVIRONMENT": self.settings.environment
            if "environment" in self.settings.model_fields_set else "development",
            # Log lines reach var/log/ as they happen, not when a buffer fills.
            "PYTHONUNBUFFERED": "1",
            # The local stack runs Flower: show every task state there, "sent" included.
            "AIC_CELERY_TASK_EVENTS": "true",
        }

    # --- start and stop ---------------------------------------------------------------------------
    def start(self) -> None:
        """Migrate, start every child, and return once each one answers.

        ``StackError`` says which child failed, with the end of its log. Whatever happens, call
        ``stop()`` afterwards (or use the stack as a context manager): it stops what did start.
        """
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.say(f"migrating {redact_url(self.database_url)}")
        upgrade(self.database_url)
        if self.redis_is_embedded:
            self.say("starting embedded redis-server")
            self._rotate_log("redis")
            self.redis = EmbeddedRedis(
                self.var_dir / "redis", persistent=self.persistent_redis, log_dir=self.log_dir
            )
            try:
                self.redis.start()
            except TimeoutError as exc:
                process = self.redis.process
                log = f"; log: {process.log_path}\n{process.tail()}" if process else ""
                raise StackError(f"redis-server did not start: {exc}{log}") from exc
        self._start_children()
        self._write_env_file()

    @property
    def env_file(self) -> Path:
        return self.var_dir / DEVSTACK_ENV_FILE.name

    def _write_env_file(self) -> None:
        """Tell ``aic`` (shared.config.adopt_running_devstack) which database and broker this stack
        uses, for as long as it runs; ``source`` it to point any other process there."""
        self.env_file.write_text(
            "# Written by `make run` while it runs (removed when it stops): the settings of its\n"
            "# processes. `aic` uses them; other shells: set -a; . var/devstack.env; set +a\n"
            f"AIC_DATABASE_URL={self.database_url}\n"
            f"AIC_REDIS_URL={self.redis_url}\n"
            f"{DEVSTACK_PID_KEY}={os.getpid()}\n"
        )

    def __enter__(self) -> "Stack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start_children(self) -> None:
        s = self.settings
        celery = python_argv("-m", "celery", "-A", CELERY_APP)
        queues = ",".join([s.export_queue, s.report_queue, s.maintenance_queue])
        # (name, argv, wait-until-ready). All are started first and then awaited in order, so
        # their (slow) imports overlap.
        specs: list[tuple[str, list[str], Callable[[ManagedProcess], None]]] = [
            (
                "tripletex-sandbox",
                python_argv("-m", "sandbox.tripletex", "--port", str(self.tripletex_port)),
                self._http_ready(f"{self.tripletex_url}/_sandbox/healthz"),
            ),
            (
                "findity-sandbox",
                python_argv("-m", "sandbox.findity", "--port", str(self.findity_port)),
                self._http_ready(f"{self.findity_url}/_sandbox/healthz"),
            ),
            (
                "billdiary-sandbox",
                python_argv("-m", "sandbox.billdiary", "--port", str(self.billdiary_port)),
                self._http_ready(f"{self.billdiary_url}/_sandbox/healthz"),
            ),
            (
                "traede-sandbox",
                python_argv("-m", "sandbox.traede", "--port", str(self.traede_port)),
                self._http_ready(f"{self.traede_url}/_sandbox/healthz"),
            ),
            (
                "brex-sandbox",
                python_argv("-m", "sandbox.brex", "--port", str(self.brex_port)),
                self._http_ready(f"{self.brex_url}/_sandbox/healthz"),
            ),
            (
                "api",
                python_argv(
                    "-m", "uvicorn", API_APP, "--host", "127.0.0.1", "--port", str(self.api_port)
                ),
                self._http_ready(f"{self.api_url}/healthz"),
            ),
            (
                "worker",
                celery + [
                    "worker", "--pool", "threads", "--concurrency", str(s.worker_concurrency),
                    "-Q", queues, "--loglevel", "INFO",
                ],
                # Celery prints "celery@<host> ready." once it consumes from the broker.
                lambda p: wait_for_log_line(p, " ready.", STARTUP_TIMEOUT),
            ),
            (
                "beat",
                celery + [
                    "beat", "--schedule", str(self.var_dir / "celerybeat-schedule"),
                    "--loglevel", "INFO",
                ],
                lambda p: wait_for_log_line(p, "beat: Starting...", STARTUP_TIMEOUT),
            ),
            (
                "flower",
                # Flower's own options (tornado) take the --name=value form only.
                celery + ["flower", f"--port={self.flower_port}", "--address=127.0.0.1"],
                self._http_ready(f"{self.flower_url}/healthcheck"),
            ),
        ]
        env = self.child_env()
        waits = []
        for name, argv, ready in specs:
            self._rotate_log(name)
            process = ManagedProcess(name, argv, env=env, log_dir=self.log_dir, cwd=PROJECT_ROOT)
            self.processes.append(process)
            waits.append((process, ready))
        for process, ready in waits:
            self.say(f"waiting for {process.name} (pid {process.pid}, log {process.log_path})")
            ready(process)

    @staticmethod
    def _http_ready(url: str) -> Callable[[ManagedProcess], None]:
        # Any answer below 500 counts; the API's /healthz answers 503 until DB and broker are up.
        def ready(process: ManagedProcess) -> None:
            try:
                wait_for_http(url, timeout=STARTUP_TIMEOUT, process=process)
            except RuntimeError as exc:  # the child died; the message carries its log tail
                raise StackError(str(exc)) from exc
            except TimeoutError as exc:
                raise StackError(f"{exc}\nlog: {process.log_path}\n{process.tail()}") from exc

        return ready

    def _rotate_log(self, name: str) -> None:
        log = self.log_dir / f"{name}.log"
        if log.exists():
            log.replace(self.log_dir / f"{name}.log.1")

    def all_processes(self) -> list[ManagedProcess]:
        """Every child in order of start (the embedded Redis first)."""
        redis = [self.redis.process] if self.redis is not None and self.redis.process else []
        return redis + self.processes

    def first_dead(self) -> ManagedProcess | None:
        return next((p for p in self.all_processes() if not p.alive()), None)

    def describe_death(self, process: ManagedProcess) -> str:
        return (
            f"{process.name} (pid {process.pid}) exited unexpectedly with code "
            f"{process.popen.returncode}; log: {process.log_path}\n"
            f"--- last lines of {process.log_path.name} ---\n{process.tail()}"
        )

    def stop(self) -> None:
        """Stop every child in reverse order of start. Safe to call twice."""
        with _signals_held():
            for process in reversed(self.processes):
                if process.alive():
                    self.say(f"stopping {process.name} (pid {process.pid})")
                process.stop(grace=10)
            self.processes = []
            self.env_file.unlink(missing_ok=True)
            if self.redis is not None:
                self.say("stopping redis-server")
                self.redis.stop()
                self.redis = None

    # --- demo data -------------------------------------------------------------------------
    def seed(self) -> SeedResult:
        """Seed the demo organization (``devstack.seed``) in a child with the stack's environment.

        A child, not a call: it then reads exactly the database URL every other child got.
        """
        completed = subprocess.run(
            python_argv("-m", "devstack.seed", "--tripletex-url", self.tripletex_url,
                        "--billdiary-url", self.billdiary_url, "--json"),
            env={**os.environ, **self.child_env()},
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if completed.returncode != 0:
            raise StackError(
                f"seeding the demo organization failed (exit {completed.returncode}):\n"
                f"{completed.stderr.strip()[-3000:]}"
            )
        data = json.loads(completed.stdout)
        return SeedResult(**data)
