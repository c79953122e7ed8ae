"""``python -m bench._uvicorn_tcp <uvicorn arguments>``: uvicorn, with its listening socket marked TCP.

With ``--workers N`` (N > 1) uvicorn's supervisor binds the socket itself
(``Config.bind_socket``: ``socket.socket(family)``, so ``proto`` is 0) and hands it to the
workers. An accepted connection inherits ``proto`` 0, and asyncio turns on TCP_NODELAY only for
a socket whose ``proto`` is IPPROTO_TCP; with Nagle on, the body of each answer (a second small
write after the headers) waits for the client's delayed ACK, ~40 ms on Linux, on every
keep-alive request that meets it (uvicorn issue Kludex/uvicorn#3149, open against 0.54, with
the standard asyncio loop this project runs). With one worker uvicorn lets asyncio bind from
``getaddrinfo`` (``proto`` 6) and the answers leave at once.

This launcher re-wraps the bound socket's descriptor with ``proto`` IPPROTO_TCP (what the
upstream fix does), so N workers are measured as a deployment that avoided the bug would run
them; with one worker, or a uvicorn that already sets it, it changes nothing.
"""

from __future__ import annotations

import socket

import uvicorn.config
import uvicorn.main

_bind_socket = uvicorn.config.Config.bind_socket


def bind_tcp_socket(config: uvicorn.config.Config) -> socket.socket:
    sock = _bind_socket(config)
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.proto == socket.IPPROTO_TCP:
        return sock
    tcp = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    tcp.set_inheritable(True)
    return tcp


if __name__ == "__main__":
    # Only the supervisor binds; the workers get the socket (and its proto) pickled.
    uvicorn.config.Config.bind_socket = bind_tcp_socket  # type: ignore[method-assign]
    uvicorn.main.main(prog_name="uvicorn")
