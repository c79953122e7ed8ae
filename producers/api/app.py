"""The FastAPI application: ``uvicorn producers.api.app:app``."""

from __future__ import annotations

import gc
import re
import uuid

import redis
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from sqlalchemy import text
from swagger_ui_bundle import swagger_ui_path

from producers.api import (
    routes_admin,
    routes_expenses,
    routes_exports,
    routes_sources,
    routes_status,
)
from producers.webhooks import receiver as webhook_receiver
from producers.api.errors import install_error_handlers
from producers.api.limits import BodySizeLimit
from shared import metrics
from shared.config import get_settings, require_safe_settings
from shared.db.session import get_engine
from shared.logs import bind_log_context, configure_logging, reset_log_context

DESCRIPTION = """
Moves approved expenses into accounting systems, exactly once.

Authenticate with `Authorization: Bearer <API key>` (an administrator creates keys with
`aic org create`, `aic apikey create` or the admin endpoints). Errors are JSON:
`{"error": {"code", "message"}}`.

Every API key has scopes, and each operation needs one of them:

- `exports`: create, list, read, retry and cancel exports and batches, ingest and read expenses, read
  source exports. A key made without naming scopes has only this one.
- `callbacks`: the status callback `PUT /api/v1/accounting-exports/{id}`. It can mark an export
  `success` without anything being booked, so give it only to the system that books.

A key without the scope an operation needs gets `403` with the code `missing_scope` and a message
that names the scope. Keys that existed before scopes were introduced have both.
"""


DOCS_ASSETS = "/docs-assets"
REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")


class Health(BaseModel):
    status: str
    checks: dict[str, str]


def create_app() -> FastAPI:
    # First, before a route exists: `uvicorn producers.api.app:app` then exits with the message
    # instead of serving the admin API behind a token anyone can read in this repository.
    require_safe_settings("the API")
    configure_logging()
    # /docs is served from the swagger-ui-bundle package, not a CDN: it works offline and
    # behind egress filters (the default page is blank without internet).
    app = FastAPI(title="Accounting Integration Client", version="0.1.0", description=DESCRIPTION,
                  docs_url=None, redoc_url=None)
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} - API docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True})

    install_error_handlers(app)

    # Added before BodySizeLimit, so inside it (a 413 carries no request id, as before).
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(BodySizeLimit, max_bytes=get_settings().max_request_bytes)
    # The webhooks first: routes are matched in order, and sources deliver many more requests
    # than operators make (matching past every API route cost a delivery ~0.25 ms of CPU).
    app.include_router(webhook_receiver.router)
    app.include_router(routes_exports.router)
    app.include_router(routes_expenses.router)
    app.include_router(routes_sources.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_status.router)

    metrics.register_queue_depths()

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        # No key: it holds counts, no organization ids or secrets; keep it on the internal
        # network like Flower (README, "Metrics").
        return Response(metrics.latest(), media_type=metrics.CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["health"], summary="Database and broker reachability",
             response_model=Health,
             responses={503: {"model": Health, "description": "A dependency is unreachable"}})
    def healthz() -> JSONResponse:
        checks = {"database": _check_database(), "broker": _check_broker()}
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse(status_code=200 if healthy else 503,
                            content={"status": "ok" if healthy else "degraded", "checks": checks})

    return app


class RequestIdMiddleware:
    """Every log line of the request, and of the tasks it queues, carries this id; the caller
    gets it back to quote (its own X-Request-ID is kept when it is a sane token).

    Pure ASGI, not ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs the rest of
    the application in a task of its own with memory streams between them, which cost the
    webhook receiver about a millisecond of CPU per request (issue 12, target 6).
    """

    _HEADER = REQUEST_ID_HEADER.lower().encode()

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((value for name, value in scope["headers"] if name == self._HEADER), b"")
        given = given.decode("latin-1")
        rid = given if _SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        header = (self._HEADER, rid.encode())

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*(h for h in message.get("headers", ())
                                        if h[0].lower() != self._HEADER), header]
            await send(message)

        token = bind_log_context(request_id=rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            reset_log_context(token)


def _check_database() -> str:
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:  # reported, not raised: this is the health endpoint's job
        return f"unavailable: {type(exc).__name__}"


def _check_broker() -> str:
    try:
        client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=2,
                                      socket_connect_timeout=2)
        client.ping()
        client.close()
        return "ok"
    except Exception as exc:  # reported, not raised
        return f"unavailable: {type(exc).__name__}"


def _keep_the_startup_heap_out_of_gc() -> None:
    """The objects made by importing and building the app (SQLAlchemy, Celery, kombu, pydantic
    models of every integration: ~140,000) live as long as the process; Python's full
    garbage collection walked them all, a pause of ~100 ms (more on a busy machine) every so
    often that every request in flight waited for: the webhook receiver's p99 (issue 12,
    target 6). ``gc.freeze`` moves them out of the collector's generations; what requests
    create is collected as before."""
    gc.collect()
    gc.freeze()


app = create_app()
_keep_the_startup_heap_out_of_gc()
