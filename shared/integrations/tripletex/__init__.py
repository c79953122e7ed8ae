"""Tripletex API v2 (Norway): the client the export worker uses to book vouchers, and its
registry entry (``SYSTEM``, listed in ``shared.integrations.registry``)."""

from __future__ import annotations

from shared.config import get_settings
from shared.integrations.registry import CredentialField, TargetCapabilities, TargetSystem
from shared.integrations.tripletex.client import RateLimitStatus, TripletexClient, TripletexOptions
from shared.integrations.tripletex.models import WhoAmI


def _default_rate_policy():
    from shared.integrations.rate_limit import RateLimitPolicy

    settings = get_settings()
    return RateLimitPolicy(
        requests_per_second=settings.tripletex_rate_limit_per_second,
        burst=settings.tripletex_rate_limit_burst,
        max_concurrent=settings.tripletex_rate_limit_max_concurrent,
    )


def _build_client(connection, credentials, limiter) -> TripletexClient:
    return TripletexClient(
        connection.base_url,
        consumer_token=credentials["consumer_token"],
        employee_token=credentials["employee_token"],
        company_id=str(credentials.get("company_id", "0")),
        options=TripletexOptions.model_validate(connection.options or {}),
        limiter=limiter,
    )


SYSTEM = TargetSystem(
    name="tripletex",
    display_name="Tripletex",
    credentials=(
        CredentialField("consumer_token", "the integration's consumer token"),
        CredentialField("employee_token", "the company's employee token"),
        CredentialField("company_id", "Basic-auth user: 0 = the token owner's company "
                                      "(default 0)", secret=False, required=False),
    ),
    options_model=TripletexOptions,
    base_url_example="https://api-test.tripletex.tech/v2",
    default_rate_policy=_default_rate_policy,
    build_client=_build_client,
    capabilities=TargetCapabilities(
        lookup_by_reference=True,  # GET /ledger/voucher/>externalVoucherNumber
        # ASSUMED (Tripletex documents nothing); AIC_TRIPLETEX_SEARCH_DELAY_SECONDS and the
        # connection's options.search_delay_seconds override it in the client.
        search_delay_seconds=5.0,
        reference_max_length=70,  # externalVoucherNumber
        attachments=True,
        drafts=True,  # sendToLedger=false
    ),
)

__all__ = ["SYSTEM", "RateLimitStatus", "TripletexClient", "TripletexOptions", "WhoAmI"]
