"""``make run`` / ``python -m devstack.run``: the whole system on this machine, until Ctrl-C.

Starts the stack of devstack.stack (embedded Redis unless AIC_REDIS_URL is set, both sandboxes,
API, worker, beat, Flower), seeds the demo organization, prints where everything is, and then
watches the children: Ctrl-C or SIGTERM stops them all in reverse order; a child that dies on
its own is named, with the end of its log, and the rest are stopped too (exit status 1).
"""

from __future__ import annotations

import shlex
import sys
import time

from devstack import sources_demo
from devstack.findity_demo import FindityDemo, send_demo_export
from devstack.stack import SeedResult, Stack, StackError, redact_url, stop_on_signals


def banner(stack: Stack, seed: SeedResult, findity: FindityDemo | None,
           polled: sources_demo.SourcesDemo | None = None) -> str:
    key = seed.api_key
    exports = f"{stack.api_url}/api/v1/accounting-exports"
    fresh = [e for e in seed.expenses if not e["live_export_status"]]
    # Every demo expense exported in an earlier run: the example asks for a re-export.
    example = fresh[0] if fresh else seed.expenses[0]
    reexport = "" if fresh else ', "reexport": true'
    auth = shlex.quote(f"Authorization: Bearer {key}")
    redis = redact_url(stack.redis_url) + ("  (embedded)" if stack.redis_is_embedded else "")
    lines = [
        "",
        "=" * 78,
        " Accounting Integration Client is running. Ctrl-C stops everything.",
        "=" * 78,
        f" API                {exports}",
        f" API docs           {stack.docs_url}",
        f" Health             {stack.api_url}/healthz",
        f" Flower (Celery)    {stack.flower_url}",
        f" Metrics            {stack.api_url}/metrics  and the worker's "
        f"http://127.0.0.1:{stack.worker_metrics_port}/metrics",
        f" Tripletex sandbox  {stack.tripletex_url}/v2   (company {seed.sandbox_company_id})",
        f" Findity sandbox    {stack.findity_url}",
        f" BillDiary sandbox  {stack.billdiary_url}/api   (business {seed.billdiary_business_id})",
        f" TRAEDE sandbox     {stack.traede_url}/v10",
        f" Brex sandbox       {stack.brex_url}/v1",
        f" Redis              {redis}",
        f" Database           {redact_url(stack.database_url)}",
        f" Logs               {stack.log_dir}/",
        "",
        f" Organization       {seed.organization_id}",
        f" API key            {key}",
        "                    (new on every start, shown only here)",
        f" Admin token        {stack.settings.admin_token}   (AIC_ADMIN_TOKEN)",
        "",
        " Demo expenses (approved, ready to export):",
    ]
    for expense in seed.expenses:
        exported = expense["live_export_status"]
        lines.append(
            f"   {expense['expense_id']}  {expense['expense_date']}  "
            f"{expense['amount']:>9} {expense['currency']}  {expense['description']}"
            + (f"  [{exported} in an earlier run]" if exported else "")
        )
    lines.append(" Demo expenses for BillDiary (target_system \"billdiary\"):")
    for expense in seed.billdiary_expenses:
        exported = expense["live_export_status"]
        lines.append(
            f"   {expense['expense_id']}  {expense['expense_date']}  "
            f"{expense['amount']:>9} {expense['currency']}  {expense['description']}"
            + (f"  [{exported} in an earlier run]" if exported else "")
        )
    lines += [
        "",
        " Export one:",
        f"   curl -s -X POST {exports} \\",
        f"     -H {auth} -H 'Content-Type: application/json' \\",
        f"     -d '{{\"expense_id\": \"{example['expense_id']}\", "
        f"\"target_system\": \"tripletex\"{reexport}}}'",
        " Then watch it:",
        f"   curl -s {exports} -H {auth}",
    ]
    if findity is not None:
        lines += [
            "",
            f" Findity: export {findity.export_id} ({len(findity.voucher_ids)} vouchers) was just "
            "sent by webhook to",
            f"   {findity.webhook_url}",
            " Watch it arrive, get booked in the Tripletex sandbox and reported back:",
            f"   curl -s {stack.api_url}/api/v1/source-exports -H {auth}",
        ]
    if polled is not None:
        lines += [
            "",
            f" TRAEDE: {len(polled.traede_entry_ids)} entries (company "
            f"{polled.traede_company_id}) and Brex: {len(polled.brex_expense_ids)} purchases "
            f"(account {polled.brex_account_id}) were seeded and a poll queued (beat polls every "
            "AIC_POLL_INTERVAL_SECONDS; `aic source poll` asks for one now). They land in the "
            "same list; the entries get marked exported, the purchases' memos name the voucher.",
        ]
    lines += ["=" * 78, ""]
    return "\n".join(lines)


def main() -> int:
    stop_on_signals()
    stack = Stack(preferred_ports=True, say=lambda text: print(f"[devstack] {text}", flush=True))
    try:
        stack.start()
        seed = stack.seed()
        findity = send_demo_export(api_url=stack.api_url, findity_url=stack.findity_url,
                                   admin_token=stack.settings.admin_token,
                                   organization_id=seed.organization_id)
        polled = sources_demo.connect_and_seed(
            api_url=stack.api_url, traede_url=stack.traede_url, brex_url=stack.brex_url,
            admin_token=stack.settings.admin_token, organization_id=seed.organization_id)
        sources_demo.queue_poll(stack.redis_url, stack.settings.maintenance_queue)
        print(banner(stack, seed, findity, polled), flush=True)
        while True:
            dead = stack.first_dead()
            if dead is not None:
                print(f"\n[devstack] {stack.describe_death(dead)}", file=sys.stderr, flush=True)
                print("[devstack] stopping the rest", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\n[devstack] stopping (each child gets up to 10 s to finish its work)", flush=True)
        return 0
    except StackError as exc:
        print(f"\n[devstack] {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()
        print("[devstack] stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
