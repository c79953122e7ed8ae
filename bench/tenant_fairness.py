"""Fair across tenants, and the rate limit held (issue 12, targets 4 and 5).

    .venv/bin/python -m bench.tenant_fairness [--orgs 8] [--per-org 50] [--rate 2]
        [--latency-ms 200] [--workers 1] [--concurrency 16] [--admit-wait S] [--keep]
    .venv/bin/python -m bench.rate_limit_held [--exports 300] [--server-limit 100]
        [--server-window 10] [--client-share 0.97] ...

Both start the real, isolated stack of ``bench.export_throughput`` (embedded Redis, a fresh
SQLite file or AIC_BENCH_DATABASE_URL, the Tripletex sandbox as a real server, the API, Celery
worker processes with the threads pool) and time batches from just before the first
``POST /api/v1/accounting-exports/batch`` until every batch reports done.

**Fairness (target 4).** K organizations, each with its own sandbox company and Tripletex
connection whose client-side budget is ``--rate`` requests/s (burst 1), N approved expenses each;
their K batches are posted back to back, so the broker's queue holds all of organization 1's
exports, then all of organization 2's, ... Printed and judged:

- throughput while every tenant has work queued: the vouchers the sandbox stored (one POST each)
  between the last organization's first voucher and the first organization's last voucher (the
  sandbox's clock), per second, over the sum of the budgets (K x rate). PASS >= 0.90. This is the
  fairness figure: a thread sleeping on one budget while others' work waits shows as a shortfall
  here. Also printed, not judged: the whole window's requests/s (the API creating the batches,
  each fresh client's session and three lookups, and the tail included) over the same sum.
- first start: per organization, its first export's ``started`` event minus its batch's first
  ``initiated_at`` (both the server's clock). PASS when the worst is <= ``--first-start-bound``.
- attempts spent by refusals: every export must succeed with exactly one attempt (``attempts``
  of the export) and no rate-limit retry may be counted. PASS == 0.

``--admit-wait S`` sets ``AIC_RATE_LIMIT_ADMIT_WAIT_SECONDS`` for the workers: with 30 (the
request wait bound) the admission admits everything and a thread sleeps in ``acquire`` as before
the admission existed, which shows what the admission changes in the same sitting.

**Rate limit held (target 5).** One organization whose sandbox company enforces its own limit
(``--server-limit`` requests per ``--server-window`` s fixed window per employee token, 429
beyond it, announced in X-Rate-Limit-* headers), the connection's limiter at ``--client-share``
of that rate (burst 1). Judged: the achieved request rate between the first and the last voucher
the sandbox stored over the allowed rate (PASS >= 0.95), and the 429s (retries scheduled after a
429; PASS == 0). The whole window's request rate is printed too.

A run that lost or doubled work (not every export succeeded, or a sandbox company does not hold
exactly one voucher per export id) prints no figures and exits 1; a FAIL exits 2.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.export_throughput import (
    POLL_INTERVAL,
    BenchFailure,
    BenchStack,
    PoolConfig,
    Tenant,
    _check,
    _commit,
    _cpu_sample,
    _list_batch,
    _load,
    _parse_time,
    command_line,
    redact,
    run_benchmark,
    say,
    set_up_tenants,
    signals_held,
)

FAIR_THROUGHPUT = 0.90
HELD_RATE = 0.95


@dataclass
class TenantFigures:
    exports: int
    requests: int
    first_start_s: float
    last_success_s: float
    attempts: int
    rate_limit_retries: int
    counted_rate_limit_retries: int
    too_many: int  # retries scheduled after a 429
    voucher_times: list[float]


@dataclass
class RunFigures:
    wall_s: float
    batch_post_s: float
    tenants: list[TenantFigures]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    cpu_ours: float
    cpu_others: float
    cpu_by_child: dict[str, float]

    @property
    def exports(self) -> int:
        return sum(t.exports for t in self.tenants)

    @property
    def requests(self) -> int:
        return sum(t.requests for t in self.tenants)


def _get_all(api: httpx.Client, paths: list[str], what: str) -> list[dict]:
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bench-read")
    try:
        return list(pool.map(lambda path: _check(api.get(path), 200, what), paths))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _tenant_figures(tenant: Tenant, control: httpx.Client) -> TenantFigures:
    listed = _list_batch(tenant.api, tenant.batch_id)
    export_ids = set(tenant.export_ids)
    if {e["export_id"] for e in listed} != export_ids or len(listed) != len(export_ids):
        raise BenchFailure(f"the list API shows {len(listed)} exports of batch "
                           f"{tenant.batch_id}, expected exactly the {len(export_ids)} it created")
    if any(e["status"] != "success" for e in listed):
        raise BenchFailure(f"not every export of batch {tenant.batch_id} succeeded")
    vouchers = _check(control.get(f"/_sandbox/companies/{tenant.company_id}/vouchers"), 200,
                      "sandbox vouchers")
    numbers = [v.get("externalVoucherNumber") for v in vouchers]
    if len(vouchers) != len(export_ids) or set(numbers) != export_ids:
        raise BenchFailure(f"sandbox company {tenant.company_id} holds {len(vouchers)} vouchers "
                           f"({len(set(numbers))} distinct export ids) for {len(export_ids)} "
                           "successful exports: work was lost or doubled")
    requests = sum(_check(control.get(f"/_sandbox/companies/{tenant.company_id}/requests"), 200,
                          "sandbox request counts").values())
    ids = sorted(export_ids)
    details = _get_all(tenant.api, [f"/api/v1/accounting-exports/{i}" for i in ids], "export")
    logs = _get_all(tenant.api, [f"/api/v1/accounting-exports/{i}/events" for i in ids], "events")
    batch_at = min(_parse_time(e["initiated_at"]) for e in listed)
    starts, successes = [], []
    rate_limit_retries = counted = too_many = 0
    for log in (body["events"] for body in logs):
        starts += [_parse_time(e["at"]) for e in log if e["kind"] == "started"]
        successes += [_parse_time(e["at"]) for e in log
                      if e["kind"] == "status_changed" and e["to_status"] == "success"]
        for event in log:
            if event["kind"] != "retry_scheduled":
                continue
            data = event.get("data") or {}
            if data.get("status") == 429:
                too_many += 1
            if data.get("status") == 429 or str(data.get("code", "")).startswith("rate_limit"):
                rate_limit_retries += 1
                counted += bool(data.get("counted"))
    voucher_times = sorted(_parse_time(v["createdAt"]).timestamp() for v in vouchers
                           if v.get("createdAt"))
    return TenantFigures(
        exports=len(ids), requests=requests,
        first_start_s=(min(starts) - batch_at).total_seconds(),
        last_success_s=(max(successes) - batch_at).total_seconds(),
        attempts=sum(d["attempts"] for d in details), rate_limit_retries=rate_limit_retries,
        counted_rate_limit_retries=counted, too_many=too_many, voucher_times=voucher_times)


def run(*, orgs: int, per_org: int, rate: float, latency_ms: int, config: PoolConfig,
        server_limit: dict | None, timeout: float, run_dir: Path, database_url: str | None,
        say) -> RunFigures:
    stack = BenchStack(run_dir, config, database_url)
    tenants: list[Tenant] = []
    control: httpx.Client | None = None
    try:
        say(f"starting stack in {run_dir}")
        stack.start()
        control = httpx.Client(base_url=stack.sandbox_url, timeout=60)
        say(f"creating {orgs} organization(s) with {per_org} approved expenses each")
        tenants = set_up_tenants(
            stack, control, exports=orgs * per_org, orgs=orgs, latency_ms=latency_ms,
            rate_limit=str(rate),
            options={"rate_limit": {"requests_per_second": rate, "burst": 1}})
        for tenant in tenants:
            if server_limit is not None:
                _check(control.put(f"/_sandbox/companies/{tenant.company_id}/faults",
                                   json={"latency_ms": latency_ms, "rate_limit": server_limit}),
                       200, "set the sandbox's rate limit")
            _check(control.delete(f"/_sandbox/companies/{tenant.company_id}/requests"), 200,
                   "reset sandbox request counts")
        say(f"posting {orgs} batch(es) back to back, {orgs * per_org} exports in all")

        load_before = os.getloadavg()
        cpu_before = _cpu_sample(stack)
        started = time.perf_counter()
        for tenant in tenants:
            batch = _check(tenant.api.post("/api/v1/accounting-exports/batch", json={
                "expense_ids": tenant.expense_ids, "target_system": "tripletex"}), 202,
                "post batch")
            tenant.batch_id, tenant.export_ids = batch["batch_id"], batch["export_ids"]
        batch_post_s = time.perf_counter() - started
        pending = list(tenants)
        while pending:
            progress = _check(pending[0].api.get(
                f"/api/v1/accounting-exports/batch/{pending[0].batch_id}"), 200, "batch progress")
            if progress["done"]:
                pending.pop(0)
                continue
            dead = stack.first_dead()
            if dead is not None:
                raise BenchFailure(f"{dead.name} died during the run; log {dead.log_path}:\n"
                                   f"{dead.tail()}")
            if time.perf_counter() - started > timeout:
                raise BenchFailure(f"not finished after {timeout:.0f}s; logs in {stack.log_dir}")
            time.sleep(POLL_INTERVAL)
        wall_s = time.perf_counter() - started
        cpu_after = _cpu_sample(stack)
        load_after = os.getloadavg()

        figures = [_tenant_figures(tenant, control) for tenant in tenants]
        by_child = {name: cpu_after.by_child.get(name, 0.0) - seconds
                    for name, seconds in cpu_before.by_child.items()}
        ours = sum(by_child.values()) + cpu_after.bench - cpu_before.bench
        machine = cpu_after.machine_busy - cpu_before.machine_busy
        return RunFigures(wall_s=wall_s, batch_post_s=batch_post_s, tenants=figures,
                          load_before=load_before, load_after=load_after, cpu_ours=ours,
                          cpu_others=max(0.0, machine - ours), cpu_by_child=by_child)
    finally:
        with signals_held():
            for tenant in tenants:
                tenant.api.close()
            if control is not None:
                control.close()
            say("stopping the stack")
            stack.stop()


# --- reporting --------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def header(module: str, args: argparse.Namespace, database_url: str | None,
           load: str) -> list[str]:
    return [
        f"=== bench.{module} ===",
        f"command  : {command_line(f'bench.{module}')}   (cwd {Path.cwd()})",
        f"date     : {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"code     : {_commit()}",
        f"machine  : {platform.system()} {platform.machine()}, nproc "
        f"{len(os.sched_getaffinity(0))}, Python {platform.python_version()}, load average "
        f"{_load(os.getloadavg())} (1/5/15 min)",
        f"database : {redact(database_url) if database_url else 'SQLite, a fresh file per run'}"
        f"; broker: embedded redis-server per run; workers: {args.workers} x threads "
        f"{args.concurrency}",
        f"load     : {load}",
    ]


def _common_lines(r: RunFigures) -> list[str]:
    by_child = ", ".join(f"{name} {seconds:.1f}" for name, seconds in r.cpu_by_child.items())
    return [
        f"wall     : {r.wall_s:.2f} s (first batch POST -> every batch done); batch POSTs "
        f"{r.batch_post_s:.2f} s",
        f"verified : {r.exports} success; every sandbox company holds one voucher per export id",
        f"load avg : {_load(r.load_before)} before -> {_load(r.load_after)} after; CPU in the "
        f"window: this stack {r.cpu_ours:.1f} s ({by_child}), others {r.cpu_others:.1f} s",
    ]


def all_backlogged(r: RunFigures) -> tuple[float, float, int]:
    """(start, end, vouchers stored in between) of the span in which every organization was
    posting: from the last organization's first voucher to the first organization's last."""
    start = max(t.voucher_times[0] for t in r.tenants)
    end = min(t.voucher_times[-1] for t in r.tenants)
    stored = sum(1 for t in r.tenants for v in t.voucher_times if start <= v <= end)
    return start, end, stored


def fairness_report(r: RunFigures, *, rate: float, first_start_bound: float
                    ) -> tuple[str, bool]:
    budgets = rate * len(r.tenants)
    window_ratio = r.requests / r.wall_s / budgets
    start, end, stored = all_backlogged(r)
    span = end - start
    # Intervals, not points: an organization's n vouchers in the span are n - 1 intervals of its
    # spacing (conservative: the edges of the span are left out).
    intervals = stored - len(r.tenants)
    busy_rate = intervals / span if span > 0 else 0.0
    busy_ratio = busy_rate / budgets
    worst_start = max(t.first_start_s for t in r.tenants)
    extra_attempts = sum(t.attempts - t.exports for t in r.tenants)
    counted = sum(t.counted_rate_limit_retries for t in r.tenants)
    spent = extra_attempts + counted
    ok_rate = busy_ratio >= FAIR_THROUGHPUT
    ok_start = worst_start <= first_start_bound
    ok_spent = spent == 0
    lines = [
        f"{'org':>4}{'exports':>9}{'requests':>10}{'first start s':>15}{'last done s':>13}"
        f"{'attempts':>10}{'rate-limit retries':>20}",
    ]
    lines.append("-" * len(lines[0]))
    for n, t in enumerate(r.tenants, 1):
        lines.append(f"{n:>4}{t.exports:>9}{t.requests:>10}{t.first_start_s:>15.2f}"
                     f"{t.last_success_s:>13.2f}{t.attempts:>10}{t.rate_limit_retries:>20}")
    lines += _common_lines(r) + [
        f"window   : {r.requests} requests / {r.wall_s:.2f} s = {r.requests / r.wall_s:.2f}/s = "
        f"{window_ratio:.2f} of the budgets' sum (batch creation, cold lookups and tail "
        f"included; not judged); exports/s {r.exports / r.wall_s:.2f}",
        f"target 4 : throughput while every organization had work queued: {stored} vouchers in "
        f"{span:.2f} s (sandbox clock) = {busy_rate:.2f}/s over the budgets' sum {budgets:g}/s "
        f"({len(r.tenants)} x {rate:g}) = {busy_ratio:.2f} (target >= {FAIR_THROUGHPUT}) "
        f"{_verdict(ok_rate)}",
        f"target 4 : worst first start {worst_start:.2f} s after its batch (target <= "
        f"{first_start_bound:g} s) {_verdict(ok_start)}",
        f"target 4 : attempts spent by refusals {spent} (attempts beyond one per export "
        f"{extra_attempts}, counted rate-limit retries {counted}; target 0) {_verdict(ok_spent)}",
    ]
    return "\n".join(lines), ok_rate and ok_start and ok_spent


def held_report(r: RunFigures, *, allowed: float, client_rate: float) -> tuple[str, bool]:
    t = r.tenants[0]
    times = t.voucher_times
    steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    ratio = steady / allowed
    ok_rate = ratio >= HELD_RATE
    ok_429 = t.too_many == 0
    lines = _common_lines(r) + [
        f"requests : {t.requests} in the window ({t.requests / r.wall_s:.2f}/s over the whole "
        f"window, cold session and lookups included); attempts {t.attempts} for {t.exports} "
        "exports",
        f"target 5 : achieved {steady:.2f} requests/s (vouchers stored, first -> last, sandbox "
        f"clock) over the allowed {allowed:g}/s = {ratio:.3f} (target >= {HELD_RATE}; client "
        f"limiter {client_rate:g}/s) {_verdict(ok_rate)}",
        f"target 5 : 429s {t.too_many} (target 0) {_verdict(ok_429)}",
    ]
    return "\n".join(lines), ok_rate and ok_429


# --- entry points -----------------------------------------------------------------------------


def _add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--latency-ms", type=int, default=200,
                        help="delay of every Tripletex request in the sandbox (default 200)")
    parser.add_argument("--workers", type=int, default=1, help="Celery worker processes")
    parser.add_argument("--concurrency", type=int, default=16, help="threads per worker")
    parser.add_argument("--admit-wait", type=float, default=None, metavar="S",
                        help="AIC_RATE_LIMIT_ADMIT_WAIT_SECONDS for the workers (default: the "
                             "project's, 0.5); 30 admits everything, as with the admission off")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--keep", action="store_true", help="keep logs and data")


def _execute(module: str, args: argparse.Namespace, load: str, body) -> int:
    database_url = os.environ.get("AIC_BENCH_DATABASE_URL") or None
    if args.admit_wait is not None:
        os.environ["AIC_RATE_LIMIT_ADMIT_WAIT_SECONDS"] = str(args.admit_wait)
    print("\n".join(header(module, args, database_url, load)), flush=True)
    inherited = sorted(k for k in os.environ
                       if k.startswith("AIC_") and k != "AIC_BENCH_DATABASE_URL")
    if inherited:
        shown = [f"{k}={os.environ[k]}" for k in inherited
                 if not any(word in k for word in ("URL", "TOKEN", "KEY", "SECRET"))]
        print(f"env      : children inherit {', '.join(shown)}")

    def run(tmp: Path) -> int:
        report, passed = body(tmp, database_url, say)
        print(report)
        return 0 if passed else 2

    return run_benchmark(f"aic-{module}-", args.keep, run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tenant_fairness",
        description="K tenants' batches back to back, each with its own small Tripletex budget: "
                    "throughput over the budgets' sum, each tenant's first start, attempts "
                    "spent by refusals (issue 12, target 4).")
    parser.add_argument("--orgs", type=int, default=8)
    parser.add_argument("--per-org", type=int, default=50, help="exports per organization")
    parser.add_argument("--rate", type=float, default=2.0,
                        help="each connection's client-side budget, requests/s (burst 1)")
    parser.add_argument("--first-start-bound", type=float, default=5.0,
                        help="PASS when every organization's first export started within this "
                             "many seconds of its batch (default 5: 'a few seconds')")
    _add_stack_arguments(parser)
    args = parser.parse_args(argv)
    if args.orgs < 1 or args.per_org < 1 or args.per_org > 500 or args.rate <= 0:
        parser.error("--orgs >= 1, 1 <= --per-org <= 500, --rate > 0")
    config = PoolConfig("threads", args.concurrency, args.workers)
    load = (f"{args.orgs} organizations x {args.per_org} approved expenses, one batch each, "
            f"posted back to back; each connection's budget {args.rate:g} requests/s (burst 1); "
            f"every Tripletex request delayed {args.latency_ms} ms; the sandbox enforces no "
            "limit of its own")

    def body(tmp: Path, database_url: str | None, say):
        figures = run(orgs=args.orgs, per_org=args.per_org, rate=args.rate,
                      latency_ms=args.latency_ms, config=config, server_limit=None,
                      timeout=args.timeout, run_dir=tmp / "run", database_url=database_url,
                      say=say)
        return fairness_report(figures, rate=args.rate, first_start_bound=args.first_start_bound)

    return _execute("tenant_fairness", args, load, body)


def main_held(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rate_limit_held",
        description="One tenant against the Tripletex sandbox's own rate limit: achieved rate "
                    "over the allowed rate and the 429s (issue 12, target 5).")
    parser.add_argument("--exports", type=int, default=300)
    parser.add_argument("--server-limit", type=int, default=100,
                        help="the sandbox's limit: requests per window (default 100)")
    parser.add_argument("--server-window", type=float, default=10.0,
                        help="the sandbox's fixed window, seconds (default 10)")
    parser.add_argument("--client-share", type=float, default=0.97,
                        help="the connection's limiter as a share of the allowed rate "
                             "(default 0.97, burst 1)")
    _add_stack_arguments(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.exports <= 500 or args.server_limit < 1 or args.server_window <= 0 \
            or not 0 < args.client_share <= 1.5:
        parser.error("1 <= --exports <= 500, --server-limit >= 1, --server-window > 0, "
                     "0 < --client-share <= 1.5")
    allowed = args.server_limit / args.server_window
    client_rate = round(allowed * args.client_share, 3)
    config = PoolConfig("threads", args.concurrency, args.workers)
    load = (f"1 organization, {args.exports} approved expenses in one batch; the sandbox allows "
            f"{args.server_limit} requests per {args.server_window:g} s fixed window "
            f"({allowed:g}/s, 429 beyond, X-Rate-Limit-* headers); the connection's limiter "
            f"{client_rate:g} requests/s (burst 1); every Tripletex request delayed "
            f"{args.latency_ms} ms")

    def body(tmp: Path, database_url: str | None, say):
        figures = run(orgs=1, per_org=args.exports, rate=client_rate,
                      latency_ms=args.latency_ms, config=config,
                      server_limit={"limit": args.server_limit,
                                    "window_seconds": args.server_window,
                                    "send_reset_header": True},
                      timeout=args.timeout, run_dir=tmp / "run", database_url=database_url,
                      say=say)
        return held_report(figures, allowed=allowed, client_rate=client_rate)

    return _execute("rate_limit_held", args, load, body)


if __name__ == "__main__":
    sys.exit(main())
