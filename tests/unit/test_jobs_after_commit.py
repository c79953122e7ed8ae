"""Jobs parked with ``enqueue_after_commit`` (and metrics counted from event rows) leave only when
the outermost transaction commits, an ORM session's or a Core one's."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from shared.db.session import core_transaction, session_scope
from shared.jobs import enqueue_after_commit
from shared.metrics import count_export_event


def test_a_released_savepoint_sends_nothing_the_outer_commit_sends_all(sent_jobs):
    with session_scope() as session:
        session.execute(text("select 1"))
        enqueue_after_commit(session, "task.first", "a", queue="q")
        # A poll announces a page of units, each in a SAVEPOINT of the page's transaction;
        # SQLAlchemy fires after_commit when each is released.
        with session.begin_nested():
            session.execute(text("select 1"))
        enqueue_after_commit(session, "task.second", "b", queue="q")
        with session.begin_nested():
            session.execute(text("select 1"))
        assert sent_jobs == []  # not committed yet: a worker could not see the rows
    assert [job.task_name for job in sent_jobs] == ["task.first", "task.second"]


def test_a_core_transaction_sends_its_jobs_after_the_commit_and_none_after_a_rollback(sent_jobs):
    """The worker's transactions (``core_transaction``, no ORM session) park jobs the same way."""
    with core_transaction() as transaction:
        transaction.execute(text("select 1"))
        enqueue_after_commit(transaction, "task.kept", "a", queue="q")
        assert sent_jobs == []
    assert [job.task_name for job in sent_jobs] == ["task.kept"]

    with pytest.raises(RuntimeError), core_transaction() as transaction:
        enqueue_after_commit(transaction, "task.dropped", "b", queue="q")
        raise RuntimeError("rolled back")
    with core_transaction() as transaction:
        enqueue_after_commit(transaction, "task.next", "c", queue="q")
    # The rolled-back job is gone for good (a new transaction has a new ``info``; none leaks).
    assert [job.task_name for job in sent_jobs] == ["task.kept", "task.next"]


def test_a_core_transaction_counts_its_event_rows_only_once_committed():
    from prometheus_client import REGISTRY

    def attempts() -> float:
        return REGISTRY.get_sample_value("aic_export_attempts_total", {"target": "core-test"}) or 0

    before = attempts()
    with core_transaction() as transaction:
        count_export_event(transaction, "started", None, "exp_core", "core-test", None)
        assert attempts() == before
    assert attempts() == before + 1
    with pytest.raises(RuntimeError), core_transaction() as transaction:
        count_export_event(transaction, "started", None, "exp_core", "core-test", None)
        raise RuntimeError("rolled back")
    assert attempts() == before + 1
