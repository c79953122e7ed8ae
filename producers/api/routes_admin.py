"""/api/v1/admin: organizations, API keys and target connections. Bearer AIC_ADMIN_TOKEN."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path

from producers.api.deps import require_admin
from producers.api.schemas import (
    ID_PATTERN,
    ApiKeyCreated,
    ApiKeyOut,
    ConnectionOut,
    CreateOrganization,
    OrganizationCreated,
    OrganizationOut,
    PutConnection,
    TargetSystem,
)
from shared.db.models import Organization, TargetConnection
from shared.db.session import session_scope
from shared.domain import organizations as service
from sqlalchemy import select

router = APIRouter(prefix="/api/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])
OrgId = Path(pattern=ID_PATTERN)


def connection_out(connection: TargetConnection) -> ConnectionOut:
    # Credentials never leave the server; has_credentials says whether they are set.
    return ConnectionOut(connection_id=connection.id, organization_id=connection.organization_id,
                         target_system=connection.target_system, base_url=connection.base_url,
                         account_mapping=connection.account_mapping or {},
                         options=connection.options or {},
                         has_credentials=bool(connection.credentials_encrypted),
                         updated_at=connection.updated_at)


@router.post("/organizations", response_model=OrganizationCreated, status_code=201)
def create_organization(body: CreateOrganization) -> OrganizationCreated:
    with session_scope() as session:
        org = service.create_organization(session, body.name)
        key, plaintext = service.create_api_key(session, org.id)
        return OrganizationCreated(organization_id=org.id, name=org.name, api_key=plaintext,
                                   api_key_id=key.id)


@router.get("/organizations", response_model=list[OrganizationOut])
def list_organizations() -> list[OrganizationOut]:
    with session_scope() as session:
        orgs = session.scalars(select(Organization).order_by(Organization.created_at)).all()
        return [OrganizationOut(organization_id=o.id, name=o.name, created_at=o.created_at)
                for o in orgs]


@router.post("/organizations/{org_id}/api-keys", response_model=ApiKeyCreated, status_code=201)
def create_api_key(org_id: str = OrgId) -> ApiKeyCreated:
    with session_scope() as session:
        key, plaintext = service.create_api_key(session, org_id)
        return ApiKeyCreated(api_key_id=key.id, api_key=plaintext)


@router.get("/organizations/{org_id}/api-keys", response_model=list[ApiKeyOut])
def list_api_keys(org_id: str = OrgId) -> list[ApiKeyOut]:
    with session_scope() as session:
        org = service.get_organization(session, org_id)
        return [ApiKeyOut(api_key_id=k.id, name=k.name, prefix=k.key_prefix,
                          created_at=k.created_at, revoked_at=k.revoked_at) for k in org.api_keys]


@router.delete("/organizations/{org_id}/api-keys/{key_id}", response_model=ApiKeyOut)
def revoke_api_key(org_id: str = OrgId, key_id: str = Path(pattern=ID_PATTERN)) -> ApiKeyOut:
    with session_scope() as session:
        k = service.revoke_api_key(session, org_id, key_id)
        return ApiKeyOut(api_key_id=k.id, name=k.name, prefix=k.key_prefix,
                         created_at=k.created_at, revoked_at=k.revoked_at)


@router.put("/organizations/{org_id}/connections/{target_system}", response_model=ConnectionOut)
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
