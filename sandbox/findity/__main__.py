"""``python -m sandbox.findity --port 8091``: serve the Findity sandbox with uvicorn."""

from __future__ import annotations

from sandbox import serve
from sandbox.findity.app import create_app


def main(argv: list[str] | None = None) -> None:
    serve.main("python -m sandbox.findity", __doc__, create_app,
               port=8091, argv=argv, access_log_flag=False, graceful_shutdown=False)


if __name__ == "__main__":
    main()
