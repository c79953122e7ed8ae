"""Issue 12, target 8: a worker's memory stays flat over many exports (RSS growth <= 10%).

    .venv/bin/python -m bench.soak [--exports 50000] [--batch 500] [--latency-ms 20]
        [--concurrency 16] [--keep]

One stack (bench.export_throughput's: Redis, SQLite or AIC_BENCH_DATABASE_URL, the Tripletex
sandbox with every request delayed ``--latency-ms``, the API, ONE worker process of the threads
pool x ``--concurrency``, rate limit off, one organization) exports ``--exports`` expenses in
batches of ``--batch``: create the batch's expenses through the API, POST the batch, wait until
it is done, check every export succeeded, then read the worker's resident set size
(/proc/<pid>/status VmRSS, the threads pool is one process).

Printed: the RSS curve (one line per sample: exports done, minutes, worker RSS MiB, change from
the baseline), and the growth from the baseline, which is the RSS after the first batch (the
imports, clients, connection pools and caches are all in place by then; the RSS at "ready" is
printed too). PASS when the growth at the end is <= 10%. At the end the sandbox must hold
exactly one voucher per export. Exits 1 on FAIL or when work was lost or doubled.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import httpx

from bench.export_throughput import (
    BenchFailure,
    BenchStack,
    PoolConfig,
    _check,
    _commit,
    _load,
    command_line,
    create_expenses,
    post_batch,
    set_up_tenants,
    run_benchmark,
    say,
    wait_for_batches,
)

TARGET_GROWTH = 0.10


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise BenchFailure(f"no VmRSS for process {pid}")


def _create(tenant, count: int, say) -> list[str]:
    """``count`` expenses; one whose POST broke off (a connection the API's keep-alive closed
    under a busy machine reset a 40,000-export run) is left out after a second try, so a batch
    may hold a few fewer. Every batch's exports are still checked, and the vouchers at the end."""
    try:
        return [e for _, e in create_expenses([tenant] * count)]
    except httpx.TransportError as error:
        say(f"creating expenses broke off ({error!r}); creating them one at a time")
    ids = []
    for _ in range(count):
        for attempt in (1, 2):
            try:
                ids += [e for _, e in create_expenses([tenant])]
                break
            except (httpx.TransportError, BenchFailure) as error:
                say(f"an expense was not created (attempt {attempt}): {error!r}")
    return ids


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exports", type=int, default=50_000,
                        help="exports in all (default 50000; a smaller N for a quick run)")
    parser.add_argument("--batch", type=int, default=500, help="exports per batch (<= 500)")
    parser.add_argument("--latency-ms", type=int, default=20,
                        help="delay of every Tripletex request (default 20: memory is about "
                             "the number of exports, not their speed)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=600, help="per batch, seconds")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= 500 or args.exports < 2 * args.batch:
        parser.error("--batch must be 1..500 and --exports at least two batches")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    database_url = os.environ.get("AIC_BENCH_DATABASE_URL") or None
    batches = -(-args.exports // args.batch)
    print("\n".join([
        "=== bench.soak ===",
        f"command  : {command_line('bench.soak')}   (cwd {Path.cwd()})",
        f"code     : {_commit()}",
        f"machine  : nproc {len(os.sched_getaffinity(0))}, load average "
        f"{_load(os.getloadavg())} (1/5/15 min)",
        f"database : {'AIC_BENCH_DATABASE_URL' if database_url else 'SQLite, a fresh file'}",
        f"load     : {batches * args.batch} exports in {batches} batches of {args.batch}, one "
        f"organization; 1 worker process, threads x{args.concurrency}; every Tripletex request "
        f"delayed {args.latency_ms} ms; rate limit off",
        f"target   : worker RSS growth <= {TARGET_GROWTH:.0%} from the baseline (after the first "
        f"batch) to the end (issue 12, target 8)",
    ]), flush=True)

    config = PoolConfig("threads", args.concurrency, 1)
    started_here: dict = {}  # what body started, for the clean-up

    def body(tmp: Path) -> int:
        say(f"starting stack in {tmp}")
        stack = started_here["stack"] = BenchStack(tmp, config, database_url)
        stack.start()
        worker = next(p for p in stack.processes if p.name == "worker1")
        control = started_here["control"] = httpx.Client(base_url=stack.sandbox_url,
                                                         timeout=120)
        tenants = started_here["tenants"] = set_up_tenants(
            stack, control, exports=0, orgs=1, latency_ms=args.latency_ms, rate_limit="off")
        tenant = tenants[0]
        at_ready = rss_mib(worker.pid)
        started = time.perf_counter()
        samples: list[tuple[int, float, float]] = []
        done = 0
        print(f"worker RSS at ready: {at_ready:.1f} MiB; then after every batch:", flush=True)
        for n in range(batches):
            expense_ids = _create(tenant, args.batch, say)
            batch = post_batch(tenant, expense_ids)
            counts = wait_for_batches(stack, [(tenant, batch["batch_id"])],
                                      time.perf_counter(), args.timeout)
            if counts.get("success", 0) != len(expense_ids):
                raise BenchFailure(f"batch {n + 1}: not every export succeeded: {counts}")
            done += len(expense_ids)
            samples.append((done, (time.perf_counter() - started) / 60, rss_mib(worker.pid)))
            # Every sample as it is taken: a run broken off late still shows its curve.
            print(f"  sample {done:>6} exports {samples[-1][1]:6.1f} min "
                  f"{samples[-1][2]:7.1f} MiB", flush=True)
        vouchers = _check(control.get(f"/_sandbox/companies/{tenant.company_id}/vouchers"),
                          200, "sandbox vouchers")
        numbers = {v.get("externalVoucherNumber") for v in vouchers}
        if len(vouchers) != done or len(numbers) != done:
            raise BenchFailure(f"the sandbox holds {len(vouchers)} vouchers ({len(numbers)} "
                               f"distinct export ids) for {done} successful exports")
        baseline = samples[0][2]
        print(f"worker RSS at ready: {at_ready:.1f} MiB; baseline (after the first batch): "
              f"{baseline:.1f} MiB")
        print(f"{'exports':>9}{'minutes':>9}{'RSS MiB':>9}{'vs baseline':>13}")
        step = max(1, len(samples) // 25)  # about 25 lines whatever N
        for i, (count, minutes, rss) in enumerate(samples):
            if i % step == 0 or i == len(samples) - 1:
                print(f"{count:>9}{minutes:>9.1f}{rss:>9.1f}{(rss - baseline) / baseline:>+13.1%}")
        final = samples[-1][2]
        peak = max(s[2] for s in samples)
        growth = (final - baseline) / baseline
        verdict = "PASS" if growth <= TARGET_GROWTH else "FAIL"
        print(f"verified : {done} exports succeeded; the sandbox holds {done} vouchers, one per "
              f"export id")
        print(f"growth   : {growth:+.1%} from the baseline to the end over {done - args.batch} "
              f"exports (peak {peak:.1f} MiB, {(peak - baseline) / baseline:+.1%}); from ready "
              f"{(final - at_ready) / at_ready:+.1%}   <= {TARGET_GROWTH:.0%}   {verdict}")
        return 0 if verdict == "PASS" else 1

    def cleanup() -> None:
        for tenant in started_here.get("tenants", []):
            tenant.api.close()
        if "control" in started_here:
            started_here["control"].close()
        if "stack" in started_here:
            started_here["stack"].stop()

    return run_benchmark("aic-bench-soak-", args.keep, body, cleanup)


if __name__ == "__main__":
    sys.exit(main())
