"""A target system in memory, scriptable answer by answer, for driving ``run_export`` directly.

It keeps a ledger of the vouchers it stored, so a test asserts what the target holds, not what
our code believes. Every way a real target can answer a request that may create a record is a
scripted behaviour of the next POST:

- ``ok``                 store, answer 201
- ``store_then_502``     store, then a gateway answers 502 (the outcome is unknown to us)
- ``store_then_timeout`` store, then the answer never comes (read timeout)
- ``store_then_garbled`` store, answer 200 with a body we cannot read
- ``502``                refuse nothing, store nothing, answer 502 (also "unknown" to us)
- ``timeout``            store nothing, no answer
- ``422``                refuse with a validation error (proves nothing was stored)
- ``429``                rate limited by the target (a 4xx: nothing stored)
- ``limiter``            our own rate limiter refuses before anything leaves
- ``connect_error``      the connection cannot be opened (nothing leaves)

A stored voucher becomes visible to ``find_voucher`` after ``visibility_delay`` seconds (a target
whose search lags behind its writes). ``during_post`` runs inside the POST, after the gate opened
and before the target stores: a test does there what a concurrent actor would (a duplicate
delivery, a cancel, a callback, the lease running out). Lookups can be scripted too (``auth``,
``502``, ``ok``). The fake speaks both the prepared/gated interface the posting protocol uses and
the older preflight/post_voucher one, so the same test runs against old code.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.domain.vouchers import PostedVoucher, VoucherDraft
from shared.integrations.errors import (
    AuthError,
    PermanentError,
    RateLimitedError,
    SendWithdrawn,
    TransientError,
)
from shared.integrations.targets import PreparedVoucher

SYSTEM = "tripletex"


@dataclass
class StoredVoucher:
    posted: PostedVoucher
    external_number: str
    visible_at: float
    attachments: list[str] = field(default_factory=list)


class FakeTarget:
    system = SYSTEM
    limiter = None  # no rate budget: every export is admitted at once

    def __init__(self, *, visibility_delay: float = 0.0, search_delay_seconds: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.visibility_delay = visibility_delay
        self.search_delay_seconds = search_delay_seconds
        self.post_script: list[str] = []
        self.lookup_script: list[str] = []
        self.attach_script: list[str] = []
        self.during_post: Callable[[], None] | None = None
        # Where a worker "dies" next: "before_store" / "after_store" (inside the POST),
        # "lookup", "attach" (after the upload stored). Raises WorkerKilled there.
        self.kill_at: str | None = None
        self.stored: list[StoredVoucher] = []
        self.posts_sent = 0
        self._ids = itertools.count(1001)
        self._lock = threading.Lock()

    # --- what the test asserts on ---------------------------------------------------------------

    def vouchers_for(self, external_number: str) -> list[StoredVoucher]:
        return [v for v in self.stored if v.external_number == external_number]

    # --- the target interface -----------------------------------------------------------------

    def preflight(self, draft: VoucherDraft) -> None:
        return None

    def prepare_voucher(self, draft: VoucherDraft) -> PreparedVoucher:
        return PreparedVoucher(draft=draft, payload=None)

    def post_voucher(self, draft: VoucherDraft, gate=None) -> PostedVoucher:
        return self.send_voucher(self.prepare_voucher(draft), gate)

    def send_voucher(self, prepared: PreparedVoucher, gate=None) -> PostedVoucher:
        behaviour = self.post_script.pop(0) if self.post_script else "ok"
        if behaviour == "limiter":
            raise RateLimitedError("rate limit of the connection: wait 0.2s", retry_after=0.2,
                                   system=SYSTEM, code="rate_limit_wait", sent=False)
        if gate is not None and not gate.open():
            raise SendWithdrawn()
        if behaviour == "connect_error":
            raise TransientError("could not reach the target", system=SYSTEM,
                                 code="connection_error", sent=False)
        self.posts_sent += 1
        if self.during_post is not None:
            action, self.during_post = self.during_post, None
            action()
        self._maybe_killed("before_store")
        if behaviour == "422":
            raise PermanentError("the target rejected the voucher: account 9999 does not exist",
                                 system=SYSTEM, code="validation_failed", status_code=422)
        if behaviour == "429":
            raise RateLimitedError("rate limited", retry_after=0.1, system=SYSTEM,
                                   code="rate_limited", status_code=429)
        if behaviour == "502":
            raise TransientError("bad gateway", system=SYSTEM, code="server_error", status_code=502)
        if behaviour == "timeout":
            raise TransientError("no answer in time", system=SYSTEM, code="timeout")
        posted = self._store(prepared.draft)
        self._maybe_killed("after_store")
        if behaviour == "ok":
            return posted
        if behaviour == "store_then_502":
            raise TransientError("bad gateway", system=SYSTEM, code="server_error", status_code=502)
        if behaviour == "store_then_timeout":
            raise TransientError("no answer in time", system=SYSTEM, code="timeout")
        if behaviour == "store_then_garbled":
            raise TransientError("unreadable body", system=SYSTEM, code="unexpected_response",
                                 status_code=200)
        raise AssertionError(f"unknown post behaviour {behaviour!r}")

    def find_voucher(self, external_number: str) -> PostedVoucher | None:
        behaviour = self.lookup_script.pop(0) if self.lookup_script else "ok"
        self._maybe_killed("lookup")
        if behaviour == "auth":
            raise AuthError("the target refused the session token", system=SYSTEM,
                            code="session_refused", status_code=401)
        if behaviour == "502":
            raise TransientError("bad gateway", system=SYSTEM, code="server_error", status_code=502)
        now = self.clock()
        found = [v for v in self.vouchers_for(external_number) if v.visible_at <= now]
        return found[0].posted if found else None

    def has_attachment(self, voucher_id: str) -> bool:
        return any(v.attachments for v in self.stored if v.posted.id == voucher_id)

    def attach_receipt(self, voucher_id: str, filename: str, content: bytes,
                       content_type: str) -> None:
        behaviour = self.attach_script.pop(0) if self.attach_script else "ok"
        voucher = next(v for v in self.stored if v.posted.id == voucher_id)
        voucher.attachments.append(filename)
        self._maybe_killed("attach")
        if behaviour == "store_then_timeout":
            raise TransientError("no answer in time", system=SYSTEM, code="timeout")

    def close(self) -> None:
        return None

    def _store(self, draft: VoucherDraft) -> PostedVoucher:
        with self._lock:
            voucher_id = str(next(self._ids))
            posted = PostedVoucher(id=voucher_id, number=voucher_id[-2:], reference=f"TTX-{voucher_id}",
                                   booked_on=draft.date)
            self.stored.append(StoredVoucher(posted, draft.external_number,
                                             self.clock() + self.visibility_delay))
            return posted

    def _maybe_killed(self, where: str) -> None:
        if self.kill_at == where:
            self.kill_at = None
            raise WorkerKilled(where)


class WorkerKilled(BaseException):
    """A worker process dying at this point: nothing of ours catches it, the transaction in
    flight rolls back, the lease stays held until it runs out (like SIGKILL)."""
