"""Options a source's registry entry declares fixed once used (``options_fixed_once_used``):
TRAEDE's ``system_id``, under which TRAEDE keeps its export marks. Once the connection has
received work (any unit), a change is refused with the option and the reason named (domain
``ValidationFailed``, API 422, ``aic`` exit 2) and nothing changes; the first value, the same
value again, and a change before the first unit are accepted."""

from __future__ import annotations

from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from producers.api.app import create_app
from producers.cli import main
from shared import crypto
from shared.config import get_settings
from shared.db.session import session_scope
from shared.domain import sources
from shared.domain.errors import ValidationFailed
from shared.integrations import registry

CREDENTIALS = {"access_token": "t", "app_key": "app-key-1"}
BASE_URL = "http://127.0.0.1:9/v10"


def _options(system_id: str | None = "aic-one", **more) -> dict:
    options = {"go_live_date": "2026-01-01", "account_mapping": {"5820": "1920"}, **more}
    if system_id is not None:
        options["system_id"] = system_id
    return options


def _set(org_id: str, options: dict | None, credentials: dict | None = CREDENTIALS) -> None:
    with session_scope() as session:
        sources.upsert_source_connection(session, org_id, "traede", base_url=BASE_URL,
                                         credentials=credentials, target_system="tripletex",
                                         options=options)


def _stored(org_id: str) -> tuple:
    with session_scope() as session:
        c = sources.source_connection_for(session, org_id, "traede")
        return (c.base_url, crypto.decrypt_json(c.credentials_encrypted), c.options,
                c.updated_at)


def _receive_unit(org_id: str, external_id: str = "48001") -> None:
    """Work received through the connection: one unit, as a poll records it."""
    with session_scope() as session:
        connection = sources.source_connection_for(session, org_id, "traede")
        sources.announce_unit(session, connection, external_id, via="poll")


def test_the_registry_entry_declares_system_id_fixed_and_refuses_an_unknown_option():
    assert registry.source("traede").options_fixed_once_used == ("system_id",)
    bogus = replace(registry.source("traede"), name="bogus",
                    options_fixed_once_used=("system_idd",))
    with pytest.raises(ValueError, match="system_idd"):
        registry._add({}, bogus, "tests")


def test_domain_allows_first_value_same_value_and_changes_before_any_unit(org):
    _set(org.id, _options())
    _set(org.id, _options("aic-two"))  # no unit yet: still free to change
    _set(org.id, _options("aic-two", time_zone="Europe/Oslo"))  # other options change freely
    _receive_unit(org.id)
    _set(org.id, _options("aic-two", time_zone="Europe/Copenhagen"))  # the same value again
    _set(org.id, None, credentials=None)  # options omitted: the stored ones are kept
    assert _stored(org.id)[2]["system_id"] == "aic-two"


def test_domain_refuses_a_change_once_the_connection_has_units_and_changes_nothing(org):
    _set(org.id, _options())
    _receive_unit(org.id)
    before = _stored(org.id)
    with pytest.raises(ValidationFailed) as refused:
        _set(org.id, _options("aic-other"),
             credentials={"access_token": "t2", "app_key": "app-key-2"})
    message = refused.value.message
    assert "options.system_id is fixed once the connection has received work" in message
    assert "'aic-one'" in message and "1 unit(s)" in message and "TRAEDE" in message
    assert "Nothing was changed" in message
    assert refused.value.details[0]["field"] == "options.system_id"
    assert _stored(org.id) == before


def test_a_stored_connection_without_the_option_may_get_it_even_with_units(org):
    """A value set for the first time is not a change (a row stored before the option existed,
    or written around the check)."""
    _set(org.id, _options())
    with session_scope() as session:
        connection = sources.source_connection_for(session, org.id, "traede")
        connection.options = {k: v for k, v in connection.options.items() if k != "system_id"}
    _receive_unit(org.id)
    _set(org.id, _options("aic-first"), credentials=None)
    assert _stored(org.id)[2]["system_id"] == "aic-first"


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(), raise_server_exceptions=False) as test_client:
        yield test_client


def test_api_answers_422_naming_the_option_and_changes_nothing(client, org):
    path = f"/api/v1/admin/organizations/{org.id}/sources/traede"
    headers = {"Authorization": f"Bearer {get_settings().admin_token}"}
    body = {"base_url": BASE_URL, "target_system": "tripletex", "credentials": CREDENTIALS,
            "options": _options()}
    assert client.put(path, headers=headers, json=body).status_code == 200
    changed = {**body, "options": _options("aic-two")}
    assert client.put(path, headers=headers, json=changed).status_code == 200  # no unit yet
    _receive_unit(org.id)
    before = _stored(org.id)

    refused = client.put(path, headers=headers, json={**changed, "options": _options("aic-3")})
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "validation_failed"
    assert "options.system_id is fixed once the connection has received work" in error["message"]
    assert "Nothing was changed" in error["message"]
    assert _stored(org.id) == before

    same = client.put(path, headers=headers, json={**changed, "credentials": None})
    assert same.status_code == 200, same.text
    assert same.json()["options"]["system_id"] == "aic-two"


def test_aic_source_set_exits_2_naming_the_option_and_changes_nothing(capsys, org):
    flags = ["source", "set", org.id, "--system", "traede", "--base-url", BASE_URL,
             "--target", "tripletex"]
    assert main([*flags, "--access-token", "t", "--app-key", "app-key-1",
                  "--option", "system_id=aic-one", "--option", "go_live_date=2026-01-01"]) == 0
    assert main([*flags, "--keep-credentials", "--option", "system_id=aic-two"]) == 0
    _receive_unit(org.id)
    before = _stored(org.id)
    capsys.readouterr()

    assert main([*flags, "--keep-credentials", "--option", "system_id=aic-three"]) == 2
    err = capsys.readouterr().err
    assert "options.system_id is fixed once the connection has received work" in err
    assert "'aic-two'" in err and "Nothing was changed" in err
    assert _stored(org.id) == before
    # Re-sending the same value (with another option) is fine.
    assert main([*flags, "--keep-credentials", "--option", "system_id=aic-two",
                 "--option", "time_zone=Europe/Oslo"]) == 0
    assert _stored(org.id)[2]["time_zone"] == "Europe/Oslo"
