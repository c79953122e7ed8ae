"""``SourceConnection.options`` of a TRAEDE connection (the registry entry's ``options_model``)."""

from __future__ import annotations

from datetime import date, datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.integrations.traede.models import SYSTEM_ID_MAX_LENGTH

DEFAULT_TIME_ZONE = "Europe/Copenhagen"  # [assumed] TRAEDE's customers are Danish by default


class TraedeOptions(BaseModel):
    """What a TRAEDE connection needs besides its credentials.

    Unknown keys are refused: a misspelt ``time_zone`` would otherwise book every entry near
    midnight on the wrong day without a word.
    """

    model_config = ConfigDict(extra="forbid")

    # The name TRAEDE keeps our export marks under [seed]: a new one sees every entry as never
    # exported, so it is fixed once the connection has received an entry. Refusing a change
    # then is the engine's job (``options_fixed_once_used`` in the registry entry, checked by
    # the connection update), not this model's: it cannot see the history.
    # Suggested form: ``aic-<target>-<connection id>``.
    system_id: str = Field(min_length=1, max_length=SYSTEM_ID_MAX_LENGTH,
                           pattern=r"^\S(.*\S)?$")
    # The first accounting day booked through this connection, in ``time_zone``. Entries created
    # before it are not fetched at all (the history the previous process booked); an entry
    # created later but dated before it is refused with the reason (see conversion.py).
    go_live_date: date
    # TRAEDE account number -> target account number. TRAEDE's chart is not the target's
    # (Danish and Norwegian charts differ): an account without a mapping is refused with the
    # numbers to add, never booked on a guessed account.
    account_mapping: dict[str, str] = Field(default_factory=dict)
    # The accounting date of an entry is its UTC ``date`` in this zone: 23:30 UTC on
    # 31 December is already 1 January in Copenhagen.
    time_zone: str = DEFAULT_TIME_ZONE

    @field_validator("account_mapping")
    @classmethod
    def _account_numbers(cls, mapping: dict[str, str]) -> dict[str, str]:
        for source, target in mapping.items():
            if not source.strip().lstrip("-").isdigit():
                raise ValueError(f"account_mapping key {source!r} is not a TRAEDE account "
                                 "number (TRAEDE's accounts are integers)")
            if not str(target).strip():
                raise ValueError(f"account_mapping maps TRAEDE account {source} to nothing; "
                                 "give the target account number")
        return {str(int(source)): str(target).strip() for source, target in mapping.items()}

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{name!r} is not an IANA time zone such as Europe/Copenhagen "
                             "or Europe/Oslo") from None
        return name

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @property
    def go_live_at(self) -> datetime:
        """The go-live date's first moment in the connection's time zone (aware)."""
        return datetime.combine(self.go_live_date, time(), self.zone)
