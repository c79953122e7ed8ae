"""One long-lived client per connection, shared by a process's worker threads.

A client caches its access/session token and lookups, so building one per task would throw those
away. The cache entry is rebuilt when the connection row changes (``updated_at``).

A rebuilt entry's old client may still be in use: another thread got it a moment earlier and is
in the middle of a request. Closing it then would break that request (an httpx client closed
under a thread raises "Cannot send a request, as the client has been closed", mid-post). So every
``get`` counts the calling thread as a user of the client until that thread calls
``release_clients()`` (the worker does after every task: ``worker.celery_app``); a replaced client
is retired, and closed once its last user released it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Generic, Protocol, TypeVar


class _Closable(Protocol):
    def close(self) -> None: ...


ClientT = TypeVar("ClientT", bound=_Closable)

# Every cache of the process, so that one call releases a thread's clients of all of them.
_caches: weakref.WeakSet[ClientCache] = weakref.WeakSet()


class ClientCache(Generic[ClientT]):
    def __init__(self, build: Callable[[object], ClientT]) -> None:
        self._build = build
        self._current: dict[str, tuple[datetime, ClientT]] = {}
        # id(client) -> (the client, the threads using it); the current and the retired ones.
        self._users: dict[int, tuple[ClientT, set[int]]] = {}
        self._retired: set[int] = set()
        self._lock = threading.Lock()
        _caches.add(self)

    def get(self, connection) -> ClientT:
        """The connection's client, used by the calling thread until it calls ``release``."""
        thread = threading.get_ident()
        unused: list[ClientT] = []
        with self._lock:
            cached = self._current.get(connection.id)
            if cached is None or cached[0] != connection.updated_at:
                if cached is not None:
                    unused += self._retire(cached[1])
                client = self._build(connection)
                self._current[connection.id] = (connection.updated_at, client)
                self._users[id(client)] = (client, set())
            client = self._current[connection.id][1]
            self._users[id(client)][1].add(thread)
        _close(unused)
        return client

    def release(self) -> None:
        """The calling thread uses none of the clients it got any more; a retired client that
        no thread uses is closed now."""
        thread = threading.get_ident()
        unused: list[ClientT] = []
        with self._lock:
            for key, (client, users) in list(self._users.items()):
                users.discard(thread)
                if not users and key in self._retired:
                    self._retired.discard(key)
                    del self._users[key]
                    unused.append(client)
        _close(unused)

    def _retire(self, client: ClientT) -> list[ClientT]:
        """Called under the lock; returns the client if nobody uses it (close it after)."""
        key = id(client)
        if self._users.get(key, (client, set()))[1]:
            self._retired.add(key)
            return []
        self._users.pop(key, None)
        return [client]


def release_clients() -> None:
    """The calling thread's unit of work is over: release every client it got from any cache."""
    for cache in list(_caches):
        cache.release()


def _close(clients: list[_Closable]) -> None:
    # Outside the lock: closing may wait for a connection pool.
    for client in clients:
        client.close()
