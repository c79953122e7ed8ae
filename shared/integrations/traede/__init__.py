"""TRAEDE: a Danish B2B wholesale platform whose Export API hands us ready-made double-entry
accounting entries (seed 001, shared/guides/entries-export-api.md).

``TraedeClient`` talks to the Export API for one ``system_id``; ``TraedeSource`` is its adapter
for the engine; ``models`` holds every TRAEDE shape, ``options`` the connection's options,
``conversion`` the rules that turn an entry into an expense. ``SYSTEM`` is its entry in
``shared.integrations.registry``.
"""

from __future__ import annotations

from pydantic import ValidationError

from shared.integrations.errors import PermanentError
from shared.integrations.registry import (
    CredentialField,
    Discovery,
    ReportGranularity,
    SourceCapabilities,
    SourceSystem,
)
from shared.integrations.traede.adapter import TraedeSource
from shared.integrations.traede.client import APP_KEY_HEADER, TraedeClient
from shared.integrations.traede.models import MARK_MAX, AccountingEntry, MarkItem
from shared.integrations.traede.options import TraedeOptions


def _build_client(connection, credentials) -> TraedeSource:
    """A connection stored without what TRAEDE needs is a ``PermanentError`` naming it, so the
    poll records it for this connection and goes on with the others (a KeyError would not)."""
    missing = [name for name in ("access_token", "app_key") if not credentials.get(name)]
    if missing:
        raise PermanentError(
            f"the TRAEDE connection {connection.id} has no {' and '.join(missing)} among its "
            "credentials: set the connection's credentials (access_token, app_key)",
            system="traede", code="missing_credentials")
    try:
        options = TraedeOptions.model_validate(connection.options or {})
    except ValidationError as invalid:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}"
                             for e in invalid.errors())
        raise PermanentError(f"the TRAEDE connection {connection.id} has invalid options "
                             f"({problems}): fix them on the connection", system="traede",
                             code="invalid_options") from None
    return TraedeSource(connection.base_url, access_token=credentials["access_token"],
                        app_key=credentials["app_key"], options=options)


SYSTEM = SourceSystem(
    name="traede",
    display_name="TRAEDE",
    credentials=(
        CredentialField("access_token", "API token created in TRAEDE on behalf of a user "
                        "(sent as Authorization: Bearer)"),
        CredentialField("app_key", f"the integration's API App key ({APP_KEY_HEADER})"),
    ),
    options_model=TraedeOptions,
    base_url_example="https://api.traede.com/v10",
    build_client=_build_client,
    # TRAEDE keeps its export marks per system_id: a new one lists every entry as never
    # exported (seed 001), so it cannot change once the connection has received entries.
    options_fixed_once_used=("system_id",),
    capabilities=SourceCapabilities(
        # A "not exported yet" feed per system_id; TRAEDE sends no webhooks.
        discovery=frozenset({Discovery.POLL_FEED}),
        report_granularity=ReportGranularity.CHUNKED,  # mark-as-exported takes at most 10
        report_chunk_size=MARK_MAX,
        attachments=False,
    ),
)

__all__ = [
    "SYSTEM",
    "AccountingEntry",
    "MarkItem",
    "TraedeClient",
    "TraedeOptions",
    "TraedeSource",
]
