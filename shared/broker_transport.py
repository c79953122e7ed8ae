"""How our task messages travel through Redis: kombu's Redis transport with two changes.

1. **Messages due later wait in Redis, not in a worker's memory.** Celery delivers a message
   with an ETA (a retry's countdown, a rate-limit turn: ``worker.tasks.retried_as``) to a worker
   at once, and the worker holds it unacknowledged until it is due. A worker that dies (SIGKILL,
   OOM, a host lost) takes those messages with it until Redis's visibility timeout (an hour)
   or the stuck-export sweeper (``AIC_STUCK_AFTER_SECONDS``) brings them back; with the
   rate-limit admission on, a worker holds one per export waiting for its tenant's budget:
   hundreds. Here a message due later is put in one sorted set (``DELAYED_KEY``, scored by its
   ETA) instead of on its queue, and every worker moves what is due back onto the head of its
   queue (``DelayedDelivery``, one atomic script every ``AIC_DELAYED_DELIVERY_INTERVAL_SECONDS``).
   The message is the same bytes; its ETA has passed when a worker receives it, so Celery runs
   it at once. Redis's append-only file keeps the set across a restart like the queues.

2. **A worker survives losing Redis while it holds unacknowledged messages.** When the
   connection breaks, Celery's consumer (``on_connection_error_after_connected``) first
   ``collect()``s the connection, which detaches the transport (``transport.client = None``),
   then closes it. Closing the channel restores the messages it holds, and for that kombu's
   channel builds a new Redis client from ``transport.client``: ``AttributeError: 'NoneType'
   object has no attribute 'hostname'``. That is no connection error, so ``ignore_errors`` lets
   it through and Celery exits (kombu 5.x; kombu #582 and #970 show the same path). Here the
   channel raises a connection error instead, which is what the restore would meet anyway
   (Redis is gone at that moment): Celery ignores it and reconnects; the messages stay in
   Redis's unacked hash for kombu's ``restore_visible``, and the sweeper covers the rest.

Selected by ``broker_transport`` in ``shared.queue.create_celery_app`` for ``redis://`` and
``rediss://`` broker URLs (parsed exactly as kombu's own transport parses them). For ``rediss://``
the app also sets ``broker_use_ssl`` (``shared.config.broker_tls_options``): kombu applies its TLS
default (which checks no certificate) only to a transport named "rediss".
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from datetime import datetime

from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps as json_dumps
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.logs import get_logger

log = get_logger(__name__)

# The ``transport`` value Celery's ``broker_transport`` setting takes for this class.
TRANSPORT_PATH = "shared.broker_transport:Transport"
# Messages due later: member = "<queue's list key>\n<message as kombu puts it on the list>",
# score = when it is due (Unix seconds). One set for every queue: one script moves them all.
DELAYED_KEY = "aic:delayed"
# A message due within this long goes straight on its queue (a worker holds it that briefly).
_DELAY_AT_LEAST_SECONDS = 0.05

# Due members, latest first pushed, each onto the head of its list (kombu's consumer pops from
# the right): taken at their time, not behind the queue's backlog (as a worker would have run
# them), the earliest of a batch first.
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for i = #due, 1, -1 do
  local member = due[i]
  local cut = string.find(member, '\\n', 1, true)
  redis.call('RPUSH', string.sub(member, 1, cut - 1), string.sub(member, cut + 1))
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


# Members whose list key is one of ARGV, removed; returns how many. A purge is rare and an
# operator's: one pass over the set is fine.
_PURGE_DELAYED = """
local purged = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = string.sub(member, 1, string.find(member, '\\n', 1, true) - 1)
  for i = 1, #ARGV do
    if key == ARGV[i] then
      redis.call('ZREM', KEYS[1], member)
      purged = purged + 1
      break
    end
  end
end
return purged
"""


def due_at(headers: dict | None) -> float | None:
    """When a Celery message is due (its ``eta`` header, protocol 2), if later than now."""
    eta = (headers or {}).get("eta")
    if not eta:
        return None
    try:
        due = datetime.fromisoformat(eta).timestamp()
    except (TypeError, ValueError):
        return None  # not ours to judge: it goes on its queue and Celery reads it as always
    return due if due - time.time() > _DELAY_AT_LEAST_SECONDS else None


def put_message(client, list_key: str, message: dict) -> None:
    """Put a kombu message on its queue's list, or in the delayed set when it is due later
    (``RedisListProducer``; the transport's channel leaves the first case to kombu)."""
    due = due_at(message.get("headers"))
    if due is None:
        client.lpush(list_key, json_dumps(message))
    else:
        delay_message(client, list_key, message, due)


def delay_message(client, list_key: str, message: dict, due: float) -> None:
    """The one way a message due later enters Redis: the delayed set, scored by ``due``."""
    client.zadd(DELAYED_KEY, {f"{list_key}\n{json_dumps(message)}": due})


class DelayedDelivery:
    """Moves the delayed messages that are due onto their queues. Every worker runs one (a
    daemon thread from ``worker_ready`` to ``worker_shutdown``); the move is one atomic script,
    so any number of them can run, and messages wait for whichever worker is alive."""

    def __init__(self, url: str, interval: float, batch: int = 500) -> None:
        import redis as redis_lib

        self.interval = interval
        self.batch = batch
        self._client = redis_lib.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._move = self._client.register_script(_MOVE_DUE)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def move_due(self, now: float | None = None) -> int:
        """Moves what is due by ``now`` (default: this machine's clock, like Celery's ETA check);
        returns how many messages it moved."""
        moved = 0
        while True:
            count = int(self._move(keys=[DELAYED_KEY],
                                   args=[repr(time.time() if now is None else now), self.batch]))
            moved += count
            if count < self.batch:
                return moved

    def start(self) -> "DelayedDelivery":
        self._thread = threading.Thread(target=self._run, name="aic-delayed-delivery",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        failing = False
        while not self._stopped.wait(self.interval):
            try:
                self.move_due()
                failing = False
            except Exception as error:  # noqa: BLE001 - Redis away: the messages wait in it
                if not failing:  # once per outage, not every interval
                    log.warning("delayed messages not moved; retrying", error=str(error))
                failing = True


class Channel(kombu_redis.Channel):
    # The client of ``conn_or_acquire`` (see there), with the pool it was built on.
    _kept_client = None

    def conn_or_acquire(self, client=None):
        """kombu's channel builds a new Redis client on its pool for every call without a
        client: twice per task message (recording it as unacknowledged when it arrives, and the
        acknowledgement), ~0.1 ms of CPU each, about as much as the commands' own work (issue
        12, the worker's CPU per export). A Redis client is safe to share between threads (each
        command takes a connection from the pool), so the channel keeps one, rebuilt when the
        channel's pool is replaced (kombu drops its pools when the connection is lost)."""
        if client:
            return nullcontext(client)
        pool = self.pool  # raises as ``_connparams`` does once the connection was collected
        kept = self._kept_client
        if kept is None or kept.connection_pool is not pool:
            kept = self._kept_client = self._create_client()
        return nullcontext(kept)

    def _put(self, queue, message, **kwargs):
        due = due_at(message.get("headers"))
        if due is None:
            # Now: kombu's own path (priorities, queue expiry, publish batches).
            return super()._put(queue, message, **kwargs)
        # Due later: one ZADD of its own, whatever publish batch it came in.
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        with self.conn_or_acquire() as client:
            delay_message(client, key, message, due)

    def _purge(self, queue):
        """``celery purge`` (``queue.purge``) empties the queue's messages due later too: they
        wait in the delayed set, where kombu's purge of the list does not look, and would come
        back onto the queue an operator has just emptied."""
        purged = super()._purge(queue)
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps]
        with self.conn_or_acquire() as client:
            purged += int(client.eval(_PURGE_DELAYED, 1, DELAYED_KEY, *keys))
        return purged

    def _connparams(self, asynchronous: bool = False) -> dict:
        if self.connection.client is None:
            raise RedisConnectionError(
                "the broker connection was already closed; unacknowledged messages stay in "
                "Redis until its visibility timeout")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
