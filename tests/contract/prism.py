"""Prism for the contract tests: ``@stoplight/prism-cli`` from the npm registry, installed into
``var/node`` on first use, started as a real process on a vendor's spec (a request that breaks
the spec is answered 4xx with an ``sl-violations`` header)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devstack.processes import ManagedProcess, free_port, wait_for_http
from shared.config import PROJECT_ROOT

NODE_DIR = PROJECT_ROOT / "var/node"
PRISM_BIN = NODE_DIR / "node_modules/.bin/prism"
PRISM_PACKAGE = "@stoplight/prism-cli@5.14.2"


def skip(reason: str) -> None:
    print(f"\n[contract] skipped: {reason}")
    pytest.skip(reason)


def ensure_prism() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        skip("node/npm are not installed: Prism cannot run")
    if not PRISM_BIN.exists():
        print(f"\n[contract] installing {PRISM_PACKAGE} into {NODE_DIR} (once)")
        result = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR), PRISM_PACKAGE],
            capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0 or not PRISM_BIN.exists():
            pytest.fail(f"npm install of {PRISM_PACKAGE} failed:\n{result.stdout[-2000:]}\n"
                        f"{result.stderr[-2000:]}")
    return PRISM_BIN


@contextmanager
def prism_mock(spec_path: Path, work: Path, ready_path: str, *,
               errors: bool = True) -> Iterator[str]:
    """Prism serving ``spec_path``; yields its URL once ``ready_path`` answers below 500.
    ``errors=False`` leaves out ``--errors``: a request that breaks the spec is still answered
    4xx, but a mock answer that breaks the spec itself (an example Prism cannot make valid) is
    served, its violations listed in ``sl-violations``."""
    prism = ensure_prism()
    port = free_port()
    process = ManagedProcess(
        "prism", [str(prism), "mock", "-h", "127.0.0.1", "-p", str(port),
                  *(["--errors"] if errors else []), str(spec_path)],
        log_dir=work, cwd=PROJECT_ROOT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}{ready_path}", timeout=90, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()
