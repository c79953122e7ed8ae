"""``python -m sandbox.traede --port 8093``: serve the TRAEDE sandbox with uvicorn."""

from __future__ import annotations

from sandbox import serve
from sandbox.traede.app import create_app

# --access-log is off by default: TRAEDE allows the token in the query string (?access_token=).


def main(argv: list[str] | None = None) -> None:
    serve.main("python -m sandbox.traede", __doc__, create_app,
               port=8093, argv=argv)


if __name__ == "__main__":
    main()
