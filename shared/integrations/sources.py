"""Which client talks to which expense source; one cached client per source connection."""

from __future__ import annotations

from shared.db.models import SourceConnection
from shared.domain.sources import source_credentials
from shared.integrations.client_cache import ClientCache
from shared.integrations.findity import FindityClient


def _build(connection: SourceConnection) -> FindityClient:
    if connection.source_system != "findity":
        raise ValueError(f"no client for source system {connection.source_system!r}")
    credentials = source_credentials(connection)
    return FindityClient(connection.base_url, token_url=connection.token_url,
                         client_id=credentials["client_id"],
                         client_secret=credentials["client_secret"],
                         organization_id=connection.external_organization_id)


_cache: ClientCache[FindityClient] = ClientCache(_build)
source_client_for = _cache.get
