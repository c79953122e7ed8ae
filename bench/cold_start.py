"""Cold start: Tripletex requests a fresh client makes when many threads need it at once.

    .venv/bin/python -m bench.cold_start [--threads 1,16] [--latency-ms 200]

Target 3 of issue 12 ("no stampede"): a cold client makes each lookup (session, chart of
accounts, VAT types, currency) once per connection however many threads start at once.

For each thread count T it starts nothing but the Tripletex sandbox (``python -m
sandbox.tripletex``, one for the whole run), creates a fresh company (so fresh request counts)
whose every request takes ``latency_ms``, builds ONE fresh ``TripletexClient`` for it (what the
worker's per-connection client cache holds after a start or a connection change) and releases T
threads at once through a barrier, each preparing its own voucher (``prepare_voucher``: the
lookups and the session, everything before the voucher POST). It prints the requests the sandbox
counted per path and PASS when every lookup was made exactly once. Nothing is timed: the figure
is a count, so the machine's load does not change it (it is printed anyway).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import httpx

from bench.export_throughput import _commit, _load, command_line
from devstack.sandboxes import start_sandbox
from shared.domain.vouchers import PostingDraft, VoucherDraft
from shared.integrations.tripletex import TripletexClient

# What a fresh client fetches before its first voucher (the bench's expenses use one account
# with VAT code 1 against 2930, in NOK).
LOOKUPS = ("PUT /token/session/:create", "GET /ledger/account", "GET /ledger/vatType",
           "GET /currency")


def _draft(n: int) -> VoucherDraft:
    return VoucherDraft(
        external_number=f"cold-start-{n}", date=date.today(), description="Bench expense",
        postings=[PostingDraft(account_number="6800", amount="100.00", vat_code="1"),
                  PostingDraft(account_number="2930", amount="-100.00")])


def cold_start(control: httpx.Client, base_url: str, threads: int, latency_ms: int
               ) -> tuple[dict[str, int], list[BaseException]]:
    """Request counts of one fresh client under ``threads`` simultaneous first vouchers."""
    company = control.post("/_sandbox/companies", json={"name": f"Cold start x{threads}"}).json()
    control.put(f"/_sandbox/companies/{company['company_id']}/faults",
                json={"latency_ms": latency_ms}).raise_for_status()
    barrier = threading.Barrier(threads)
    raised: list[BaseException] = []

    with TripletexClient(base_url, consumer_token=company["consumer_token"],
                         employee_token=company["employee_token"]) as client:
        def first_voucher(n: int) -> None:
            barrier.wait()
            try:
                client.prepare_voucher(_draft(n))
            except BaseException as error:  # noqa: BLE001 - reported below
                raised.append(error)

        workers = [threading.Thread(target=first_voucher, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    counts = control.get(f"/_sandbox/companies/{company['company_id']}/requests").json()
    return counts, raised


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cold_start",
        description="Lookups a fresh Tripletex client makes when T threads start at once.")
    parser.add_argument("--threads", default="1,16",
                        help="comma-separated thread counts, one fresh client each (default 1,16)")
    parser.add_argument("--latency-ms", type=int, default=200,
                        help="delay of every sandbox request, so the threads meet mid-fetch "
                             "(default 200)")
    args = parser.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",")]
    print("=== bench.cold_start ===")
    print(f"command  : {command_line('bench.cold_start')}   (cwd {Path.cwd()})")
    print(f"date     : {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}")
    print(f"code     : {_commit()}")
    print(f"machine  : nproc {len(os.sched_getaffinity(0))}, load average "
          f"{_load(os.getloadavg())} (1/5/15 min)")
    print(f"load     : one fresh TripletexClient per row, T threads each preparing a voucher at "
          f"once; every sandbox request delayed {args.latency_ms} ms")
    print("target   : each lookup once per client whatever T (issue 12, target 3)")
    header = f"{'threads':>8}" + "".join(f"{path:>30}" for path in LOOKUPS) + "   verdict"
    print(header)
    print("-" * len(header))
    ok = True
    with tempfile.TemporaryDirectory(prefix="aic-bench-cold-") as tmp:
        running = start_sandbox("tripletex", log_dir=Path(tmp))
        try:
            with httpx.Client(base_url=running.url, timeout=60) as control:
                for threads in thread_counts:
                    counts, raised = cold_start(control, f"{running.url}/v2", threads,
                                                args.latency_ms)
                    row = [counts.get(path, 0) for path in LOOKUPS]
                    passed = not raised and all(n == 1 for n in row)
                    ok = ok and passed
                    verdict = "PASS" if passed else (
                        f"FAIL ({len(raised)} thread(s) raised: {raised[0]!r})" if raised
                        else "FAIL")
                    print(f"{threads:>8}" + "".join(f"{n:>30}" for n in row) + f"   {verdict}")
        finally:
            running.stop()
    print(f"load average at the end: {_load(os.getloadavg())}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
