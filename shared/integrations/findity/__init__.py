"""Findity Connect: the expense platform our exports come from.

``FindityClient`` talks to one organization's Connect API; ``models`` holds every Findity shape
(the one place to correct when Findity's real contract differs from our assumptions).
``SYSTEM`` is its entry in ``shared.integrations.registry``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.integrations.registry import (
    CredentialField,
    Discovery,
    ReportGranularity,
    SourceCapabilities,
    SourceSystem,
)

from shared.integrations.findity.adapter import FinditySource, parse_webhook
from shared.integrations.findity.client import FindityClient
from shared.integrations.findity.models import (
    OWED_TO_EMPLOYEE_ACCOUNT,
    VAT_ACCOUNT,
    AccountingVoucher,
    Dimension,
    ExportList,
    ExportStatus,
    FindityErrorBody,
    FindityErrorCode,
    FindityExport,
    ListEnvelope,
    ListMeta,
    PaymentRow,
    PaymentVoucher,
    Recipient,
    TokenResponse,
    UpdateStatusRequest,
    VerificationListsType,
    Voucher,
    VoucherFailedUpdate,
    VoucherPackage,
    VoucherRow,
    VoucherStatus,
    VoucherStatusUpdate,
    VoucherSuccessUpdate,
    WebhookBody,
)



class FindityOptions(BaseModel):
    """``SourceConnection.options`` of a Findity connection."""

    model_config = ConfigDict(extra="allow")

    # Our organization's id in Findity: in the API's paths, and a webhook naming another
    # organization is refused.
    organization_id: str = Field(min_length=1, max_length=100)
    # Also attach an SIE 4 or CSV file of each completed package to the Findity export.
    content_file: Literal["sie4", "csv"] | None = None
    # VAT code -> rate (percent), over the Norwegian defaults, for merging Findity's VAT rows.
    vat_rates: dict[str, Decimal] = {}


def _build_client(connection, credentials) -> FinditySource:
    return FinditySource(connection.base_url, token_url=credentials["token_url"],
                         client_id=credentials["client_id"],
                         client_secret=credentials["client_secret"],
                         organization_id=connection.options["organization_id"])


SYSTEM = SourceSystem(
    name="findity",
    display_name="Findity",
    credentials=(
        CredentialField("client_id", "OAuth2 client id", secret=False),
        CredentialField("client_secret", "OAuth2 client secret"),
        # The client secret is sent there: a credential, so it never changes without the secret.
        CredentialField("token_url", "OAuth2 token endpoint", secret=False, url=True),
    ),
    organization_option="organization_id",
    options_model=FindityOptions,
    base_url_example="https://api.findity.com/api",
    build_client=_build_client,
    parse_webhook=parse_webhook,
    capabilities=SourceCapabilities(
        # The export-ready webhook, and the unprocessed-exports list polled as its backstop.
        discovery=frozenset({Discovery.WEBHOOK, Discovery.POLL_FEED}),
        report_granularity=ReportGranularity.PER_ITEM,  # updatestatus, many vouchers per call
        attachments=True,  # basis PDFs
    ),
)

__all__ = [
    "SYSTEM",
    "FindityOptions",
    "OWED_TO_EMPLOYEE_ACCOUNT",
    "VAT_ACCOUNT",
    "AccountingVoucher",
    "Dimension",
    "ExportList",
    "ExportStatus",
    "FindityClient",
    "FindityErrorBody",
    "FindityErrorCode",
    "FindityExport",
    "ListEnvelope",
    "ListMeta",
    "PaymentRow",
    "PaymentVoucher",
    "Recipient",
    "TokenResponse",
    "UpdateStatusRequest",
    "VerificationListsType",
    "Voucher",
    "VoucherFailedUpdate",
    "VoucherPackage",
    "VoucherRow",
    "VoucherStatus",
    "VoucherStatusUpdate",
    "VoucherSuccessUpdate",
    "WebhookBody",
]
