"""Request dependencies: who is calling, and the request's one database session.

A request is one unit of work in one session (``RequestSession``): the API key lookup and the
endpoint's work share it, so a request checks out one pooled connection (one pre-ping) and
commits once. The session is a ``scope="function"`` dependency: its ``session_scope`` commits
when the endpoint returns and before the response is sent (and jobs are enqueued after that
commit), never after the client already read "202 Accepted"; an error in the commit is the
response. (Two sessions per request, the lookup's and the endpoint's, cost the list about as much
as its query did: issue 12, target 7.)
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db.session import session_scope
from shared.domain.organizations import API_KEY_SCOPES, active_api_key
from producers.api.errors import ApiError


# Declared so that /docs shows "Authorize" and the OpenAPI document says how to authenticate.
# They read nothing themselves (auto_error=False): ``_bearer`` below does, with our own error
# messages instead of FastAPI's bare 403 "Not authenticated".
api_key_scheme = HTTPBearer(
    scheme_name="ApiKey", auto_error=False,
    description="An organization's API key (`aic org create`, `aic apikey create`).")
admin_token_scheme = HTTPBearer(
    scheme_name="AdminToken", auto_error=False,
    description="The administrator token (AIC_ADMIN_TOKEN) for /api/v1/admin.")
Declared = HTTPAuthorizationCredentials | None


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
    api_key_id: str
    scopes: frozenset[str]

    @property
    def actor(self) -> str:
        # The key, not just the organization: the event log says which integration did it.
        return f"api_key:{self.api_key_id}"


def request_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


# The request's session: ``session: Session = RequestSession``. FastAPI gives every dependency of
# one request the same one (dependencies are cached per request).
RequestSession = Depends(request_session, scope="function")


def current_caller(request: Request, session: Session) -> Caller:
    """Whoever holds a valid key, whatever its scopes: use ``require_scope`` on endpoints."""
    plaintext = _bearer(request)
    key = active_api_key(session, plaintext)
    if key is None:
        raise ApiError(401, "invalid_api_key",
                       "this API key is unknown or revoked; ask an administrator for a new one",
                       headers={"WWW-Authenticate": "Bearer"})
    return Caller(organization_id=key.organization_id, api_key_id=key.id,
                  scopes=frozenset(key.scopes))


def require_scope(scope: str):
    """A dependency that returns the caller if its key has ``scope``, and answers 403 naming the
    missing scope otherwise (before the request touches anything)."""
    if scope not in API_KEY_SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def caller_with_scope(request: Request, _declared: Declared = Security(api_key_scheme),
                          session: Session = RequestSession) -> Caller:
        caller = current_caller(request, session)
        if scope not in caller.scopes:
            raise ApiError(
                403, "missing_scope",
                f"this API key lacks the '{scope}' scope, which this operation needs ({scope}: "
                f"{API_KEY_SCOPES[scope]}); the key has: {', '.join(sorted(caller.scopes))}. "
                f"Ask an administrator for a key with the '{scope}' scope")
        return caller

    caller_with_scope.__name__ = f"caller_with_{scope}_scope"
    return caller_with_scope


exports_caller = require_scope("exports")
callbacks_caller = require_scope("callbacks")


def require_admin(request: Request, _declared: Declared = Security(admin_token_scheme)) -> None:
    token = _bearer(request)
    if not hmac.compare_digest(token.encode(), get_settings().admin_token.encode()):
        raise ApiError(401, "invalid_admin_token", "this admin token is not valid",
                       headers={"WWW-Authenticate": "Bearer"})
