"""/api/v1/admin: organizations, API keys, target and source connections. Bearer AIC_ADMIN_TOKEN.

Which systems exist comes from ``shared.integrations.registry`` (the path enums of
``producers.api.schemas``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field

from producers.api.deps import require_admin
from producers.api.errors import BODY_ERROR_STATUSES, error_responses
from producers.api.schemas import (
    ID_PATTERN,
    ApiKeyCreated,
    ApiKeyOut,
    ApiKeyScope,
    CreateApiKey,
    ConnectionOut,
    CreateOrganization,
    OrganizationCreated,
    OrganizationOut,
    PutConnection,
    SourceSystem,
    StrictBody,
    TargetSystem,
)
from shared.db.models import ApiKey, Organization, SourceConnection, TargetConnection
from shared.db.session import session_scope
from shared.domain import organizations as service
from shared.domain import sources
from shared.integrations import registry
from sqlalchemy import select

router = APIRouter(prefix="/api/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=error_responses(401, 404, 422, 503, descriptions={
                       401: "Missing or wrong admin token", 404: "No such organization or key"}))
BODY_ERRORS = error_responses(*BODY_ERROR_STATUSES)
OrgId = Path(pattern=ID_PATTERN)


def connection_out(connection: TargetConnection) -> ConnectionOut:
    # Credentials never leave the server; has_credentials says whether they are set.
    return ConnectionOut(connection_id=connection.id, organization_id=connection.organization_id,
                         target_system=connection.target_system, base_url=connection.base_url,
                         account_mapping=connection.account_mapping or {},
                         options=connection.options or {},
                         has_credentials=bool(connection.credentials_encrypted),
                         updated_at=connection.updated_at)


def _scope_values(scopes: list[ApiKeyScope] | None) -> list[str] | None:
    return None if scopes is None else [scope.value for scope in scopes]


def api_key_out(k: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(api_key_id=k.id, name=k.name, prefix=k.key_prefix, scopes=k.scopes,
                     created_at=k.created_at, revoked_at=k.revoked_at)


@router.post("/organizations", response_model=OrganizationCreated, status_code=201,
             responses=BODY_ERRORS, summary="Create an organization and its first API key")
def create_organization(body: CreateOrganization) -> OrganizationCreated:
    with session_scope() as session:
        org = service.create_organization(session, body.name)
        key, plaintext = service.create_api_key(session, org.id,
                                                scopes=_scope_values(body.api_key_scopes))
        return OrganizationCreated(organization_id=org.id, name=org.name, api_key=plaintext,
                                   api_key_id=key.id, api_key_scopes=key.scopes)


@router.get("/organizations", response_model=list[OrganizationOut])
def list_organizations() -> list[OrganizationOut]:
    with session_scope() as session:
        orgs = session.scalars(select(Organization).order_by(Organization.created_at)).all()
        return [OrganizationOut(organization_id=o.id, name=o.name, created_at=o.created_at)
                for o in orgs]


@router.post("/organizations/{org_id}/api-keys", response_model=ApiKeyCreated, status_code=201,
             responses=BODY_ERRORS, summary="Create an API key",
             description="The body is optional: without it the key is named `default` and has "
                         "the `exports` scope only. A system that reports outcomes with the "
                         "status callback needs a key with `callbacks`.")
def create_api_key(body: CreateApiKey | None = None, org_id: str = OrgId) -> ApiKeyCreated:
    body = body or CreateApiKey()
    with session_scope() as session:
        key, plaintext = service.create_api_key(session, org_id, body.name,
                                                scopes=_scope_values(body.scopes))
        return ApiKeyCreated(api_key_id=key.id, api_key=plaintext, name=key.name,
                             scopes=key.scopes)


@router.get("/organizations/{org_id}/api-keys", response_model=list[ApiKeyOut])
def list_api_keys(org_id: str = OrgId) -> list[ApiKeyOut]:
    with session_scope() as session:
        org = service.get_organization(session, org_id)
        return [api_key_out(k) for k in org.api_keys]


@router.delete("/organizations/{org_id}/api-keys/{key_id}", response_model=ApiKeyOut)
def revoke_api_key(org_id: str = OrgId, key_id: str = Path(pattern=ID_PATTERN)) -> ApiKeyOut:
    with session_scope() as session:
        return api_key_out(service.revoke_api_key(session, org_id, key_id))


@router.put("/organizations/{org_id}/connections/{target_system}", response_model=ConnectionOut,
            responses=BODY_ERRORS)
def put_connection(body: PutConnection, target_system: TargetSystem,
                   org_id: str = OrgId) -> ConnectionOut:
    with session_scope() as session:
        connection = service.upsert_connection(
            session, org_id, target_system.value, base_url=body.base_url,
            credentials=body.credentials, account_mapping=body.account_mapping,
            options=body.options)
        return connection_out(connection)


@router.get("/organizations/{org_id}/connections", response_model=list[ConnectionOut])
def list_connections(org_id: str = OrgId) -> list[ConnectionOut]:
    with session_scope() as session:
        org = service.get_organization(session, org_id)
        return [connection_out(c) for c in org.connections]


def _per_source(describe) -> str:
    return "; ".join(f"{name}: {describe(system)}" for name, system in registry.sources().items())


class PutSource(StrictBody):
    base_url: str = Field(min_length=8, max_length=500, description="The source's API base, e.g. "
                          + _per_source(lambda s: s.base_url_example))
    credentials: dict[str, str] | None = Field(
        default=None, description=_per_source(lambda s: s.describe_credentials()) + ". "
                                  "Replaced as a whole; required for a new connection and "
                                  "whenever base_url changes (stored credentials never follow "
                                  "a new URL); omit to keep the stored ones.")
    webhook_secret: str | None = Field(
        default=None, max_length=200,
        description="When set, deliveries must carry X-AIC-Signature (HMAC-SHA256); '' removes it")
    target_system: TargetSystem | None = Field(
        default=None, description="Where the expenses are booked; may be omitted while only one "
                                  "target system is supported")
    options: dict[str, Any] | None = Field(
        default=None, description=_per_source(lambda s: ", ".join(s.options_model.model_fields))
        + ". Required for a new connection when the source has required options; omit to keep "
          "the stored ones.")


class SourceOut(BaseModel):
    source_connection_id: str
    organization_id: str
    source_system: str
    base_url: str
    target_system: str
    webhook_path: str = Field(description="Give the source this path on your public base URL")
    signed_webhooks: bool
    options: dict[str, Any]
    has_credentials: bool
    last_polled_at: datetime | None
    last_poll_error: str | None


def source_out(c: SourceConnection) -> SourceOut:
    # Credentials never leave the server; has_credentials says whether they are set.
    return SourceOut(source_connection_id=c.id, organization_id=c.organization_id,
                     source_system=c.source_system, base_url=c.base_url,
                     target_system=c.target_system,
                     webhook_path=f"/webhooks/{c.source_system}/{c.webhook_token}",
                     signed_webhooks=bool(c.webhook_secret_encrypted), options=c.options or {},
                     has_credentials=bool(c.credentials_encrypted),
                     last_polled_at=c.last_polled_at, last_poll_error=c.last_poll_error)


@router.put("/organizations/{org_id}/sources/{source_system}", response_model=SourceOut,
            responses=BODY_ERRORS)
def put_source(body: PutSource, source_system: SourceSystem, org_id: str = OrgId) -> SourceOut:
    with session_scope() as session:
        connection = sources.upsert_source_connection(
            session, org_id, source_system.value, base_url=body.base_url,
            credentials=body.credentials, webhook_secret=body.webhook_secret,
            target_system=body.target_system.value if body.target_system else None,
            options=body.options)
        return source_out(connection)


@router.get("/organizations/{org_id}/sources", response_model=list[SourceOut])
def list_sources(org_id: str = OrgId) -> list[SourceOut]:
    with session_scope() as session:
        service.get_organization(session, org_id)
        rows = session.scalars(select(SourceConnection).where(
            SourceConnection.organization_id == org_id)).all()
        return [source_out(c) for c in rows]
