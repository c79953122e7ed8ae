"""Prometheus metrics: what operators graph and alert on (``deploy/grafana-dashboard.json``).

The API serves them at ``/metrics``; a worker at ``http://<host>:AIC_WORKER_METRICS_PORT/metrics``
(its own small HTTP server; the threads pool is one process, so one port per worker process).

Export metrics are derived from the export's event log as it is committed: every step of every
export already writes one event row (``shared.domain.state_machine``), so counting those rows
after the commit counts exactly what happened, in whichever process did it, and no engine code
carries metric calls of its own. A rolled-back transaction counts nothing.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from shared.db.models import AccountingExport, ExportEvent, SourceUnitItem
from shared.db.session import Transaction, on_commit, on_rollback

__all__ = ["CONTENT_TYPE_LATEST", "latest", "register_queue_depths",
           "start_worker_metrics_server"]

EXPORT_EVENTS = Counter(
    "aic_export_events_total", "Steps recorded in exports' event logs, by kind and target "
    "(status changes as status_changed:<new status>).", ["kind", "target"])
EXPORTS_CREATED = Counter("aic_exports_created_total", "Exports created.", ["target"])
EXPORTS_FINISHED = Counter("aic_exports_finished_total",
                           "Exports that ended, by outcome (success, failed, cancelled).",
                           ["target", "outcome"])
EXPORT_ATTEMPTS = Counter("aic_export_attempts_total", "Attempts a worker started.", ["target"])
EXPORT_RETRIES = Counter(
    "aic_export_retries_total", "Retries scheduled, by reason (the error code) and whether the "
    "attempt counted (a 429 or a limiter refusal does not).", ["target", "reason", "counted"])
POSTING_SECONDS = Histogram(
    "aic_posting_seconds", "From marking an export as posting to recording the target's "
    "voucher, in one worker.", ["target"],
    buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120))
RATE_LIMIT_WAIT_SECONDS = Histogram(
    "aic_rate_limit_wait_seconds", "Time a request waited for the shared rate limiter.",
    ["system"], buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30))
SOURCE_ITEMS_RECEIVED = Counter(
    "aic_source_items_received_total", "Items of source units recorded (a voucher of a package, "
    "an entry, an expense), by whether they can be booked or were refused.", ["outcome"])
SOURCE_ITEMS_REPORTED = Counter(
    "aic_source_items_reported_total", "Outcomes a source accepted from us, by status.",
    ["status"])
RATE_LIMIT_DEFERRALS = Counter(
    "aic_rate_limit_deferrals_total", "Exports a worker did not claim because their "
    "connection's rate budget was taken further ahead than AIC_RATE_LIMIT_ADMIT_WAIT_SECONDS: "
    "re-scheduled for their turn, no attempt spent.", ["target"])
WEBHOOK_DELIVERIES = Counter(
    "aic_webhook_deliveries_total", "Webhook deliveries stored, by whether they repeated one "
    "already known.", ["result"])

_PENDING_KEY = "aic_metrics_after_commit"
# Posting start times by export id, for the posting latency (bounded: an export whose worker
# died never ends here).
_posting_started: OrderedDict[str, float] = OrderedDict()
_posting_lock = threading.Lock()
_POSTING_TRACKED = 10_000


def _target_of(session: Session, export_id: str) -> str:
    # The export is nearly always in the session (its event was written beside it); never query.
    for obj in (*session.new, *session.identity_map.values()):
        if isinstance(obj, AccountingExport) and obj.id == export_id:
            return obj.target_system
    return "unknown"


@event.listens_for(Session, "before_flush")
def _collect(session: Session, _flush_context: Any, _instances: Any) -> None:
    pending = session.info.setdefault(_PENDING_KEY, [])
    for obj in session.new:
        if isinstance(obj, ExportEvent):
            pending.append(("export", obj.kind, obj.to_status, obj.export_id,
                            _target_of(session, obj.export_id), obj.data or {}))
        elif isinstance(obj, SourceUnitItem):
            pending.append(("item_received", "refused" if obj.outcome_error else "bookable"))
    for obj in session.dirty:
        if isinstance(obj, SourceUnitItem) and obj.reported_status is not None:
            if inspect(obj).attrs.reported_status.history.has_changes():
                pending.append(("item_reported", obj.reported_status))


def count_rate_limit_deferral(session: Transaction, target: str) -> None:
    """An export handed back to the queue by the rate-limit admission (``worker.export_job``):
    it writes no event row, so it is counted here, after the commit."""
    session.info.setdefault(_PENDING_KEY, []).append(("deferred", target))


def count_webhook_delivery(duplicate: bool) -> None:
    """A webhook delivery the receiver committed (its row is a Core INSERT on a connection
    without an ORM session: no flush to collect it from)."""
    WEBHOOK_DELIVERIES.labels("duplicate" if duplicate else "new").inc()


def count_export_event(session: Transaction, kind: str, to_status: str | None, export_id: str,
                       target: str, data: dict | None) -> None:
    """An event row written without an ORM object (``state_machine.insert_event``): counted
    after the commit like the others."""
    session.info.setdefault(_PENDING_KEY, []).append(
        ("export", kind, to_status, export_id, target, data or {}))


@on_commit
def _count(info: dict[str, Any]) -> None:
    for item in info.pop(_PENDING_KEY, []):
        if item[0] == "deferred":
            RATE_LIMIT_DEFERRALS.labels(item[1]).inc()
            continue
        if item[0] == "item_received":
            SOURCE_ITEMS_RECEIVED.labels(item[1]).inc()
            continue
        if item[0] == "item_reported":
            SOURCE_ITEMS_REPORTED.labels(item[1]).inc()
            continue
        _, kind, to_status, export_id, target, data = item
        EXPORT_EVENTS.labels(f"{kind}:{to_status}" if kind == "status_changed" else kind,
                             target).inc()
        if kind == "created":
            EXPORTS_CREATED.labels(target).inc()
        elif kind == "started":
            EXPORT_ATTEMPTS.labels(target).inc()
        elif kind == "retry_scheduled":
            EXPORT_RETRIES.labels(target, str(data.get("code") or "unknown"),
                                  str(bool(data.get("counted", True))).lower()).inc()
        elif kind == "posting_started":
            with _posting_lock:
                _posting_started[export_id] = time.monotonic()
                while len(_posting_started) > _POSTING_TRACKED:
                    _posting_started.popitem(last=False)
        elif kind in ("posted_to_target", "found_existing_voucher"):
            with _posting_lock:
                started = _posting_started.pop(export_id, None)
            if started is not None and kind == "posted_to_target":
                POSTING_SECONDS.labels(target).observe(time.monotonic() - started)
        elif kind == "status_changed" and to_status in ("success", "failed", "cancelled"):
            EXPORTS_FINISHED.labels(target, to_status).inc()


@on_rollback
def _drop(info: dict[str, Any]) -> None:
    info.pop(_PENDING_KEY, None)


class _QueueDepthCollector:
    """Messages waiting per queue, read from the broker when scraped (cached a few seconds, so
    a scrape storm does not become a Redis storm)."""

    TTL = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: tuple[float, dict] | None = None

    def collect(self):
        from shared.queue import broker_overview

        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > self.TTL:
                self._cached = (time.monotonic(), broker_overview(timeout=1.0))
            overview = self._cached[1]
        depth = GaugeMetricFamily("aic_queue_depth", "Messages ready per queue.",
                                  labels=["queue"])
        for queue, count in overview["queues"].items():
            depth.add_metric([queue], count)
        yield depth
        held = GaugeMetricFamily("aic_queue_unacked", "Messages held by workers (running).")
        held.add_metric([], overview["unacked"] or 0)
        yield held
        delayed = GaugeMetricFamily("aic_queue_delayed", "Messages due later (retry countdowns, "
                                    "rate-limit turns) waiting in Redis for their time.")
        delayed.add_metric([], overview["delayed"] or 0)
        yield delayed
        up = GaugeMetricFamily("aic_broker_up", "1 when the broker answered.")
        up.add_metric([], 1 if overview["reachable"] else 0)
        yield up


_queue_collector_lock = threading.Lock()
_queue_collector: _QueueDepthCollector | None = None


def register_queue_depths() -> None:
    """Also expose the broker's queue depths (the API does; every worker doing it too would
    report the same queues once per worker)."""
    global _queue_collector
    with _queue_collector_lock:
        if _queue_collector is None:
            _queue_collector = _QueueDepthCollector()
            REGISTRY.register(_queue_collector)


def latest() -> bytes:
    return generate_latest(REGISTRY)


def start_worker_metrics_server(port: int) -> None:
    """Serve this process's metrics on ``port`` (all interfaces: Prometheus scrapes it)."""
    start_http_server(port)
