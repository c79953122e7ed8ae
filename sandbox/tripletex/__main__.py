"""Run the Tripletex sandbox: ``python -m sandbox.tripletex --port 8092 [--latency-ms 0]``."""

from __future__ import annotations

import argparse

import uvicorn

from sandbox.tripletex.app import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.tripletex", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8092)
    parser.add_argument("--latency-ms", type=int, default=0, help="delay every API request")
    parser.add_argument("--log-level", default="warning")
    # Off by default: the session call carries the consumer and employee tokens in its query.
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(latency_ms=args.latency_ms),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        # A request held by post_hold_ms must not hold up shutdown for its whole hold.
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
