"""Run the BillDiary sandbox: ``python -m sandbox.billdiary --port 8300 [--latency-ms 0]``."""

from __future__ import annotations

import argparse

import uvicorn

from sandbox.billdiary.app import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.billdiary", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--latency-ms", type=int, default=0, help="delay every API request")
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug"])
    # Off by default: Basic auth and Bearer tokens travel in headers, not in the access log, but
    # query strings (q=) can carry references a log should not keep.
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(latency_ms=args.latency_ms),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        # A request held by save_then_hold_ms must not hold up shutdown for its whole hold.
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
