"""Run the BillDiary sandbox: ``python -m sandbox.billdiary --port 8300 [--latency-ms 0]``."""

from __future__ import annotations

from sandbox import serve
from sandbox.billdiary.app import create_app

# --access-log is off by default: Basic auth and Bearer tokens travel in headers, not in the access log, but
# query strings (q=) can carry references a log should not keep.


def main(argv: list[str] | None = None) -> None:
    serve.main("python -m sandbox.billdiary", __doc__, create_app,
               port=8300, argv=argv, latency_flag=True)


if __name__ == "__main__":
    main()
