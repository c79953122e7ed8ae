"""``python -m bench``: list the benchmarks (each one runs as its own module)."""

from __future__ import annotations

BENCHMARKS = {
    "export_throughput": "exports/s and per-export latency of one batch through a real stack "
                         "(API, Redis, Celery workers, Tripletex sandbox); --compare for pools, "
                         "--versus-bare against a bare Celery task (targets 1 and 2)",
    "tenant_fairness": "8 tenants' batches back to back, each with its own small budget: "
                       "throughput over the budgets' sum, first start per tenant, attempts "
                       "spent by refusals (target 4)",
    "rate_limit_held": "one tenant against the Tripletex sandbox's own limit: achieved rate "
                       "over the allowed rate, 429s (target 5)",
    "cold_start": "Tripletex lookups a fresh client makes when 1 and 16 threads start at once "
                  "(target: each once, no stampede)",
    "list_pages": "p50/p99 of the export list (page 1, page 400, status and date filters) at "
                  "10,000 and 1,000,000 rows on PostgreSQL, and the sweeper's scan "
                  "(target: p99 within 1.5x, scan < 100 ms)",
    "webhook_receiver": "capacity (p99 < 50 ms) of the Findity webhook against a bare FastAPI "
                        "INSERT + LPUSH, 1 and 2 uvicorn workers (target: >= 0.70)",
    "latency_bound": "throughput against slots / latency with a 1 s target and 1, 2 and 4 "
                     "worker processes (target: >= 0.85 of the bound)",
    "soak": "worker RSS over many exports in batches, as a curve (target: growth <= 10%; "
            "--exports 50000 by default, smaller for a quick run)",
}


def main() -> None:
    print("benchmarks (run from the project root; details in bench/README.md):")
    for name, what in BENCHMARKS.items():
        print(f"  .venv/bin/python -m bench.{name} --help\n      {what}")


if __name__ == "__main__":
    main()
