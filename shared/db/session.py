"""Engine and sessions. A unit of work commits in exactly one place: ``session_scope`` (an ORM
session), or ``core_transaction`` (a Core connection, for the worker's hot path); both run the
same after-commit duties (``on_commit``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Result, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from shared.config import get_settings


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # pragma: no cover - trivial
        cursor = dbapi_connection.cursor()
        # WAL lets the API read while a worker writes; busy_timeout makes writers queue instead
        # of failing with "database is locked" when the API, workers and beat share one file.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}


def get_engine(url: str | None = None) -> Engine:
    url = url or get_settings().database_url
    if url not in _engines:
        _engines[url] = _create_engine(url)
    return _engines[url]


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    # pool_pre_ping: a connection the server closed (a restart, a failover, a proxy's idle
    # timeout) is replaced at checkout instead of failing the request that draws it
    # (tests/reliability/test_database_outage.py). It is one round trip per checkout, so an API
    # request checks out once (producers.api.deps.RequestSession), not once per session.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def new_session() -> Session:
    url = get_settings().database_url
    if url not in _factories:
        _factories[url] = sessionmaker(bind=get_engine(url), expire_on_commit=False)
    return _factories[url]()


@contextmanager
def session_scope() -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error, always close.

    Jobs queued with ``shared.jobs.enqueue_after_commit`` during the block are sent to the broker
    only after the commit, so a worker never sees an id the database does not have yet.
    """
    session = new_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


class CoreTransaction:
    """One transaction on a Core connection, with what the domain's write functions
    (``shared.domain.state_machine``, the after-commit jobs and metrics) use of a ``Session``:
    ``connection()``, ``execute()``, ``get_bind()``, and ``info``, where they park what must
    happen only once the transaction has committed. It holds no ORM objects (``new``, ``dirty``
    and ``deleted`` are empty: there is never anything to flush).

    Why not a session: the worker runs two transactions per export with Core statements only,
    and an ORM session's begin, commit and close cost each of them more CPU than its statements
    (issue 12, target 2a: ~0.12 ms of the ~0.8 ms of ``run_export`` measured alone)."""

    new = dirty = deleted = ()

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.info: dict[str, Any] = {}

    def connection(self) -> Connection:
        return self._connection

    def execute(self, statement: Any, parameters: Any = None) -> Result:
        return self._connection.execute(statement, parameters)

    def get_bind(self) -> Engine:
        return self._connection.engine


# What the domain's write functions take: either kind of transaction.
Transaction = Session | CoreTransaction


@contextmanager
def core_transaction() -> Iterator[CoreTransaction]:
    """``session_scope`` on a Core connection: commit on success, roll back on any error, then
    the after-commit (or after-rollback) duties, as a session's events run them."""
    transaction: CoreTransaction | None = None
    try:
        with get_engine().begin() as connection:
            transaction = CoreTransaction(connection)
            yield transaction
    except BaseException:
        if transaction is not None:
            _after_rollback(transaction.info)
        raise
    _after_commit(transaction.info)


# What must happen once a transaction committed (send its jobs, count its events), or must be
# forgotten when it rolled back: each hook takes the transaction's ``info``.
_COMMIT_HOOKS: list[Callable[[dict[str, Any]], None]] = []
_ROLLBACK_HOOKS: list[Callable[[dict[str, Any]], None]] = []


def on_commit(hook: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """Register ``hook(info)`` to run after every committed transaction, of either kind."""
    _COMMIT_HOOKS.append(hook)
    return hook


def on_rollback(hook: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """Register ``hook(info)`` to run after every rolled-back transaction, of either kind."""
    _ROLLBACK_HOOKS.append(hook)
    return hook


def _after_commit(info: dict[str, Any]) -> None:
    for hook in _COMMIT_HOOKS:
        hook(info)


def _after_rollback(info: dict[str, Any]) -> None:
    for hook in _ROLLBACK_HOOKS:
        hook(info)


@event.listens_for(Session, "after_commit")
def _session_committed(session: Session) -> None:
    # SQLAlchemy also fires after_commit when a SAVEPOINT (``begin_nested``) is released: the
    # outer transaction is not committed then, and a job sent now would name a row a worker
    # cannot see yet (a poll announcing a page of units queued each one before its commit).
    if not session.in_nested_transaction():
        _after_commit(session.info)


@event.listens_for(Session, "after_rollback")
def _session_rolled_back(session: Session) -> None:
    _after_rollback(session.info)


# Re-entrant: a transaction taken inside another of the same thread must not deadlock on it.
_SQLITE_WRITERS = threading.RLock()


def one_sqlite_writer() -> AbstractContextManager:
    """Around a short write transaction that many threads of one process run at once (the
    webhook receiver): on SQLite, they take turns on a lock instead of colliding in the
    database. SQLite has one writer at a time, and a thread that finds the file locked sleeps
    in SQLite's busy handler (1, 2, 5, 10, ... ms, retried unfairly): under load those sleeps,
    not the work, made the receiver's tail latency. A no-op on other databases."""
    if get_settings().database_url.startswith("sqlite"):
        return _SQLITE_WRITERS
    return nullcontext()


def reset_engines() -> None:
    """Tests that switch databases call this; production never does."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _factories.clear()
