"""The client cache never closes a client that another thread is using."""

import threading
from datetime import datetime, timezone
from types import SimpleNamespace

from shared.integrations.client_cache import ClientCache, release_clients

WAIT = 10  # seconds; only guards against a hang, never part of what is asserted


class _Client:
    def __init__(self, version: datetime) -> None:
        self.version = version
        self.closed = False

    def send(self) -> str:
        if self.closed:
            raise RuntimeError("Cannot send a request, as the client has been closed")
        return "sent"

    def close(self) -> None:
        self.closed = True


def _connection(version: int):
    return SimpleNamespace(id="conn_1", updated_at=datetime(2026, 1, version, tzinfo=timezone.utc))


def test_a_replaced_client_is_closed_only_after_the_thread_using_it_released_it():
    cache = ClientCache(lambda connection: _Client(connection.updated_at))
    got_old = threading.Event()
    connection_changed = threading.Event()
    sent: list[str] = []
    held: list[_Client] = []
    errors: list[Exception] = []

    def task_using_the_old_client():
        try:
            client = cache.get(_connection(1))
            held.append(client)
            got_old.set()
            connection_changed.wait(WAIT)  # mid-task: another thread rebuilt the entry
            sent.append(client.send())
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            release_clients()

    worker = threading.Thread(target=task_using_the_old_client)
    worker.start()
    assert got_old.wait(WAIT)
    old = held[0]

    new = cache.get(_connection(2))  # the connection was edited: a new client is built
    assert new is not old
    assert not old.closed, "the old client was closed while another thread was using it"
    connection_changed.set()
    worker.join(WAIT)

    assert not errors and sent == ["sent"]
    assert old.closed  # its last user released it
    assert not new.closed  # still the current client (this thread is its user)
    release_clients()
    assert not new.closed  # released by its users, but current: kept for the next task


def test_a_replaced_client_nobody_uses_is_closed_at_once():
    cache = ClientCache(lambda connection: _Client(connection.updated_at))
    old = cache.get(_connection(1))
    release_clients()
    new = cache.get(_connection(2))
    assert old.closed and not new.closed


def test_the_same_client_is_shared_while_the_connection_is_unchanged():
    cache = ClientCache(lambda connection: _Client(connection.updated_at))
    assert cache.get(_connection(1)) is cache.get(_connection(1))
