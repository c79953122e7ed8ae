"""Jobs parked with ``enqueue_after_commit`` leave only when the outermost transaction commits."""

from __future__ import annotations

from sqlalchemy import text

from shared.db.session import session_scope
from shared.jobs import enqueue_after_commit


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
