"""Organizations, their API keys and their target connections (admin API and `aic` CLI)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import crypto, ids
from shared.db.models import ApiKey, Organization, TargetConnection
from shared.db.types import utcnow
from shared.domain.errors import NotFound, ValidationFailed
from shared.integrations import registry

# What an API key may do, by scope. The status callback is its own scope because it can mark an
# export `success` with any reference without anything being booked: only the system that does
# the booking should hold it, not every integration that merely exports.
API_KEY_SCOPES = {
    "exports": "create, list, read and cancel exports and batches; ingest and read expenses; "
               "read source exports",
    "callbacks": "the status callback PUT /api/v1/accounting-exports/{id}",
}
# A key made without saying what it is for gets the least dangerous scope.
DEFAULT_API_KEY_SCOPES = ("exports",)


def create_organization(session: Session, name: str, org_id: str | None = None) -> Organization:
    if not name.strip():
        raise ValidationFailed("organization name must not be empty")
    org = Organization(id=org_id or ids.new_id(ids.ORGANIZATION, 6), name=name.strip())
    session.add(org)
    session.flush()
    return org


def get_organization(session: Session, org_id: str) -> Organization:
    org = session.get(Organization, org_id)
    if org is None:
        raise NotFound(f"organization {org_id} does not exist")
    return org


def api_key_scopes(scopes: Iterable[str] | None) -> list[str]:
    """The scopes a new key gets: ``DEFAULT_API_KEY_SCOPES`` when none are named, otherwise the
    named ones, each once, in the order of ``API_KEY_SCOPES``."""
    if scopes is None:
        return list(DEFAULT_API_KEY_SCOPES)
    scopes = list(scopes)
    known = ", ".join(API_KEY_SCOPES)
    unknown = [s for s in scopes if s not in API_KEY_SCOPES]
    if unknown:
        raise ValidationFailed(f"unknown API key scope {', '.join(map(repr, unknown))}; "
                               f"use one or more of: {known}")
    if not scopes:
        raise ValidationFailed(f"an API key needs at least one scope: {known}")
    return [s for s in API_KEY_SCOPES if s in scopes]


def create_api_key(session: Session, org_id: str, name: str = "default",
                   scopes: Iterable[str] | None = None) -> tuple[ApiKey, str]:
    """Returns the stored key row and the plaintext key, which is shown once and never stored.

    ``scopes``: see ``API_KEY_SCOPES``; ``["exports"]`` when omitted.
    """
    get_organization(session, org_id)
    scopes = api_key_scopes(scopes)
    plaintext = crypto.generate_api_key()
    key = ApiKey(
        id=ids.new_id(ids.API_KEY, 6),
        organization_id=org_id,
        name=name,
        key_hash=crypto.hash_api_key(plaintext),
        key_prefix=plaintext[:10],
        scopes=scopes,
    )
    session.add(key)
    session.flush()
    return key, plaintext


def revoke_api_key(session: Session, org_id: str, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None or key.organization_id != org_id:
        raise NotFound(f"API key {key_id} does not exist in organization {org_id}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


def active_api_key(session: Session, plaintext: str) -> ApiKey | None:
    """The key (its organization, its scopes) if it exists and is not revoked."""
    key = session.scalar(
        select(ApiKey).where(ApiKey.key_hash == crypto.hash_api_key(plaintext))
    )
    if key is None or key.revoked_at is not None:
        return None
    return key


def upsert_connection(
    session: Session,
    org_id: str,
    target_system: str,
    *,
    base_url: str,
    credentials: dict[str, Any] | None = None,
    account_mapping: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> TargetConnection:
    """Create or replace the organization's connection to one target system.

    ``credentials`` may be omitted on update to keep the stored ones, but not together with a
    new ``base_url``: the stored credentials would then go to whatever host the new URL names, so
    whoever holds the admin token could collect them without ever knowing them.
    """
    get_organization(session, org_id)
    try:
        system = registry.target(target_system)
    except registry.UnknownSystem as unknown:
        raise ValidationFailed(str(unknown)) from None
    if not base_url.startswith(("http://", "https://")):
        raise ValidationFailed("base_url must start with http:// or https://")
    connection = session.scalar(
        select(TargetConnection).where(
            TargetConnection.organization_id == org_id,
            TargetConnection.target_system == target_system,
        )
    )
    if credentials is not None:
        # The registry entry says which credentials the target needs; checked before storing.
        missing = [k for k in system.required_credentials if not credentials.get(k)]
        if missing:
            raise ValidationFailed(
                f"credentials for {target_system} need: {', '.join(missing)}"
            )
    elif connection is not None and base_url.rstrip("/") != connection.base_url:
        message = (
            f"base_url would change from {connection.base_url} to {base_url.rstrip('/')}, and "
            "the stored credentials would then be sent to it: send the credentials together "
            "with the new base_url (`credentials` in the admin API; `aic connection set` "
            "without --keep-credentials). Nothing was changed."
        )
        raise ValidationFailed(message, details=[{"field": "credentials", "message": message}])
    if connection is None:
        if credentials is None:
            raise ValidationFailed(f"credentials are required for a new {target_system} connection")
        connection = TargetConnection(
            id=ids.new_id(ids.CONNECTION, 6),
            organization_id=org_id,
            target_system=target_system,
            account_mapping={},
            options={},
        )
        session.add(connection)
    connection.base_url = base_url.rstrip("/")
    if credentials is not None:
        connection.credentials_encrypted = crypto.encrypt_json(credentials)
    if account_mapping is not None:
        connection.account_mapping = account_mapping
    if options is not None:
        _check_options(system, options)
        connection.options = options
    connection.updated_at = utcnow()
    session.flush()
    return connection


# Options the engine reads itself for every target (shared.integrations.rate_limit), not part of
# a system's options model.
ENGINE_OPTIONS = ("rate_limit",)


def _check_options(system: registry.TargetSystem, options: dict[str, Any]) -> None:
    """The target's options model must accept ``options``, so a connection that cannot post
    (a BillDiary connection without its location, say) is refused when it is configured
    instead of failing every export later."""
    check_system_options(system, {k: v for k, v in options.items() if k not in ENGINE_OPTIONS})


def check_system_options(system: registry.System, options: dict[str, Any]) -> None:
    """``options`` as the system's options model accepts them, or ValidationFailed naming each
    field (targets and sources alike)."""
    try:
        system.options_model.model_validate(options)
    except PydanticValidationError as error:
        details = [{"field": "options." + ".".join(map(str, e["loc"])), "message": e["msg"]}
                   for e in error.errors()]
        raise ValidationFailed(
            f"options for {system.name} are not valid: "
            + "; ".join(f"{d['field']}: {d['message']}" for d in details),
            details=details) from None


def connection_for(session: Session, org_id: str, target_system: str) -> TargetConnection | None:
    return session.scalar(
        select(TargetConnection).where(
            TargetConnection.organization_id == org_id,
            TargetConnection.target_system == target_system,
        )
    )


def connection_credentials(connection: TargetConnection) -> dict[str, Any]:
    return crypto.decrypt_json(connection.credentials_encrypted)
