"""The anchor of ``bench.webhook_receiver``: a bare FastAPI webhook doing the minimum durable work.

    uvicorn bench.bare_webhook:app   (AIC_BENCH_BARE_DATABASE_URL, AIC_REDIS_URL)

One ``INSERT ... ON CONFLICT DO NOTHING`` of the export id (a table of its own, created by the
benchmark) and, when the row is new, one ``LPUSH`` of the id after the commit, through a pooled
Redis client. No token lookup, no signature, no event row, no delivery log, no Celery message:
what any receiver of "announce each export once" must at least do. Same engine settings as ours
(``shared.db.session.get_engine``: SQLite WAL pragmas, or the PostgreSQL pool), a sync endpoint
(FastAPI runs it in the thread pool), the same uvicorn command line as ours.
"""

from __future__ import annotations

import os

import redis
from fastapi import FastAPI
from pydantic import BaseModel, Field
from sqlalchemy import text

from shared.db.session import get_engine

TABLE = os.environ.get("AIC_BENCH_BARE_TABLE", "bench_bare_webhooks")
QUEUE = os.environ.get("AIC_BENCH_BARE_QUEUE", "bench_bare_announced")

_engine = get_engine(os.environ["AIC_BENCH_BARE_DATABASE_URL"])
_redis = redis.Redis.from_url(os.environ["AIC_REDIS_URL"])
_insert = text(f"INSERT INTO {TABLE} (external_id) VALUES (:id) "
               "ON CONFLICT DO NOTHING RETURNING external_id")

app = FastAPI()


class Body(BaseModel):
    exportId: str = Field(min_length=1, max_length=100)  # noqa: N815 - the wire name


@app.post("/webhooks/bare/{token}")
def receive(token: str, body: Body) -> dict:
    with _engine.begin() as connection:
        new = connection.execute(_insert, {"id": body.exportId}).first() is not None
    if new:
        _redis.lpush(QUEUE, body.exportId)
    return {"received": True, "duplicate": not new}


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}
