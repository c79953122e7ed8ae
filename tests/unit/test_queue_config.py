"""Celery task events: off unless asked for (they cost worker CPU per task; Flower turns the
workers' events on itself while it runs)."""

from __future__ import annotations

import pytest

from shared.config import get_settings
from shared.queue import create_celery_app


@pytest.fixture
def fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_task_events_are_off_by_default(fresh_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIC_CELERY_TASK_EVENTS", raising=False)
    conf = create_celery_app().conf
    assert conf.worker_send_task_events is False
    assert conf.task_send_sent_event is False


def test_task_events_on_when_configured(fresh_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIC_CELERY_TASK_EVENTS", "true")
    conf = create_celery_app().conf
    assert conf.worker_send_task_events is True
    assert conf.task_send_sent_event is True

