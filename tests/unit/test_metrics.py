"""Prometheus metrics derived from the export event log as it is committed (shared/metrics.py)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from producers.api.app import create_app
from shared.db.session import session_scope
from shared.domain import exports


def _value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_created_and_cancelled_exports_are_counted_once_committed(org, make_expense):
    created = _value("aic_exports_created_total", target="tripletex")
    cancelled = _value("aic_exports_finished_total", target="tripletex", outcome="cancelled")
    with session_scope() as session:
        export = exports.create_export(session, org.id, make_expense(), "tripletex", actor="t")
    with session_scope() as session:
        exports.cancel_export(session, org.id, export.id, actor="t")
    assert _value("aic_exports_created_total", target="tripletex") == created + 1
    assert _value("aic_exports_finished_total", target="tripletex",
                  outcome="cancelled") == cancelled + 1


def test_a_rolled_back_transaction_counts_nothing(org, make_expense):
    created = _value("aic_exports_created_total", target="tripletex")
    try:
        with session_scope() as session:
            exports.create_export(session, org.id, make_expense(), "tripletex", actor="t")
            raise RuntimeError("the request failed after creating the export")
    except RuntimeError:
        pass
    assert _value("aic_exports_created_total", target="tripletex") == created


def test_the_api_serves_metrics_with_the_queue_depths(org):
    with TestClient(create_app()) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'aic_queue_depth{queue="exports"}' in text and "aic_broker_up 1.0" in text
    assert "aic_exports_created_total" in text


def test_rate_limiter_waits_are_observed_per_system():
    import uuid

    from shared.integrations.rate_limit import RateLimiter, RateLimitPolicy

    before = _value("aic_rate_limit_wait_seconds_count", system="metricstest")
    limiter = RateLimiter(f"metrics-{uuid.uuid4().hex}", RateLimitPolicy(20.0, 1, 0),
                          system="metricstest")
    for _ in range(3):
        with limiter.acquire():
            pass
    assert _value("aic_rate_limit_wait_seconds_count", system="metricstest") == before + 3
    # One request per 50 ms after the first: the waits were measured, not assumed.
    assert _value("aic_rate_limit_wait_seconds_sum", system="metricstest") > 0.05


def test_the_grafana_dashboard_uses_only_metrics_that_exist():
    import json
    import re
    from pathlib import Path

    from shared.metrics import register_queue_depths

    register_queue_depths()
    dashboard = json.loads((Path(__file__).parents[2] / "deploy/grafana-dashboard.json")
                           .read_text())
    used = {re.sub(r"_(bucket|count|sum)$", "", name)
            for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"aic_[a-z_]+", target["expr"])}
    known = {metric.name for metric in REGISTRY.collect()}
    # prometheus_client names a counter family without its _total suffix.
    known |= {f"{name}_total" for name in known}
    assert used and used <= known, used - known
