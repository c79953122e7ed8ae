"""Issue 12, target 2: where the target's latency, not our CPU, is the limit, throughput reaches
the in-flight bound (slots / latency) and grows with the worker processes.

    .venv/bin/python -m bench.latency_bound [--latency-ms 1000] [--workers 1,2,4]
        [--concurrency 16] [--seconds 10] [--keep]

For each W in ``--workers`` a fresh stack (bench.export_throughput's: Redis, SQLite or
AIC_BENCH_DATABASE_URL, the Tripletex sandbox with every request delayed ``--latency-ms``, the
API, W worker processes of the threads pool x ``--concurrency``, rate limit off) first exports
2 x slots per organization untimed (every worker's client then holds its session and lookups),
then one batch of N = slots x ``--seconds`` / latency exports, at most 500 (the API's batch
limit) in one organization. One batch, because a second batch's POST (one transaction creating
hundreds of exports) holds SQLite's write lock while the first batch's exports are being worked
on, which measures the API's transaction, not the latency bound. Slots = W x concurrency; the bound is
slots / latency exports/s (one voucher POST per export once the clients are warm).

Printed per W: the bound, the workers' throughput (N / first 'started' -> last success, the
span the bound is about), the end-to-end throughput (N / batch POST -> all done, which adds the
API creating N exports and the poll), their ratio to the bound and PASS when the workers'
throughput is >= 0.85 of the bound; then how throughput scales from 1 worker process. Exits 1
when a run lost or doubled work (no figures) or a ratio is below the target.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.export_throughput import (
    PoolConfig,
    _commit,
    _load,
    command_line,
    describe_run,
    run_benchmark,
    run_once,
    say,
)

TARGET = 0.85
PER_ORG = 500  # the API's batch limit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.latency_bound", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=int, default=1000)
    parser.add_argument("--workers", default="1,2,4", help="worker process counts (default 1,2,4)")
    parser.add_argument("--concurrency", type=int, default=16, help="threads per worker")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="the timed batch lasts about this long at the bound (default 8; "
                             "at most 500 exports)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.worker_counts = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error("--workers takes a comma-separated list of process counts, e.g. 1,2,4")
    if (min(args.worker_counts) < 1 or args.concurrency < 1 or args.latency_ms <= 0
            or args.seconds <= 0):
        parser.error("--workers, --concurrency, --latency-ms and --seconds must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    database_url = os.environ.get("AIC_BENCH_DATABASE_URL") or None
    latency = args.latency_ms / 1000

    print("\n".join([
        "=== bench.latency_bound ===",
        f"command  : {command_line('bench.latency_bound')}   (cwd {Path.cwd()})",
        f"code     : {_commit()}",
        f"machine  : nproc {len(os.sched_getaffinity(0))}, load average "
        f"{_load(os.getloadavg())} (1/5/15 min)",
        f"database : {'AIC_BENCH_DATABASE_URL' if database_url else 'SQLite, a fresh file per run'}",
        f"load     : every Tripletex request delayed {args.latency_ms} ms; rate limit off; "
        f"threads pool x{args.concurrency} per worker process; warm clients (2 x slots per "
        f"organization exported first, untimed)",
        f"target   : workers' throughput >= {TARGET:.2f} x slots / latency (issue 12, target 2)",
    ]), flush=True)
    def body(tmp: Path) -> int:
        rows = []
        for workers in args.worker_counts:
            config = PoolConfig("threads", args.concurrency, workers)
            slots = config.in_flight
            bound = slots / latency
            exports = min(PER_ORG, max(slots, round(bound * args.seconds)))
            orgs = 1
            result = run_once(config, exports=exports, orgs=orgs,
                              latency_ms=args.latency_ms, rate_limit="off",
                              timeout=args.timeout, run_dir=tmp / f"w{workers}",
                              database_url=database_url, say=say, warmup=2 * slots)
            print(describe_run(result, args.latency_ms, None), flush=True)
            workers_rate = result.exports / result.worker_span_s
            print(f"  latency bound             : {slots} slots / {latency:g} s = "
                  f"{bound:.1f} exports/s; workers {workers_rate:.2f} exports/s "
                  f"({workers_rate / bound:.2f} of it, span {result.worker_span_s:.2f} s); "
                  f"end to end {result.throughput:.2f} ({result.throughput / bound:.2f})",
                  flush=True)
            rows.append((config, exports, orgs, bound, workers_rate, result))
        header = (f"{'workers':>7}{'slots':>7}{'exports':>9}{'bound/s':>9}{'workers/s':>11}"
                  f"{'ratio':>7}{'end-to-end/s':>14}{'ratio':>7}{'scaling':>9}"
                  f"{'CPU ours/others s':>19}{'load':>7}   verdict")
        print(header)
        print("-" * len(header))
        base = rows[0][4]
        failed = False
        for config, exports, _orgs, bound, rate, r in rows:
            verdict = "PASS" if rate >= TARGET * bound else "FAIL"
            failed |= verdict == "FAIL"
            print(f"{config.workers:>7}{config.in_flight:>7}{exports:>9}{bound:>9.1f}{rate:>11.2f}"
                  f"{rate / bound:>7.2f}{r.throughput:>14.2f}{r.throughput / bound:>7.2f}"
                  f"{rate / base:>8.2f}x{f'{r.cpu_ours:.1f}/{r.cpu_others:.1f}':>19}"
                  f"{r.load_before[0]:>7.2f}   {verdict}")
        return 1 if failed else 0

    return run_benchmark("aic-bench-latency-", args.keep, body)


if __name__ == "__main__":
    sys.exit(main())
