"""``worker.tasks.retried_as``: the one path from a step's outcome to Celery's retry."""

from types import SimpleNamespace

import pytest
from sqlalchemy.exc import OperationalError

from shared.config import get_settings
from shared.integrations.errors import PermanentError, RateLimitedError
from worker.retry_policy import TaskKind
from worker.tasks import WorkEndedBadly, retried_as


class _Retry(Exception):
    def __init__(self, countdown, exc=None):
        super().__init__(countdown)
        self.countdown = countdown
        self.exc = exc


class _Task:
    """Stands in for a bound Celery task: ``retry`` returns the exception the task raises."""

    def __init__(self, retries: int) -> None:
        self.request = SimpleNamespace(retries=retries)

    def retry(self, *, countdown, exc=None):
        return _Retry(countdown, exc)


def _outcome(kind, retry_in=None, error=None):
    return SimpleNamespace(kind=kind, detail="why", retry_in=retry_in, error=error)


def _task(kind: TaskKind, step):
    return retried_as(kind)(lambda task, work_id: step())


def test_a_finished_step_ends_the_task():
    assert _task(TaskKind.INGEST, lambda: _outcome("done"))(_Task(0), "id") == "done: why"


@pytest.mark.parametrize("kind", list(TaskKind))
def test_a_wait_the_step_decided_is_kept_whatever_the_budget(kind):
    last = get_settings().max_attempts - 1
    with pytest.raises(_Retry) as retried:
        _task(kind, lambda: _outcome("retry", retry_in=7.5))(_Task(last), "id")
    assert retried.value.countdown == 7.5


def test_an_ingest_gives_up_for_now_once_its_attempts_are_used_up():
    run = _task(TaskKind.INGEST, lambda: _outcome("retry"))
    with pytest.raises(_Retry):
        run(_Task(0), "id")
    with pytest.raises(WorkEndedBadly) as gave_up:
        run(_Task(get_settings().max_attempts - 1), "id")
    assert str(gave_up.value).startswith("gave up for now") and "poller" in str(gave_up.value)


def test_a_failed_export_ends_its_task_as_a_failure_flower_can_show():
    """Flower shows the task's state: a failed export must not read SUCCESS there."""
    with pytest.raises(WorkEndedBadly, match="failed: why"):
        _task(TaskKind.EXPORT, lambda: _outcome("failed"))(_Task(0), "id")
    assert _task(TaskKind.EXPORT, lambda: _outcome("success"))(_Task(0), "id") == "success: why"


def test_every_task_that_can_end_badly_declares_it_expected():
    from worker import tasks

    for task in (tasks.export_to_target, tasks.process_source_export, tasks.report_to_source):
        assert WorkEndedBadly in task.throws, task.name


def test_a_report_never_gives_up():
    with pytest.raises(_Retry):
        _task(TaskKind.REPORT, lambda: _outcome("retry"))(_Task(1000), "id")


@pytest.mark.parametrize("kind", [TaskKind.INGEST, TaskKind.REPORT])
def test_a_rate_limited_step_comes_back_no_sooner_than_the_source_said(kind):
    wait = min(get_settings().retry_max_seconds, 2.5)
    limited = RateLimitedError("429", system="source", retry_after=wait)
    with pytest.raises(_Retry) as retried:
        _task(kind, lambda: _outcome("retry", error=limited))(_Task(0), "id")
    assert retried.value.countdown >= wait


def test_a_step_that_failed_for_good_gives_up_at_once():
    refused = PermanentError("400", system="source")
    with pytest.raises(WorkEndedBadly, match="^gave up"):
        _task(TaskKind.REPORT, lambda: _outcome("retry", error=refused))(_Task(0), "id")


def _database_down():
    raise OperationalError("SELECT 1", {}, Exception("connection refused"))


@pytest.mark.parametrize("kind", [TaskKind.EXPORT, TaskKind.INGEST])
def test_a_database_outage_retries_after_the_lease(kind):
    with pytest.raises(_Retry) as retried:
        _task(kind, _database_down)(_Task(get_settings().max_attempts + 3), "id")
    assert retried.value.countdown == get_settings().export_lease_seconds
    assert isinstance(retried.value.exc, OperationalError)


def test_a_database_outage_during_a_report_backs_off():
    with pytest.raises(_Retry) as retried:
        _task(TaskKind.REPORT, _database_down)(_Task(0), "id")
    assert 0 < retried.value.countdown <= get_settings().retry_base_seconds
