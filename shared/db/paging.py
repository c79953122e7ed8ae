"""The one way a list endpoint reads a page: an organization's rows newest first, at an offset,
with the exact ``total`` the API contracts promise (``page``/``limit``/``total``).

Order ``created_at DESC, id``: newest first, ties by id, so pages neither repeat nor skip a row.
Each listed table has an index in exactly that order, led by the organization (migrations 0010,
0011): the count is an index-only scan, and the offset walks the index only (the page's ids
first, then their rows), so a deep page never reads the rows it skips. Without it PostgreSQL read
and sorted all of an organization's rows on every request (issue 12, target 7).

An offset still walks every index entry it skips. The count comes first anyway, so a page in the
older half is read from the other end of the same index (oldest first, the same entries in
reverse): the walk is never longer than half the matching rows, and the last page, where an
operator looking for the oldest exports goes, costs what page 1 costs.
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
    total = int(session.scalar(select(func.count()).select_from(table).where(*conditions)) or 0)
    offset = (page - 1) * limit
    if offset >= total:
        return [], total
    newest_first = (table.created_at.desc(), table.id)
    after_page = total - offset - limit  # rows older than this page
    if offset > max(after_page, 0):
        # Closer to the oldest end: skip the older rows instead, walking the index backwards.
        walk_order = (table.created_at.asc(), table.id.desc())
        walk_offset, walk_limit = max(after_page, 0), min(limit, total - offset)
    else:
        walk_order, walk_offset, walk_limit = newest_first, offset, limit
    page_ids = (select(table.id).where(*conditions).order_by(*walk_order)
                .offset(walk_offset).limit(walk_limit).subquery())
    rows = session.scalars(select(table).join(page_ids, table.id == page_ids.c.id)
                           .order_by(*newest_first)).all()
    return list(rows), total
