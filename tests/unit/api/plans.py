"""What a list sends to the database, and how PostgreSQL plans it (the list tests' EXPLAIN
checks: pages off an index in the list's order, no sort of an organization's rows)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event, text

from shared.db.session import get_engine


def statements_sent(call: Callable[[], Any]) -> list[tuple[str, Any]]:
    """The statements ``call()`` sends, with their parameters."""
    engine = get_engine()
    sent: list[tuple[str, Any]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return sent


def explained(statements: list[tuple[str, Any]]) -> list[str]:
    """PostgreSQL's plan of each statement. The planner is told to avoid a sequential scan, a
    bitmap scan and a sort, which a test table of a few rows (or statistics taken mid-suite)
    would otherwise prefer to walking an index in order: there every plan costs about the same
    (sorting the one row it expects is as cheap as anything), so the plan shows whether an index
    can give the list's order, which is what decides at a million rows."""
    engine = get_engine()
    plans = []
    for statement, parameters in statements:
        with engine.begin() as connection:
            connection.execute(text("SET LOCAL enable_seqscan = off"))
            connection.execute(text("SET LOCAL enable_bitmapscan = off"))
            connection.execute(text("SET LOCAL enable_sort = off"))
            cursor = connection.connection.cursor()
            cursor.execute("EXPLAIN " + statement, parameters)
            plans.append("\n".join(row[0] for row in cursor.fetchall()))
    return plans
