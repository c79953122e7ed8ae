"""The rate limit held (issue 12, target 5): one tenant against the Tripletex sandbox's own limit.

    .venv/bin/python -m bench.rate_limit_held [--exports 300] [--server-limit 100]
        [--server-window 10] [--client-share 0.97] [--latency-ms 200] [--keep]

A mode of ``bench.tenant_fairness`` (same stack, same checks); its docstring says what is timed.
"""

from __future__ import annotations

import sys

from bench.tenant_fairness import main_held

if __name__ == "__main__":
    sys.exit(main_held())
