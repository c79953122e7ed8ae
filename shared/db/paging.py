"""The one way a list endpoint reads a page: an organization's rows newest first, at an offset,
with the exact ``total`` the API contracts promise (``page``/``limit``/``total``).

Order ``created_at DESC, id``: newest first, ties by id, so pages neither repeat nor skip a row.
Each listed table has an index in exactly that order, led by the organization (migrations 0010,
0011): the count is an index-only scan, and the offset walks the index only (the page's ids
first, then their rows), so a deep page never reads the rows it skips. Without it PostgreSQL read
and sorted all of an organization's rows on every request (issue 12, target 7).
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

Model = TypeVar("Model")


def newest_first_page(session: Session, model: type[Model], conditions: list[ColumnElement[bool]],
                      *, page: int, limit: int) -> tuple[list[Model], int]:
    """One page (1-based) of ``model``'s rows matching ``conditions``, and how many match."""
    table: Any = model
    total = session.scalar(select(func.count()).select_from(table).where(*conditions))
    order = (table.created_at.desc(), table.id)
    page_ids = (select(table.id).where(*conditions).order_by(*order)
                .offset((page - 1) * limit).limit(limit).subquery())
    rows = session.scalars(select(table).join(page_ids, table.id == page_ids.c.id)
                           .order_by(*order)).all()
    return list(rows), int(total or 0)
