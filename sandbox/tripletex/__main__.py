"""Run the Tripletex sandbox: ``python -m sandbox.tripletex --port 8092 [--latency-ms 0]``."""

from __future__ import annotations

from sandbox import serve
from sandbox.tripletex.app import create_app

# --access-log is off by default: the session call carries the consumer and employee tokens
# in its query.


def main(argv: list[str] | None = None) -> None:
    serve.main("python -m sandbox.tripletex", __doc__, create_app,
               port=8092, argv=argv, latency_flag=True, log_level_choices=None)


if __name__ == "__main__":
    main()
