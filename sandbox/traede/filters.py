"""TRAEDE's ``filter_groups`` query parameters: parsing, validation and matching.

The seed says ``created_at``/``updated_at`` filters use TRAEDE's "Filters Syntax"; the guide
assumes it is the optimus/bruno Laravel syntax (the name ``filter_groups`` is Bruno's):
``filter_groups[0][or]=1&filter_groups[0][filters][0][key]=created_at&...[operator]=gte&
...[value]=2026-01-01&...[not]=0``. Groups are ANDed; the filters of a group are ANDed, or ORed
when the group says ``or``. [assumed] Only the two documented keys are accepted, and only the
comparison operators that make sense on a datetime (``eq gt gte lt lte in``); anything else is a
422, so a connector relying on an unsupported filter fails loudly here instead of silently
fetching everything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

FILTER_KEYS = ("created_at", "updated_at")
OPERATORS = ("eq", "gt", "gte", "lt", "lte", "in")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


class FilterError(ValueError):
    """A validation failure: ``field`` is the query key Laravel would name in ``errors``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Filter:
    key: str
    operator: str
    values: tuple[datetime, ...]
    negate: bool

    def matches(self, entry_values: dict[str, datetime]) -> bool:
        actual = entry_values[self.key]
        first = self.values[0]
        result = {
            "eq": lambda: actual == first,
            "gt": lambda: actual > first,
            "gte": lambda: actual >= first,
            "lt": lambda: actual < first,
            "lte": lambda: actual <= first,
            "in": lambda: actual in self.values,
        }[self.operator]()
        return not result if self.negate else result


@dataclass(frozen=True)
class Group:
    filters: tuple[Filter, ...]
    any_of: bool

    def matches(self, entry_values: dict[str, datetime]) -> bool:
        results = (f.matches(entry_values) for f in self.filters)
        return any(results) if self.any_of else all(results)


def parse_datetime(raw: str) -> datetime:
    """A UTC datetime from ``2026-03-18``, ``2026-03-18 10:00:00`` or ISO 8601 (an offset is
    converted to UTC; no offset means UTC, as the seed says the API speaks UTC)."""
    text = raw.strip()
    if not text:
        raise ValueError("empty")
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), time(), UTC)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _nested(pairs: list[tuple[str, str]], name: str) -> dict[str, Any]:
    """PHP's bracket notation for one parameter: ``a[0][b]=x`` -> ``{"0": {"b": "x"}}``."""
    tree: dict[str, Any] = {}
    for key, value in pairs:
        if not key.startswith(name + "["):
            continue
        parts = _BRACKETS.findall(key[len(name):])
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise FilterError(name, f"The {name} field is malformed.")
            node = child
        node[parts[-1] if parts else ""] = value
    return tree


def _flag(raw: Any, field: str) -> bool:
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise FilterError(field, f"The {field.replace('_', ' ')} field must be true or false.")


def parse_filter_groups(pairs: list[tuple[str, str]]) -> list[Group]:
    """``pairs`` is the raw query string (``request.query_params.multi_items()``)."""
    if any(key == "filter_groups" for key, _ in pairs):
        raise FilterError("filter_groups", "The filter groups must be an array.")
    tree = _nested(pairs, "filter_groups")
    groups: list[Group] = []
    for g_index, group in sorted(tree.items()):
        prefix = f"filter_groups.{g_index}"
        if not isinstance(group, dict) or not isinstance(group.get("filters"), dict):
            raise FilterError(f"{prefix}.filters", f"The {prefix}.filters field is required.")
        unknown = set(group) - {"filters", "or"}
        if unknown:
            raise FilterError(prefix,
                              f"Unknown filter group field(s): {', '.join(sorted(unknown))}.")
        filters = []
        for f_index, raw in sorted(group["filters"].items()):
            filters.append(_parse_filter(raw, f"{prefix}.filters.{f_index}"))
        if not filters:
            raise FilterError(f"{prefix}.filters", f"The {prefix}.filters field is required.")
        groups.append(Group(tuple(filters), _flag(group.get("or", "0"), f"{prefix}.or")))
    return groups


def _parse_filter(raw: Any, prefix: str) -> Filter:
    if not isinstance(raw, dict):
        raise FilterError(prefix, f"The {prefix} field must be an array.")
    unknown = set(raw) - {"key", "value", "operator", "not"}
    if unknown:
        raise FilterError(prefix, f"Unknown filter field(s): {', '.join(sorted(unknown))}.")
    key = raw.get("key")
    if key not in FILTER_KEYS:
        raise FilterError(f"{prefix}.key",
                          f"The selected {prefix}.key is invalid "
                          f"(filterable: {', '.join(FILTER_KEYS)}).")
    operator = raw.get("operator", "eq")
    if operator not in OPERATORS:
        raise FilterError(f"{prefix}.operator", f"The selected {prefix}.operator is invalid.")
    value = raw.get("value")
    if not isinstance(value, str) or not value.strip():
        raise FilterError(f"{prefix}.value", f"The {prefix}.value field is required.")
    texts = value.split(",") if operator == "in" else [value]
    try:
        values = tuple(parse_datetime(text) for text in texts)
    except ValueError as exc:
        raise FilterError(f"{prefix}.value", f"The {prefix}.value is not a valid date.") from exc
    return Filter(key, operator, values, _flag(raw.get("not", "0"), f"{prefix}.not"))
