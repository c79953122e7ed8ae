"""The one list of the systems we connect: every source and target, and what the engine needs
to know about each.

Adding a system is one folder plus one line here. The folder (``shared/integrations/<name>/``)
holds its client, its models and, in its ``__init__.py``, ``SYSTEM = TargetSystem(...)`` or
``SYSTEM = SourceSystem(...)``: its name, display name, credential fields, options schema,
default rate policy, the factory that builds its client for a connection, and its capabilities.
Everything that used to name a vendor (the API's enums, ``aic`` choices, credential checks, rate
limiter defaults, client factories, report texts) asks this module instead, so the engine
(``worker/``, ``shared/domain/``, ``producers/``) never names one
(``tests/unit/test_engine_names_no_vendor.py`` enforces it).

``AIC_EXTRA_SYSTEMS`` (comma-separated module paths, each with a ``SYSTEM``) adds systems that
do not live in this repository's list, e.g. the throwaway target of
``tests/integration/test_plugin_target.py``. Every process that serves a connection of such a
system (API, worker, beat, ``aic``) must have the same setting.

The vendor folders are imported on first use, not when this module is: their clients import the
engine's shared modules (rate limiter, settings), which in turn ask this registry at call time.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Union

from pydantic import BaseModel

if TYPE_CHECKING:
    from shared.integrations.rate_limit import RateLimitPolicy, RateLimiter

# The systems of this repository, one module each (its ``SYSTEM``). The one list to extend.
BUILTIN_SYSTEMS = (
    "shared.integrations.tripletex",
    "shared.integrations.findity",
    "shared.integrations.traede",
    "shared.integrations.billdiary",
    "shared.integrations.brex",
)


@dataclass(frozen=True)
class CredentialField:
    """One credential a connection stores (encrypted). ``secret`` ones are prompted for by
    ``aic`` instead of echoed, and never shown; ``required`` ones must be present on every
    create or credential change."""

    name: str
    description: str
    secret: bool = True
    required: bool = True
    # A URL the other credentials are sent to (Findity's OAuth2 token endpoint): it must be
    # http(s), and like ``base_url`` it can only change together with the secrets, which holds
    # for every credential field since credentials are replaced as a whole.
    url: bool = False


class ReportGranularity(str, Enum):
    """How a source takes back what became of its items."""

    PER_ITEM = "per_item"  # one status per item, any number per request (Findity updatestatus)
    CHUNKED = "chunked"  # at most ``report_chunk_size`` items per request (TRAEDE: 10)
    NONE = "none"  # the source is not told; the engine still records outcomes (Brex: optional)


class Discovery(str, Enum):
    """How a source's work becomes known to us."""

    WEBHOOK = "webhook"  # the source announces a unit (Findity's export-ready webhook)
    POLL_FEED = "poll_feed"  # a "not exported yet" feed, polled (Findity backstop, TRAEDE)
    POLL_CURSOR = "poll_cursor"  # a list since a cursor / updated_at, polled (Brex)


@dataclass(frozen=True)
class TargetCapabilities:
    """What the posting protocol (``worker.posting``) and the mapping rely on.

    ``lookup_by_reference`` is not optional for exactly-once: a target that cannot find a
    record by our reference is not supported (docs/ARCHITECTURE.md, "The posting protocol").
    """

    lookup_by_reference: bool
    # Default seconds a stored record may take to become findable (the client's
    # ``search_delay_seconds`` may take it from settings or a connection option instead).
    search_delay_seconds: float
    # Longest reference the target keeps verbatim (our export id must fit, or be findable).
    reference_max_length: int
    attachments: bool
    # Whether a voucher can be left unposted for an accountant (Tripletex sendToLedger=false).
    drafts: bool


@dataclass(frozen=True)
class SourceCapabilities:
    discovery: frozenset[Discovery]
    report_granularity: ReportGranularity
    report_chunk_size: int | None = None  # for CHUNKED
    attachments: bool = False  # the source hands us receipt files


@dataclass(frozen=True, kw_only=True)
class _System:
    name: str  # the stable id in URLs, rows and settings: lowercase, no spaces
    display_name: str  # what people read ("Booked in Tripletex as ...")
    credentials: tuple[CredentialField, ...]
    # Per-connection options (``connection.options``), validated by the client factory.
    options_model: type[BaseModel]
    base_url_example: str
    # The connection's request budget when it sets no ``rate_limit`` option; called when a
    # limiter is built, so settings changed by the environment are read then.
    default_rate_policy: Callable[[], RateLimitPolicy] | None = None

    @property
    def required_credentials(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.credentials if c.required)

    def describe_credentials(self) -> str:
        return ", ".join(f"{c.name}{'' if c.required else ' (optional)'}"
                         for c in self.credentials)


@dataclass(frozen=True, kw_only=True)
class TargetSystem(_System):
    # (connection, decrypted credentials, its rate limiter or None) -> a
    # ``shared.integrations.targets.TargetClient``
    build_client: Callable[[Any, dict[str, Any], RateLimiter | None], Any]
    capabilities: TargetCapabilities


@dataclass(frozen=True, kw_only=True)
class SourceSystem(_System):
    # (connection, decrypted credentials) -> the source's adapter
    # (``shared.integrations.sources.SourceAdapter``)
    build_client: Callable[[Any, dict[str, Any]], Any]
    capabilities: SourceCapabilities
    # Discovery.WEBHOOK: a delivery's raw body -> ``shared.integrations.sources.Announcement``
    # (raises ``MalformedAnnouncement``). Needs no credentials: it runs before the delivery's
    # connection is known. None: the source sends no webhooks (no route is mounted).
    parse_webhook: Callable[[bytes], Any] | None = None
    # The option (of ``options_model``) holding our organization's id in the source: a webhook
    # whose ``Announcement.organization_id`` differs from it is refused. None: not checked.
    organization_option: str | None = None
    # Options (of ``options_model``) that are fixed once the connection has received work
    # (has any unit): the source keeps its own state under them (TRAEDE marks entries as
    # exported per ``system_id``), so a new value would make it hand over again everything
    # already booked, or lose track of what we report. ``upsert_source_connection`` refuses
    # changing them then; setting one the first time, or before any unit, is allowed.
    options_fixed_once_used: tuple[str, ...] = ()


System = Union[TargetSystem, SourceSystem]


class UnknownSystem(ValueError):
    pass


_lock = threading.Lock()
_systems: dict[str, System] | None = None


def _load() -> dict[str, System]:
    global _systems
    with _lock:
        if _systems is None:
            from shared.config import get_settings

            modules = [*BUILTIN_SYSTEMS, *get_settings().extra_system_modules()]
            loaded: dict[str, System] = {}
            for module_path in modules:
                system = importlib.import_module(module_path).SYSTEM
                _add(loaded, system, module_path)
            _systems = loaded
        return _systems


def _add(systems: dict[str, System], system: System, origin: str) -> None:
    if not isinstance(system, (TargetSystem, SourceSystem)):
        raise TypeError(f"{origin}.SYSTEM must be a TargetSystem or SourceSystem")
    if system.name in systems:
        raise ValueError(f"system {system.name!r} is registered twice ({origin})")
    if isinstance(system, TargetSystem) and not system.capabilities.lookup_by_reference:
        raise ValueError(f"target {system.name!r} cannot be searched by our reference: "
                         "exactly-once is impossible, so it cannot be a target")
    if isinstance(system, SourceSystem):
        unknown = [name for name in system.options_fixed_once_used
                   if name not in system.options_model.model_fields]
        if unknown:
            raise ValueError(f"source {system.name!r} declares options_fixed_once_used "
                             f"{', '.join(unknown)}, which its options model does not have")
    systems[system.name] = system


def targets() -> dict[str, TargetSystem]:
    return {n: s for n, s in _load().items() if isinstance(s, TargetSystem)}


def sources() -> dict[str, SourceSystem]:
    return {n: s for n, s in _load().items() if isinstance(s, SourceSystem)}


def target(name: str) -> TargetSystem:
    system = targets().get(name)
    if system is None:
        raise UnknownSystem(f"target_system '{name}' is not supported; use one of: "
                            + ", ".join(targets()))
    return system


def source(name: str) -> SourceSystem:
    system = sources().get(name)
    if system is None:
        raise UnknownSystem(f"source_system '{name}' is not supported; use one of: "
                            + ", ".join(sources()))
    return system


def display_name(name: str) -> str:
    """A system's display name; an unknown name (a row of a system since removed) as is."""
    system = _load().get(name)
    return system.display_name if system is not None else name


def reset_for_tests() -> None:
    """Forget what was loaded, so a changed ``AIC_EXTRA_SYSTEMS`` is read again."""
    global _systems
    with _lock:
        _systems = None
