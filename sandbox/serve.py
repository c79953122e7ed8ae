"""``python -m sandbox.<name>``: the command line every sandbox's ``__main__`` shares.

Each sandbox names its default port and what its ``create_app`` takes; this parses the flags
(``--host``, ``--port``, ``--log-level``, and where the sandbox has them ``--latency-ms`` and
``--access-log``) and serves the app with uvicorn.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import uvicorn

LOG_LEVELS = ["critical", "error", "warning", "info", "debug"]


def main(
    prog: str,
    description: str | None,
    create_app: Callable[..., Any],
    *,
    port: int,
    argv: list[str] | None = None,
    latency_flag: bool = False,
    access_log_flag: bool = True,
    log_level_choices: list[str] | None = LOG_LEVELS,
    graceful_shutdown: bool = True,
) -> None:
    """``latency_flag``: ``--latency-ms`` is passed to ``create_app(latency_ms=...)``.
    ``access_log_flag``: ``--access-log`` (off by default: query strings can carry secrets);
    without it uvicorn's default applies. ``graceful_shutdown``: a held request (the
    ``*_hold_ms`` knobs) must not hold up shutdown for its whole hold, so give up after 2 s."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    if latency_flag:
        parser.add_argument("--latency-ms", type=int, default=0, help="delay every API request")
    parser.add_argument("--log-level", default="warning", choices=log_level_choices)
    if access_log_flag:
        parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    app = create_app(latency_ms=args.latency_ms) if latency_flag else create_app()
    options: dict[str, Any] = {"host": args.host, "port": args.port, "log_level": args.log_level}
    if access_log_flag:
        options["access_log"] = args.access_log
    if graceful_shutdown:
        options["timeout_graceful_shutdown"] = 2
    uvicorn.run(app, **options)
