"""Start any of the sandboxes as a real HTTP server on a free port, the way the dev stack starts
its children (``ManagedProcess``, log file, wait for ``/_sandbox/healthz``).

    running = start_sandbox("brex", log_dir=Path("var/log"))
    ...  # running.url is the server root; the control API is under /_sandbox/
    running.stop()

``python -m devstack.sandboxes traede brex`` starts the named ones and prints their URLs until
Ctrl-C. ``make run``/``make demo`` start only the sandboxes they seed (devstack.stack); the
source sandboxes are started here until their connectors exist.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from devstack.processes import ManagedProcess, free_port, python_argv, wait_for_http
from devstack.stack import stop_on_signals
from shared.config import DEFAULT_VAR_DIR, PROJECT_ROOT

SANDBOX_MODULES = {
    "tripletex": "sandbox.tripletex",
    "findity": "sandbox.findity",
    "traede": "sandbox.traede",
    "brex": "sandbox.brex",
    "billdiary": "sandbox.billdiary",
}


@dataclass
class RunningSandbox:
    name: str
    url: str  # the server root: http://127.0.0.1:<port>
    process: ManagedProcess

    def stop(self) -> None:
        self.process.stop()


def start_sandbox(name: str, *, log_dir: Path, port: int | None = None,
                  log_level: str = "warning", timeout: float = 30.0) -> RunningSandbox:
    """Start ``python -m sandbox.<name>`` and return once its health check answers."""
    module = SANDBOX_MODULES[name]
    port = port or free_port()
    process = ManagedProcess(
        f"{name}-sandbox",
        python_argv("-m", module, "--port", str(port), "--log-level", log_level),
        log_dir=log_dir,
        cwd=PROJECT_ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/_sandbox/healthz", timeout=timeout, process=process)
    except BaseException:
        process.stop()
        raise
    return RunningSandbox(name, url, process)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.sandboxes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=sorted(SANDBOX_MODULES))
    parser.add_argument("--log-dir", type=Path, default=DEFAULT_VAR_DIR / "log")
    args = parser.parse_args(argv)
    stop_on_signals()
    running: list[RunningSandbox] = []
    try:
        for name in args.names:
            running.append(start_sandbox(name, log_dir=args.log_dir))
            print(f"{name:10} {running[-1].url}   control API {running[-1].url}/_sandbox/docs"
                  f"   log {running[-1].process.log_path}", flush=True)
        while all(r.process.alive() for r in running):
            time.sleep(0.5)
        dead = next(r for r in running if not r.process.alive())
        print(f"{dead.name} exited; log {dead.process.log_path}\n{dead.process.tail()}")
    except KeyboardInterrupt:
        pass
    finally:
        for sandbox in reversed(running):
            sandbox.stop()


if __name__ == "__main__":
    main()
