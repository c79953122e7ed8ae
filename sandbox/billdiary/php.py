"""What BillDiary's PHP/Laravel stack does to the values it is sent, imitated in Python.

BillDiary is a Laravel application on UltimatePOS's data model (see the project's
``erp-integration-api.md`` guide). The traps a client meets come from that stack, not from the
endpoints themselves, so they are imitated here rather than smoothed over:

- ``laravel_input``: Laravel's TrimStrings and ConvertEmptyStringsToNull middleware; PHP's
  ``name[0][key]`` form keys; a JSON body that does not parse is an empty input.
- validation rules with Laravel 10's English messages and its 422 body (``validation_body``).
- ``num_uf``: UltimatePOS's number parser. It removes the business's thousand separator and
  turns its decimal separator into ``.``, on whatever it is given: with thousand separator ``.``
  the JSON number ``12.5`` becomes ``125``. [upos; assumed for the integration API]
- ``create_from_format``: PHP's ``DateTime::createFromFormat`` as Carbon uses it in
  UltimatePOS's ``uf_date``: the business's date format (plus ``H:i`` or ``h:i A``), an error for
  anything that does not match, and *silent overflow* for values that do (``18/03/2026`` read as
  ``m/d/Y`` is 2027-06-03).
- ``like``: MySQL ``LIKE '%q%'`` under a case- and accent-insensitive collation, with ``%`` and
  ``_`` in ``q`` as wildcards (Laravel does not escape them).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

STORE_PLACES = Decimal("0.0001")  # UltimatePOS amount columns are decimal(22,4)

_NUMERIC = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")
_LEADING_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_INT = re.compile(r"^\s*[+-]?\d+\s*$")


# --- PHP scalars -------------------------------------------------------------------------------


def php_string(value: Any) -> str:
    """``(string) $value`` for what ``json_decode`` or a form gives PHP."""
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (Decimal, float)):
        # A JSON float is a PHP float; (string) writes it with precision 14, no trailing zeros.
        number = float(value)
        if number == int(number) and abs(number) < 1e15:
            return str(int(number))
        text = f"{number:.14G}"
        if "E" in text:
            mantissa, exponent = text.split("E")
            if "." not in mantissa:
                mantissa += ".0"
            return f"{mantissa}E{int(exponent):+d}"
        return text
    if isinstance(value, str):
        return value
    return json.dumps(value)


def php_float(text: str) -> Decimal:
    """``(float) "text"``: the leading number, 0 when there is none."""
    match = _LEADING_NUMBER.match(text)
    if not match:
        return Decimal(0)
    try:
        return Decimal(match.group(0).strip())
    except InvalidOperation:
        return Decimal(0)


def is_numeric(value: Any) -> bool:
    """PHP ``is_numeric``: Laravel's ``numeric`` rule."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, Decimal, float)):
        return True
    return isinstance(value, str) and bool(_NUMERIC.match(value))


def is_integer(value: Any) -> bool:
    """``filter_var($value, FILTER_VALIDATE_INT) !== false``: Laravel's ``integer`` rule."""
    if isinstance(value, bool):
        return True  # filter_var(true) is 1; PHP being PHP
    if isinstance(value, int):
        return True
    if isinstance(value, (Decimal, float)):
        return float(value) == int(value)
    return isinstance(value, str) and bool(_INT.match(value))


def to_int(value: Any) -> int:
    if isinstance(value, str):
        return int(value.strip())
    return int(value)


def is_boolean(value: Any) -> bool:
    """Laravel's ``boolean`` rule: true, false, 1, 0, "1", "0" and nothing else ("true" fails)."""
    return (
        value is True
        or value is False
        or (isinstance(value, int) and value in (0, 1))
        or value in ("0", "1")
    )


def truthy(value: Any) -> bool:
    """PHP truthiness, as ``if ($request->input('is_recurring'))`` sees it."""
    if value is None or value is False:
        return False
    if isinstance(value, (int, Decimal, float)) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, str):
        return value not in ("", "0")
    if isinstance(value, (list, dict)):
        return bool(value)
    return True


def php_empty(value: Any) -> bool:
    """PHP ``empty()``: null, "", "0", 0, false, []. The import's "Amount not found" trap."""
    return not truthy(value)


def num_uf(value: Any, thousand_separator: str, decimal_separator: str) -> Decimal:
    """UltimatePOS's ``num_uf``: strip the thousand separator, make the decimal separator a dot,
    cast to float; stored as decimal(22,4). ``12.5`` with thousand ``.`` and decimal ``,`` is 125.
    """
    text = php_string(value)
    if thousand_separator:
        text = text.replace(thousand_separator, "")
    if decimal_separator and decimal_separator != ".":
        text = text.replace(decimal_separator, ".")
    return php_float(text).quantize(STORE_PLACES, rounding=ROUND_HALF_UP)


def store_decimal(value: Decimal) -> Decimal:
    return value.quantize(STORE_PLACES, rounding=ROUND_HALF_UP)


# --- dates: DateTime::createFromFormat ----------------------------------------------------------


class DateFormatError(ValueError):
    """Carbon's InvalidFormatException: PHP's parse errors, one a line."""


_SEPARATORS = set(";:/.,-()")


def create_from_format(fmt: str, text: str, now: datetime) -> datetime:
    """Parse ``text`` with the PHP format ``fmt`` (tokens d j m n Y y H G h g i s A a, and
    literal characters). Fields the format lacks come from ``now``; once an hour is parsed, the
    unparsed minutes and seconds are 0. Day and month overflow silently, as in PHP: only parse
    errors raise (Carbon ignores PHP's "The parsed date was invalid" warning)."""
    pos = 0
    fields: dict[str, int] = {}
    meridian: str | None = None
    errors: list[str] = []

    def digits(low: int, high: int) -> str | None:
        nonlocal pos
        match = re.match(r"\d{%d,%d}" % (low, high), text[pos:])
        if not match:
            return None
        pos += len(match.group(0))
        return match.group(0)

    names = {
        "d": ("day", 1, 2, "A two digit day could not be found"),
        "j": ("day", 1, 2, "A two digit day could not be found"),
        "m": ("month", 1, 2, "A two digit month could not be found"),
        "n": ("month", 1, 2, "A two digit month could not be found"),
        "Y": ("year", 1, 4, "A four digit year could not be found"),
        "y": ("year2", 2, 2, "A two digit year could not be found"),
        "H": ("hour", 1, 2, "A two digit hour could not be found"),
        "G": ("hour", 1, 2, "A two digit hour could not be found"),
        "h": ("hour12", 1, 2, "A two digit hour could not be found"),
        "g": ("hour12", 1, 2, "A two digit hour could not be found"),
        "i": ("minute", 2, 2, "A two digit minute could not be found"),
        "s": ("second", 2, 2, "A two digit second could not be found"),
    }
    for index, token in enumerate(fmt):
        if pos >= len(text):
            errors.append("Not enough data available to satisfy format")
            break
        if token in names:
            name, low, high, message = names[token]
            found = digits(low, high)
            if found is None:
                errors.append(message)
                break
            fields[name] = int(found)
        elif token in "Aa":
            word = text[pos : pos + 2].lower()
            if word not in ("am", "pm"):
                errors.append("A meridian could not be found")
                break
            meridian = word
            pos += 2
        elif token == "\\" and index + 1 < len(fmt):
            continue  # escaped literals are rare in business formats; treat as literal next
        else:
            if text[pos] != token:
                if token in _SEPARATORS:
                    errors.append("The separation symbol ([;:/.,-]) could not be found")
                elif token == " ":
                    errors.append("The separation symbol could not be found")
                else:
                    errors.append("The format separator does not match")
                break
            pos += 1
    if not errors and pos < len(text):
        errors.append("Trailing data")
    if errors:
        raise DateFormatError("\n".join(errors))

    year = fields.get("year", now.year)
    if "year2" in fields:
        year = fields["year2"] + (2000 if fields["year2"] < 70 else 1900)
    month = fields.get("month", now.month)
    day = fields.get("day", now.day)
    if "hour12" in fields:
        hour = fields["hour12"] % 12 + (12 if meridian == "pm" else 0)
    else:
        hour = fields.get("hour", -1)
    if hour >= 0:
        minute, second = fields.get("minute", 0), fields.get("second", 0)
    else:
        hour, minute, second = now.hour, now.minute, now.second
    # PHP's overflow: month 13 is January next year, day 0 the last day of the month before.
    months = year * 12 + (month - 1)
    try:
        base = datetime(months // 12, months % 12 + 1, 1)
    except ValueError as exc:  # a year outside 1..9999
        raise DateFormatError("The parsed date was invalid") from exc
    return base + timedelta(days=day - 1, hours=hour, minutes=minute, seconds=second)


def uf_date(value: str, date_format: str, time_format: int, now: datetime) -> datetime:
    """UltimatePOS's ``uf_date($date, true)``: the business's date format plus its time."""
    fmt = date_format + (" h:i A" if time_format == 12 else " H:i")
    return create_from_format(fmt, value, now)


def php_format(moment: datetime, date_format: str) -> str:
    """Write ``moment`` with a PHP date format (the tokens ``create_from_format`` reads)."""
    out = []
    for token in date_format:
        out.append(
            {
                "d": f"{moment.day:02d}",
                "j": str(moment.day),
                "m": f"{moment.month:02d}",
                "n": str(moment.month),
                "Y": f"{moment.year:04d}",
                "y": f"{moment.year % 100:02d}",
                "H": f"{moment.hour:02d}",
                "G": str(moment.hour),
                "h": f"{(moment.hour % 12) or 12:02d}",
                "g": str((moment.hour % 12) or 12),
                "i": f"{moment.minute:02d}",
                "s": f"{moment.second:02d}",
                "A": "AM" if moment.hour < 12 else "PM",
                "a": "am" if moment.hour < 12 else "pm",
            }.get(token, token)
        )
    return "".join(out)


# --- MySQL LIKE --------------------------------------------------------------------------------


def _fold(text: str) -> str:
    """utf8mb4_unicode_ci, roughly: case- and accent-insensitive."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def like_contains(pattern: str) -> re.Pattern[str]:
    """``column LIKE '%pattern%'``: ``%`` is any run, ``_`` any one character."""
    parts = []
    for char in _fold(pattern):
        if char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def like(compiled: re.Pattern[str], value: Any) -> bool:
    return value is not None and compiled.search(_fold(str(value))) is not None


# --- input -------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """TrimStrings, then ConvertEmptyStringsToNull, all the way down."""
    if isinstance(value, str):
        value = value.strip()
        return value if value != "" else None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def php_form_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``payment[0][amount]=5`` -> ``{"payment": {"0": {"amount": "5"}}}``; ``a[]`` appends."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        match = re.match(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$", key)
        if not match:
            result[key] = value
            continue
        path = [match.group(1)] + re.findall(r"\[([^\[\]]*)\]", match.group(2))
        node = result
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if part == "":
                part = str(len(node))
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
    return result


def laravel_input(query: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """``$request->all()``: query and body merged (the body wins), strings trimmed, "" -> null."""
    return _clean({**query, **body})


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """A body that is not a JSON object is, to Laravel, no input at all."""
    try:
        decoded = json.loads(raw, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        return {}
    return decoded if isinstance(decoded, dict) else {}


def as_indexed(value: Any) -> dict[str, Any] | None:
    """A JSON list or a PHP form array as ``{"0": ..., "1": ...}``; None if neither."""
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        return value
    return None


# --- validation --------------------------------------------------------------------------------


def attribute(name: str) -> str:
    """Laravel's default attribute name: underscores become spaces."""
    return name.replace("_", " ")


class ValidationFailed(Exception):
    """A Laravel ValidationException: ``{field: [messages]}`` in the order found."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def validation_body(errors: dict[str, list[str]]) -> dict[str, Any]:
    """Laravel 10's 422 body: the first message, "(and N more errors)", and every error."""
    messages = [m for ms in errors.values() for m in ms]
    first = messages[0] if messages else "The given data was invalid."
    more = len(messages) - 1
    if more > 0:
        first += f" (and {more} more error{'s' if more > 1 else ''})"
    return {"message": first, "errors": errors}


@dataclass
class Validator:
    """The rules the integration controllers use, one failing message per field (as with
    ``bail``). Every check returns the value when it passed, None otherwise."""

    data: dict[str, Any]

    def __post_init__(self) -> None:
        self.errors: dict[str, list[str]] = {}

    def get(self, field: str) -> Any:
        node: Any = self.data
        for part in field.split("."):
            if isinstance(node, list):
                node = {str(i): v for i, v in enumerate(node)}
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def has(self, field: str) -> bool:
        node: Any = self.data
        for part in field.split("."):
            if isinstance(node, list):
                node = {str(i): v for i, v in enumerate(node)}
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def fail(self, field: str, message: str) -> None:
        if field not in self.errors:
            self.errors[field] = [message]

    def failed(self, field: str) -> bool:
        return field in self.errors

    def check(self) -> None:
        if self.errors:
            raise ValidationFailed(self.errors)

    def required(self, field: str) -> bool:
        value = self.get(field)
        if value is None or value == [] or value == {}:
            self.fail(field, f"The {attribute(field)} field is required.")
            return False
        return True

    def present(self, field: str) -> bool:
        if not self.has(field):
            self.fail(field, f"The {attribute(field)} field must be present.")
            return False
        return True

    def integer(self, field: str, *, required: bool = False) -> int | None:
        if required and not self.required(field):
            return None
        value = self.get(field)
        if value is None:
            return None
        if not is_integer(value):
            self.fail(field, f"The {attribute(field)} field must be an integer.")
            return None
        return to_int(value) if not isinstance(value, bool) else int(value)

    def numeric(self, field: str, *, required: bool = False, min_value: str | None = None) -> Any:
        if required and not self.required(field):
            return None
        value = self.get(field)
        if value is None:
            return None
        if not is_numeric(value):
            self.fail(field, f"The {attribute(field)} field must be a number.")
            return None
        if min_value is not None and php_float(php_string(value)) < Decimal(min_value):
            self.fail(field, f"The {attribute(field)} field must be at least {min_value}.")
            return None
        return value

    def string(
        self, field: str, *, required: bool = False, min_len: int | None = None,
        max_len: int | None = None,
    ) -> str | None:
        if required and not self.required(field):
            return None
        value = self.get(field)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(field, f"The {attribute(field)} field must be a string.")
            return None
        if min_len is not None and len(value) < min_len:
            self.fail(field, f"The {attribute(field)} field must be at least {min_len} characters.")
            return None
        if max_len is not None and len(value) > max_len:
            self.fail(
                field,
                f"The {attribute(field)} field must not be greater than {max_len} characters.",
            )
            return None
        return value

    def boolean(self, field: str) -> bool | None:
        value = self.get(field)
        if value is None:
            return None
        if not is_boolean(value):
            self.fail(field, f"The {attribute(field)} field must be true or false.")
            return None
        return value in (True, 1, "1")

    def one_of(self, field: str, allowed: tuple[str, ...]) -> str | None:
        value = self.get(field)
        if value is None:
            return None
        if not isinstance(value, str) or value not in allowed:
            self.fail(field, f"The selected {attribute(field)} is invalid.")
            return None
        return value

    def between(self, field: str, low: int, high: int) -> int | None:
        value = self.integer(field)
        if value is None:
            return None
        if not low <= value <= high:
            self.fail(field, f"The {attribute(field)} field must be between {low} and {high}.")
            return None
        return value

    def exists(self, field: str, value: int | None, known: Any) -> int | None:
        """``exists:table,id`` scoped to the business: ``known`` is a container of ids."""
        if value is None or self.failed(field):
            return None
        if value not in known:
            self.fail(field, f"The selected {attribute(field)} is invalid.")
            return None
        return value

    def date_ymd(self, field: str) -> str | None:
        value = self.string(field)
        if value is None:
            return None
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            self.fail(field, f"The {attribute(field)} field must match the format Y-m-d.")
            return None
        try:
            datetime.strptime(value, "%Y-%m-%d")
        except ValueError:
            self.fail(field, f"The {attribute(field)} field must match the format Y-m-d.")
            return None
        return value
