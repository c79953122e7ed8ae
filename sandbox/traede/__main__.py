"""``python -m sandbox.traede --port 8093``: serve the TRAEDE sandbox with uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from sandbox.traede.app import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.traede", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8093)
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug"])
    # Off by default: TRAEDE allows the token in the query string (?access_token=).
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.access_log, timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
