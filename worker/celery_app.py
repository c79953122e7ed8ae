"""The Celery app the worker, beat and Flower processes load (``-A worker.celery_app``).

Concurrency model: target APIs answer in hundreds of milliseconds and the work is I/O, so a worker
runs the *threads* pool (``--pool threads --concurrency 16``): many exports in flight per core,
one process, shared HTTP clients and token caches. Celery's prefork pool would hold one export
per process. See docs/ARCHITECTURE.md.
"""

from celery.signals import (
    after_setup_logger,
    beat_init,
    celeryd_init,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from shared.config import require_safe_settings
from shared.integrations.client_cache import release_clients
from shared.logs import install_redaction_on_existing_handlers, quiet_library_loggers
from shared.queue import celery_app

celery_app.conf.include = ["worker.tasks"]
# Import so the tasks register when this module is the -A target.
import worker.tasks  # noqa: E402,F401
# Counts every export step this process commits (shared/metrics.py).
import shared.metrics  # noqa: E402,F401


@celeryd_init.connect
def _refuse_development_secrets_in_worker(**_kwargs) -> None:
    # celeryd_init is the worker's first signal, sent before it connects to the broker or takes a
    # task. Not at import: Flower, `celery inspect` and --help load this module too.
    require_safe_settings("the Celery worker")


@worker_init.connect
def _load_systems(**_kwargs) -> None:
    # Import every registered system (its client, mapping, models) before the first task, not
    # inside the first export of each connection (issue 12: the imports showed in a benchmark's
    # window). A system that does not load stops the worker here, with its error.
    from shared.integrations import registry
    from shared.integrations.http import shared_ssl_context

    registry.targets()
    # Likewise the certificate store every client of this process shares.
    shared_ssl_context()


_delayed_delivery = None


@worker_ready.connect
def _start_delayed_delivery(**_kwargs) -> None:
    # Messages due later wait in Redis (shared/broker_transport.py); every worker moves the due
    # ones onto their queues, so they need no particular worker to be alive.
    global _delayed_delivery
    from shared.broker_transport import DelayedDelivery, TRANSPORT_PATH
    from shared.config import get_settings

    if celery_app.conf.broker_transport != TRANSPORT_PATH:
        return  # not a Redis broker: kombu's own transport, whose workers hold such messages
    settings = get_settings()
    _delayed_delivery = DelayedDelivery(
        settings.redis_url, settings.delayed_delivery_interval_seconds).start()


@worker_shutdown.connect
def _stop_delayed_delivery(**_kwargs) -> None:
    if _delayed_delivery is not None:
        _delayed_delivery.stop()


@worker_ready.connect
def _serve_metrics(**_kwargs) -> None:
    from shared.config import get_settings
    from shared.logs import get_logger
    from shared.metrics import start_worker_metrics_server

    port = get_settings().worker_metrics_port
    if port is None:
        return
    try:
        start_worker_metrics_server(port)
    except OSError as exc:
        # Metrics are for watching, not for working: a taken port must not stop the worker.
        get_logger(__name__).warning("worker metrics not served", port=port, error=str(exc),
                                     hint="set AIC_WORKER_METRICS_PORT to a free port")


@beat_init.connect
def _refuse_development_secrets_in_beat(**_kwargs) -> None:
    # Sent before beat's first tick: nothing has been scheduled yet.
    require_safe_settings("Celery beat")


@after_setup_logger.connect
def _redact_celery_logs(**_kwargs) -> None:
    install_redaction_on_existing_handlers()
    quiet_library_loggers()


# The ids every line of a task carries (shared/logs.py): the task, the export (or other unit of
# work) it runs for, and the API request that queued it.
_WORK_ID_FIELD = {"worker.tasks.export_to_target": "export_id"}


@task_prerun.connect
def _bind_task_log_context(task_id=None, task=None, args=None, **_kwargs) -> None:
    from shared.jobs import REQUEST_ID_HEADER
    from shared.logs import bind_log_context

    work_id = args[0] if args and isinstance(args[0], str) else None
    token = bind_log_context(
        task_id=task_id, request_id=getattr(task.request, REQUEST_ID_HEADER, None),
        **{_WORK_ID_FIELD.get(task.name, "work_id"): work_id})
    task.request.aic_log_token = token


@task_postrun.connect
def _reset_task_log_context(task=None, **_kwargs) -> None:
    from shared.logs import reset_log_context

    token = getattr(task.request, "aic_log_token", None)
    if token is not None:
        reset_log_context(token)
        task.request.aic_log_token = None


@worker_process_init.connect
def _fresh_connections(**_kwargs) -> None:
    # A forked child must not reuse the parent's database connections.
    from shared.db.session import reset_engines

    reset_engines()


@task_postrun.connect
def _release_clients(**_kwargs) -> None:
    # Sent in the thread that ran the task, after it ended (returned, retried or raised): the
    # clients it got are no longer in use by it, so a replaced one may be closed now.
    release_clients()


__all__ = ["celery_app"]
