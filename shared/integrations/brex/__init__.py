"""Brex: card and reimbursement expenses, read by polling the Expenses API (seed 003,
``shared/guides/brex-expenses.md``, Brex's spec in ``shared/specs/brex/``).

``BrexClient`` talks to one account's Expenses API; ``BrexSource`` is its adapter for the
engine; ``conversion`` turns an expense (or an itemized family) into our expense; ``models``
holds every Brex shape and ``currencies`` the ISO 4217 exponents. ``SYSTEM`` is its entry in
``shared.integrations.registry``.

Report granularity: PER_ITEM, because what Brex can take back is one memo per expense, any
number of expenses per report task. Write-back is optional per connection
(``memo_write_back``, off by default: it needs the ``expenses.card`` scope and changes a text
the employee sees). A capability is static (what the system can do); whether a connection uses
it is an option the adapter reads: with write-back off ``send_reports`` sends nothing and
returns, so the engine records each report as held at once and the unit completes exactly as
if Brex had taken it. The engine needs no per-connection capability for that.
"""

from __future__ import annotations

from shared.integrations.brex.adapter import BrexSource
from shared.integrations.brex.client import BrexClient, UserToken
from shared.integrations.brex.options import BrexOptions, read_options
from shared.integrations.errors import AuthError
from shared.integrations.registry import (
    CredentialField,
    Discovery,
    ReportGranularity,
    SourceCapabilities,
    SourceSystem,
)


def _build_client(connection, credentials) -> BrexSource:
    token = (credentials or {}).get("user_token")
    if not token:
        # Until source credentials are registry-driven, a connection stored the Findity way
        # holds client_id/client_secret: an IntegrationError naming what is missing, so the
        # poll records it for this connection and goes on with the others (a KeyError would
        # not).
        raise AuthError("this Brex connection holds no user_token: store the Brex user token "
                        "as its credentials", system="brex", code="missing_credentials")
    return BrexSource(connection.base_url, token=UserToken(token),
                      options=read_options(connection.options))


SYSTEM = SourceSystem(
    name="brex",
    display_name="Brex",
    credentials=(
        # A user token (dashboard > Developer > Settings) with expenses.card.readonly, plus
        # expenses.card for the memo write-back. Partners would hold OAuth credentials instead
        # (client_id, client_secret, refresh_token; see client.py); not supported yet.
        CredentialField("user_token", "Brex user token (Bearer)"),
    ),
    options_model=BrexOptions,
    base_url_example="https://api.brex.com",
    build_client=_build_client,
    capabilities=SourceCapabilities(
        discovery=frozenset({Discovery.POLL_CURSOR}),  # no "expense approved" webhook [doc]
        report_granularity=ReportGranularity.PER_ITEM,  # the memo, when the connection wants it
        attachments=True,  # receipts from pre-signed links
    ),
)

__all__ = ["SYSTEM", "BrexClient", "BrexOptions", "BrexSource", "UserToken"]
