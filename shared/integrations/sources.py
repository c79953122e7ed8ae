"""Which client talks to which expense source; one cached client per source connection.

Which client a system gets is its registry entry's ``build_client``
(``shared.integrations.registry``).
"""

from __future__ import annotations

from typing import Any

from shared.db.models import SourceConnection
from shared.domain.sources import source_credentials
from shared.integrations import registry
from shared.integrations.client_cache import ClientCache


def _build(connection: SourceConnection) -> Any:
    # UnknownSystem (a ValueError) for a row whose system is no longer registered.
    system = registry.source(connection.source_system)
    return system.build_client(connection, source_credentials(connection))


_cache: ClientCache[Any] = ClientCache(_build)
source_client_for = _cache.get

