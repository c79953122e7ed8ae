"""``make bench`` lists every benchmark, and each listed one imports and answers ``--help``.

A bad merge once left ``bench/__main__.py`` unparsable; nothing else imports these modules, so
without this the breakage would wait for the next person who runs a benchmark.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_every_benchmark_module_is_listed():
    modules = {p.stem for p in (PROJECT_ROOT / "bench").glob("*.py")
               if not p.stem.startswith("_") and not p.stem.startswith("bare_")}
    # The bare anchors (bare_*.py) are started by the benchmarks, not run on their own.
    assert set(BENCHMARKS) == modules


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_each_benchmark_answers_help(name):
    done = subprocess.run([sys.executable, "-m", f"bench.{name}", "--help"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower()
