"""Findity Connect: the expense platform our exports come from.

``FindityClient`` talks to one organization's Connect API; ``models`` holds every Findity shape
(the one place to correct when Findity's real contract differs from our assumptions).
"""

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

__all__ = [
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
