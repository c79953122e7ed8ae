"""Statuses of the domain, shared by the API, the services, the worker and the integrations.

They live here, not in the ORM, so that code which never touches the database (a vendor's
conversion of its vouchers, the API's schemas) does not import the models to name a status. The
ORM stores them as strings (``shared.db.models``).
"""

from __future__ import annotations

import enum


class ExportStatus(str, enum.Enum):
    """Exactly the statuses of the API contract. Finer steps are events, not statuses."""

    PROCESSING = "processing"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ExpenseStatus(str, enum.Enum):
    """Approval status as the source reported it. Only APPROVED expenses may be exported."""

    DRAFT = "draft"
    SUBMITTED = "submitted"
    APPROVED = "approved"
    REJECTED = "rejected"


class SourceUnitStatus(str, enum.Enum):
    """A source unit's progress (not an accounting export status); it changes only through
    ``shared.domain.source_units.transition_unit``, whose docstring has the allowed moves."""

    RECEIVED = "received"
    INGESTING = "ingesting"
    PROCESSING = "processing"
    COMPLETED = "completed"
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    REJECTED = "rejected"
