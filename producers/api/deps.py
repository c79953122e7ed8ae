"""Request dependencies: who is calling.

Endpoints open their own ``session_scope()`` so the commit happens before the response is sent
(and the job is enqueued after that commit), never in a dependency's teardown after the client
already read "202 Accepted".
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from shared.config import get_settings
from shared.db.session import session_scope
from shared.domain.organizations import organization_for_api_key
from producers.api.errors import ApiError


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise ApiError(401, "missing_api_key",
                       "send your API key as 'Authorization: Bearer <key>'",
                       headers={"WWW-Authenticate": "Bearer"})
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "invalid_authorization",
                       "the Authorization header must be 'Bearer <key>'",
                       headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


@dataclass(frozen=True)
class Caller:
    organization_id: str

    @property
    def actor(self) -> str:
        return f"api:{self.organization_id}"


def current_caller(request: Request) -> Caller:
    key = _bearer(request)
    with session_scope() as session:
        org = organization_for_api_key(session, key)
    if org is None:
        raise ApiError(401, "invalid_api_key",
                       "this API key is unknown or revoked; ask an administrator for a new one",
                       headers={"WWW-Authenticate": "Bearer"})
    return Caller(organization_id=org.id)


def require_admin(request: Request) -> None:
    token = _bearer(request)
    if not hmac.compare_digest(token.encode(), get_settings().admin_token.encode()):
        raise ApiError(401, "invalid_admin_token", "this admin token is not valid",
                       headers={"WWW-Authenticate": "Bearer"})
