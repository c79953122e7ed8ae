"""``python -m sandbox.brex --port 8094``: serve the Brex sandbox with uvicorn."""

from __future__ import annotations

from sandbox import serve
from sandbox.brex.app import create_app

# --access-log is off by default: receipt links carry their signature in the query string.


def main(argv: list[str] | None = None) -> None:
    serve.main("python -m sandbox.brex", __doc__, create_app,
               port=8094, argv=argv)


if __name__ == "__main__":
    main()
