"""The database's clock, the one every worker compares leases and deadlines against.

Workers run on several machines whose clocks may disagree by seconds; a lease that one worker
thinks has run out may still be running for its holder. So every time-based decision about an
export (claiming, lease renewal, "may a lookup be trusted yet", the sweeper) uses the database
server's time. One attempt measures the offset once (``AttemptClock.measure``) and applies it
for its few seconds of work, instead of a round trip per step. SQLite lives on this machine, so
its clock is ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import text

from shared.db.session import Transaction
from shared.db.types import utcnow


def database_now(session: Transaction) -> datetime:
    if session.get_bind().dialect.name == "postgresql":
        value = session.execute(text("SELECT clock_timestamp()")).scalar_one()
        return value.astimezone(timezone.utc)
    return utcnow()


@dataclass(frozen=True)
class AttemptClock:
    """This process's clock, corrected to the database's."""

    offset: timedelta = timedelta(0)

    @classmethod
    def measure(cls, session: Transaction) -> AttemptClock:
        before = utcnow()
        remote = database_now(session)
        after = utcnow()
        return cls(offset=remote - (before + (after - before) / 2))

    def now(self) -> datetime:
        return utcnow() + self.offset
