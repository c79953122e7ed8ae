"""``bench._uvicorn_tcp``: the socket uvicorn's supervisor binds for ``--workers N`` is marked
TCP, so asyncio turns on TCP_NODELAY for every connection a worker accepts from it (without it,
Nagle holds each answer's body for the client's delayed ACK, ~40 ms on Linux)."""

from __future__ import annotations

import asyncio
import socket

from uvicorn.config import Config

from bench._uvicorn_tcp import bind_tcp_socket


def test_a_connection_accepted_from_the_supervisors_socket_has_tcp_nodelay():
    listener = bind_tcp_socket(Config(app="bench.bare_webhook:app", host="127.0.0.1", port=0,
                                      workers=2))
    assert listener.proto == socket.IPPROTO_TCP
    assert listener.get_inheritable()  # the workers get it
    nodelay: list[int] = []

    class Accepted(asyncio.Protocol):
        def connection_made(self, transport):
            sock = transport.get_extra_info("socket")
            nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def accept_one() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Accepted, sock=listener)
        _reader, writer = await asyncio.open_connection(*listener.getsockname())
        for _ in range(200):
            if nodelay:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(accept_one())
    assert nodelay and nodelay[0] != 0
