"""``python -m sandbox.brex --port 8094``: serve the Brex sandbox with uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from sandbox.brex.app import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.brex", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8094)
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug"])
    # Off by default: receipt links carry their signature in the query string.
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.access_log, timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
