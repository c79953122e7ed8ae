"""One long-lived client per connection, shared by a process's worker threads.

A client caches its access/session token and lookups, so building one per task would throw those
away. The cache entry is rebuilt when the connection row changes (``updated_at``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Generic, Protocol, TypeVar


class _Closable(Protocol):
    def close(self) -> None: ...


ClientT = TypeVar("ClientT", bound=_Closable)


class ClientCache(Generic[ClientT]):
    def __init__(self, build: Callable[[object], ClientT]) -> None:
        self._build = build
        self._clients: dict[str, tuple[datetime, ClientT]] = {}
        self._lock = threading.Lock()

    def get(self, connection) -> ClientT:
        with self._lock:
            cached = self._clients.get(connection.id)
            if cached is not None and cached[0] == connection.updated_at:
                return cached[1]
            if cached is not None:
                cached[1].close()
            client = self._build(connection)
            self._clients[connection.id] = (connection.updated_at, client)
            return client
