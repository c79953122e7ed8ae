"""``make demo`` / ``python -m devstack.demo``: one export run end to end, then exit.

Starts the same stack as ``make run`` (devstack.stack), but on its own state under var/demo/ (a
fresh SQLite database, its own embedded Redis unless AIC_REDIS_URL is set, free ports) so that it
neither depends on nor disturbs the data of ``make run``. Then, as a client would, over HTTP with
the demo organization's API key:

1. POST /api/v1/accounting-exports/batch twice: the Tripletex demo expenses to ``tripletex``,
   the BillDiary ones to ``billdiary`` (the demo organization has a connection to each);
2. GET /api/v1/accounting-exports?batch_id=... until every export is terminal (bounded wait);
3. GET /api/v1/accounting-exports/{id} for each;
4. read each sandbox's ledger through its control API (not through our code) and count, per
   export, the records that carry the export id (Tripletex: externalVoucherNumber; BillDiary:
   ref_no), and their attachments;
5. print a table per target.

Exit status 0 only if every export ended in ``success`` with exactly one record in its target.
"""

from __future__ import annotations

import argparse
import sys
import time

import httpx

from devstack import sources_demo
from devstack.findity_demo import send_demo_export, wait_until_reported
from devstack.stack import Stack, StackError, stop_on_signals
from shared.config import DEFAULT_VAR_DIR
from shared.domain.statuses import ExportStatus

DEMO_VAR_DIR = DEFAULT_VAR_DIR / "demo"
TERMINAL = {ExportStatus.SUCCESS.value, ExportStatus.FAILED.value, ExportStatus.CANCELLED.value}
EXPORTS_PATH = "/api/v1/accounting-exports"


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _fresh_state() -> str:
    """Remove the previous demo's database and Redis data; return the demo database URL."""
    DEMO_VAR_DIR.mkdir(parents=True, exist_ok=True)
    database = DEMO_VAR_DIR / "aic.db"
    for path in (database, database.with_name("aic.db-wal"), database.with_name("aic.db-shm")):
        path.unlink(missing_ok=True)
    return f"sqlite:///{database}"


def export_batch(client: httpx.Client, expense_ids: list[str], target_system: str) -> dict:
    response = client.post(
        f"{EXPORTS_PATH}/batch", json={"expense_ids": expense_ids, "target_system": target_system}
    )
    if response.status_code != 202:
        raise StackError(
            f"POST {EXPORTS_PATH}/batch answered {response.status_code}: {response.text}"
        )
    return response.json()


def wait_until_terminal(
    client: httpx.Client, batch_id: str, count: int, timeout: float
) -> list[dict]:
    """Poll the list endpoint until the batch's ``count`` exports are terminal or time runs out."""
    deadline = time.monotonic() + timeout
    last_progress = None
    while True:
        response = client.get(EXPORTS_PATH, params={"batch_id": batch_id, "limit": 100})
        response.raise_for_status()
        exports = response.json()["data"]
        done = sum(1 for e in exports if e["status"] in TERMINAL)
        progress = (len(exports), done)
        if progress != last_progress:
            say(f"{done}/{count} exports terminal")
            last_progress = progress
        if len(exports) >= count and done == len(exports):
            return exports
        if time.monotonic() > deadline:
            say(f"gave up waiting after {timeout:.0f}s")
            return exports
        time.sleep(0.5)


def sandbox_vouchers(tripletex_url: str, company_id: str) -> dict[str, list[dict]]:
    """The sandbox company's vouchers by externalVoucherNumber (our export id)."""
    response = httpx.get(f"{tripletex_url}/_sandbox/companies/{company_id}/vouchers", timeout=10.0)
    response.raise_for_status()
    found: dict[str, list[dict]] = {}
    for voucher in response.json():
        found.setdefault(voucher.get("externalVoucherNumber") or "", []).append(voucher)
    return found


def billdiary_expenses(billdiary_url: str, business_id: int) -> dict[str, list[dict]]:
    """The sandbox business's live expenses by ref_no (our export id), with a Tripletex-like
    ``attachments`` list (its stored documents)."""
    response = httpx.get(f"{billdiary_url}/_sandbox/businesses/{business_id}/expenses",
                         timeout=10.0)
    response.raise_for_status()
    found: dict[str, list[dict]] = {}
    for expense in response.json():
        if not expense["deleted"]:
            stored = [d for d in expense["documents"] if d["outcome"] == "stored"]
            found.setdefault(expense["ref_no"] or "", []).append(
                {**expense, "attachments": stored})
    return found


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _report_target(display: str, expenses: list[dict], details: list[dict],
                   ledger: dict[str, list[dict]]) -> bool:
    """Print the exports of one target next to what its sandbox holds; True if each export
    succeeded with exactly one record there."""
    order = [e["expense_id"] for e in expenses]
    by_expense = {e["expense_id"]: e for e in expenses}
    details.sort(key=lambda d: order.index(d["expense_id"]) if d["expense_id"] in order else 0)
    rows, ok = [], len(details) == len(expenses)
    for d in details:
        records = ledger.get(d["export_id"], [])
        attachments = sum(len(r["attachments"]) for r in records)
        ok = ok and d["status"] == ExportStatus.SUCCESS.value and len(records) == 1
        rows.append([
            d["export_id"],
            d["expense_id"],
            by_expense.get(d["expense_id"], {}).get("description", "")[:38],
            d["status"],
            d["external_reference"] or "-",
            str(d["attempts"]),
            str(len(records)),
            str(attachments),
        ])
    print()
    print(table(rows, ["export", "expense", "description", "status", "external reference",
                       "attempts", "records", "receipts"]))
    print()
    print(f"records, receipts: what the {display} sandbox holds for the export "
          "(read through its control API)")
    print()
    for d in details:
        if d["status"] != ExportStatus.SUCCESS.value and d.get("error_message"):
            print(f"{d['export_id']}: {d['error_message']}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for all exports to finish (default 120)")
    args = parser.parse_args(argv)
    stop_on_signals()

    stack = Stack(DEMO_VAR_DIR, database_url=_fresh_state(), persistent_redis=False, say=say)
    try:
        stack.start()
        seed = stack.seed()
        say(f"stack is up: API {stack.api_url}, Flower {stack.flower_url}, logs {stack.log_dir}/")
        headers = {"Authorization": f"Bearer {seed.api_key}"}
        findity = send_demo_export(api_url=stack.api_url, findity_url=stack.findity_url,
                                   admin_token=stack.settings.admin_token,
                                   organization_id=seed.organization_id)
        say(f"Findity export {findity.export_id} sent by webhook "
            f"({len(findity.voucher_ids)} vouchers)")
        polled = sources_demo.connect_and_seed(
            api_url=stack.api_url, traede_url=stack.traede_url, brex_url=stack.brex_url,
            admin_token=stack.settings.admin_token, organization_id=seed.organization_id)
        say(f"TRAEDE: {len(polled.traede_entry_ids)} entries, Brex: "
            f"{len(polled.brex_expense_ids)} purchases seeded; polled as beat would")
        targets = [
            ("tripletex", "Tripletex", seed.expenses,
             lambda: sandbox_vouchers(stack.tripletex_url, seed.sandbox_company_id)),
            ("billdiary", "BillDiary", seed.billdiary_expenses,
             lambda: billdiary_expenses(stack.billdiary_url, seed.billdiary_business_id)),
        ]
        ok = True
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=10.0) as client:
            batches = []
            for target, display, expenses, _ in targets:
                ids = [e["expense_id"] for e in expenses]
                batch = export_batch(client, ids, target)
                say(f"batch {batch['batch_id']}: {len(ids)} expenses sent to {target}")
                batches.append(batch)
            started = time.monotonic()
            for (target, display, expenses, read_ledger), batch in zip(targets, batches):
                exports = wait_until_terminal(client, batch["batch_id"], len(expenses),
                                              args.timeout)
                details = []
                for summary in exports:
                    response = client.get(f"{EXPORTS_PATH}/{summary['export_id']}")
                    response.raise_for_status()
                    details.append(response.json())
                ok = _report_target(display, expenses, details, read_ledger()) and ok
            elapsed = time.monotonic() - started
        by_expense = {e["expense_id"]: e for _, _, expenses, _ in targets for e in expenses}
        reported = wait_until_reported(stack.findity_url, findity, args.timeout)
        print(table([[voucher_id, reported.get(voucher_id, {}).get("status", "not reported"),
                      str(reported.get(voucher_id, {}).get("voucherNumber", "-")),
                      reported.get(voucher_id, {}).get("errorText", "")]
                     for voucher_id in findity.voucher_ids],
                    ["Findity voucher", "reported to Findity", "voucher number", "error"]))
        print()
        findity_ok = (len(reported) == len(findity.voucher_ids)
                      and all(u["status"] == "SUCCESS" for u in reported.values()))
        say(f"Findity export {findity.export_id}: "
            + ("every voucher booked and reported SUCCESS" if findity_ok else "NOT OK"))
        ok = ok and findity_ok
        marks, memos = sources_demo.wait_until_reported(
            traede_url=stack.traede_url, brex_url=stack.brex_url, demo=polled,
            timeout=args.timeout, poll=lambda: sources_demo.queue_poll(
                stack.redis_url, stack.settings.maintenance_queue))
        ledger = sandbox_vouchers(stack.tripletex_url, seed.sandbox_company_id)
        voucher_numbers = {str(v["number"]): ref for ref, vs in ledger.items() for v in vs}
        per_ref = {ref: len(vs) for ref, vs in ledger.items()}
        rows, sources_ok = [], True
        for entry_id in polled.traede_entry_ids:
            note = marks.get(entry_id)
            once = note in voucher_numbers and per_ref[voucher_numbers[note]] == 1
            sources_ok = sources_ok and once
            rows.append([f"TRAEDE entry {entry_id}", "marked exported" if note else "not marked",
                         note or "-", "1" if once else "?"])
        for expense_id in polled.brex_expense_ids:
            memo = memos.get(expense_id, "")
            number = (memo.split("[Booked as voucher ", 1)[1].split(" ", 1)[0]
                      if "[Booked as voucher " in memo else None)
            once = number in voucher_numbers and per_ref[voucher_numbers[number]] == 1
            sources_ok = sources_ok and once
            rows.append([f"Brex purchase {expense_id}", "memo written" if number else "no memo",
                         number or "-", "1" if once else "?"])
        print(table(rows, ["source item", "reported back", "voucher number",
                           "Tripletex vouchers"]))
        print()
        say("TRAEDE and Brex: " + ("every item booked once and reported back"
                                   if sources_ok else "NOT OK"))
        ok = ok and sources_ok
        say(f"{len(by_expense)} exports to two targets finished in {elapsed:.1f}s"
            + ("; each is one record in its sandbox (Tripletex voucher, BillDiary expense)"
               if ok else
               f"; NOT OK (see the table; logs in {stack.log_dir}/)"))
        return 0 if ok else 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except (StackError, httpx.HTTPError) as exc:
        print(f"[demo] {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
