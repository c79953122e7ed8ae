"""The posting protocol's rules: when a record may be created in a target, and what an answer proves.

This module is the specification of docs/ARCHITECTURE.md ("The posting protocol") in code; the
orchestration that applies it is ``worker.export_job``. Every target client is used through it
the same way (``shared.integrations.targets.TargetClient``), so no target has its own rules.

An export is in one of three posting states, all read from its row:

- **clear**: ``posting_started_at IS NULL`` and ``external_id IS NULL``. Nothing we sent can
  have created a record. The export may be posted (by the lease holder), cancelled or failed.
- **in doubt**: ``posting_started_at`` set, ``external_id IS NULL``. A request that may have
  created a record left. Nobody posts, cancels or fails the export until the doubt is settled:
  by a lookup that finds the record (-> booked), by an answer that proves the target refused
  the request, or by a lookup that finds nothing made after ``post_deadline_at`` plus the
  target's search delay (-> clear).
- **booked**: ``external_id`` set. The export can only end in success; it is never posted again.

The state machine enforces the two ends of this in the database: ``failed`` and ``cancelled``
need a clear export, ``success`` needs a booked one unless nothing was ever posted (a PUT
callback for an export booked by someone else).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from shared.config import get_settings
from shared.integrations.errors import IntegrationError


def proves_not_stored(error: IntegrationError, *, gate_opened: bool) -> bool:
    """Whether ``error``, raised by the request that may create a record, proves it created none.

    Proof: the request never left (the gate stayed closed, the rate limiter refused it, the
    connection could not be made), or the target answered with a refusal (4xx: validation,
    authentication, permission, conflict, rate limit). Everything else is ambiguous: a 5xx (a
    gateway may answer 502/504 while the target still commits), a 2xx we could not read, a
    timeout or a connection lost after sending, an error of ours after the answer.
    """
    if not gate_opened or not error.sent:
        return True
    status = error.status_code
    return status is not None and 400 <= status < 500 and status != 408


def answered(error: IntegrationError) -> bool:
    """The target answered (any HTTP status): the request is no longer on its way."""
    return error.status_code is not None


def send_timeout() -> float:
    """How long each phase (connect, write, read...) of the posting request may take."""
    return get_settings().http_read_timeout


# What a posting deadline keeps, beyond the request's own phases, for the gate's commit and the
# moments before the request leaves. A gate whose commit took longer must not send (see
# ``worker.export_job._post``): the request could outlive the deadline another attempt trusts.
GATE_SLACK = timedelta(seconds=1)


def send_bound() -> timedelta:
    """The longest a posting request can be on its way from our side: each of httpx's four
    phases (pool, connect, write, read) bounded by ``send_timeout``, plus ``GATE_SLACK``."""
    return timedelta(seconds=4 * send_timeout()) + GATE_SLACK


def trusted_after(post_deadline_at: datetime, search_delay_seconds: float) -> datetime:
    """From when a lookup that finds nothing proves that the request sent before
    ``post_deadline_at`` stored nothing: the request can no longer arrive, and a record it
    stored has had the target's search delay to become findable."""
    return post_deadline_at + timedelta(seconds=search_delay_seconds)


class NotYetKnowable(Exception):
    """The export is in doubt and a lookup found nothing, but too early to trust that."""

    def __init__(self, trusted_at: datetime) -> None:
        super().__init__(f"not found, but a lookup is trusted only from {trusted_at.isoformat()}")
        self.trusted_at = trusted_at


@dataclass
class PostGate:
    """The ``SendGate`` the protocol hands a target client for one posting request.

    ``mark`` commits "posting started" (and the deadline) as a compare-and-set on the export's
    row, or uses the one the claim committed while it is at most ``GATE_SLACK`` old
    (``worker.export_job._post``); it is called once, right before the request leaves. A
    re-send inside the same exchange (the target refused the first copy) finds the gate open.
    """

    mark: Callable[[], bool]
    timeout: float
    opened: bool = False

    def open(self) -> bool:
        if not self.opened:
            self.opened = self.mark()
        return self.opened
