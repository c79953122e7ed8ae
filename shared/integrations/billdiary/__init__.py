"""BillDiary ERP (the Integration API of a Laravel/UltimatePOS-based POS/ERP, seed 004): approved
expenses become BillDiary expense transactions. The client and its registry entry (``SYSTEM``,
listed in ``shared.integrations.registry``); the rules it follows are in ``client.py`` and
``mapping.py``, the API facts in ``/shared/guides/erp-integration-api.md``.

The CSV import endpoint (``POST /import/expenses``) is not used, on purpose: it returns no ids,
rolls the whole file back on one bad row and reports only the first error, takes payment-method
*labels* and category *names* (creating missing ones), and carries values over between rows.
None of that can be made exactly-once per export. A large backfill goes through the same
per-expense POST (batches through the API), which the rate limiter paces.
"""

from __future__ import annotations

from pydantic import ValidationError

from shared.config import get_settings
from shared.domain.organizations import ENGINE_OPTIONS
from shared.integrations.billdiary.client import BillDiaryClient
from shared.integrations.billdiary.mapping import SYSTEM as NAME
from shared.integrations.billdiary.models import BillDiaryOptions
from shared.integrations.errors import PermanentError
from shared.integrations.registry import CredentialField, TargetCapabilities, TargetSystem

def _default_rate_policy():
    from shared.integrations.rate_limit import RateLimitPolicy

    settings = get_settings()
    return RateLimitPolicy(
        requests_per_second=settings.billdiary_rate_limit_per_second,
        burst=settings.billdiary_rate_limit_burst,
        max_concurrent=settings.billdiary_rate_limit_max_concurrent,
    )


def connection_options(raw: dict | None) -> BillDiaryOptions:
    """A connection's options, or a PermanentError saying what to fix (the export fails with
    it, nothing sent). ``upsert_connection`` checks them when they are set; this catches a row
    stored before that check, or options a newer version reads differently."""
    mine = {k: v for k, v in (raw or {}).items() if k not in ENGINE_OPTIONS}
    try:
        return BillDiaryOptions.model_validate(mine)
    except ValidationError as error:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}"
                    for e in error.errors()]
        raise PermanentError(
            "the BillDiary connection's options are incomplete or wrong: " + "; ".join(problems)
            + " (set them with PUT /api/v1/admin/organizations/{org}/connections/billdiary)",
            system=NAME, code="bad_options", details=problems, sent=False) from None


def _build_client(connection, credentials, limiter) -> BillDiaryClient:
    return BillDiaryClient(
        connection.base_url,
        options=connection_options(connection.options),
        api_key=credentials.get("api_key"),
        api_secret=credentials.get("api_secret"),
        token=credentials.get("token"),
        limiter=limiter,
    )


SYSTEM = TargetSystem(
    name=NAME,
    display_name="BillDiary",
    credentials=(
        CredentialField("api_key", "Integration API key (Business settings > Integration API "
                                   "credentials); with api_secret, or give a token instead",
                        secret=False, required=False),
        CredentialField("api_secret", "Integration API secret", required=False),
        CredentialField("token", "personal access token (Bearer), instead of key and secret",
                        required=False),
    ),
    options_model=BillDiaryOptions,
    base_url_example="https://billdiary.com/api",
    default_rate_policy=_default_rate_policy,
    build_client=_build_client,
    capabilities=TargetCapabilities(
        lookup_by_reference=True,  # GET /expenses?q=<ref_no>, exact ref_no kept
        # ASSUMED; AIC_BILLDIARY_SEARCH_DELAY_SECONDS / options.search_delay_seconds override.
        search_delay_seconds=5.0,
        reference_max_length=191,  # ref_no: Laravel string, max 191
        attachments=True,
        drafts=False,  # expenses are stored with status final
    ),
)

__all__ = ["SYSTEM", "BillDiaryClient", "BillDiaryOptions", "connection_options"]
