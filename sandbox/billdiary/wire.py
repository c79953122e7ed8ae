"""How the BillDiary sandbox writes its answers: PHP's JSON numbers, Laravel's pages and
redirects, the CSV exports.

Amounts are stored as decimal(22,4) and answered as JSON numbers the way PHP's ``json_encode``
writes a float: shortest form, with ``.0`` on whole numbers (``80.0``, ``12.5``, ``1.3393``).
The encoder writes the decimal text verbatim, so a client parsing with ``Decimal`` sees exact
values, and one comparing ``"12.50"`` as text with what comes back learns it must not.
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

from starlette.responses import Response

from sandbox import wire
from sandbox.wire import gateway_page

__all__ = ["php_number", "dumps", "respond", "csv_response", "error_page", "redirect",
           "gateway_page"]


def php_number(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError(f"cannot write {value} as a JSON number")
    text = format(value.normalize(), "f")
    if "." not in text:
        text += ".0"
    return "0.0" if text in ("-0.0", "-0") else text


def dumps(value: Any) -> str:
    """Serialise dicts, lists, str, int, bool, None and Decimal (as PHP writes a float)."""
    return wire.dumps(value, number=php_number)


def respond(payload: Any, status_code: int = 200,
            headers: dict[str, str] | None = None) -> Response:
    return wire.json_response(dumps(payload), status_code, headers)


def _plain(value: Any) -> Any:
    """A CSV cell: nested objects JSON-encoded [seed], numbers as PHP writes them."""
    if isinstance(value, (dict, list)):
        return dumps(value)
    if isinstance(value, Decimal):
        return php_number(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    return "" if value is None else value


def csv_response(rows: list[dict[str, Any]], filename: str,
                 columns: list[str] | None = None) -> Response:
    """``format=csv``: UTF-8 with a BOM, every matching row, paging ignored [seed]."""
    buffer = io.StringIO()
    columns = columns or (list(rows[0]) if rows else [])
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_plain(row.get(c)) for c in columns])
    return Response(
        content=("\ufeff" + buffer.getvalue()).encode("utf-8"),
        media_type="text/csv; charset=UTF-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


TITLES = {
    401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 419: "Page Expired", 422: "Unprocessable Content",
    429: "Too Many Requests", 500: "Server Error", 503: "Service Unavailable",
}


def error_page(status: int, headers: dict[str, str] | None = None) -> Response:
    """Laravel's HTML error page, what a client that did not ask for JSON gets."""
    title = TITLES.get(status, "Error")
    html = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{title}</title>\n</head>\n<body>\n<div class=\"flex-center\">"
        f"<div class=\"code\">{status}</div><div class=\"message\">{title}</div></div>\n"
        "</body>\n</html>\n"
    )
    return Response(html, status_code=status, media_type="text/html", headers=headers)


def redirect(location: str) -> Response:
    """Laravel's RedirectResponse: a login page for a guest, "back" for failed validation."""
    html = (
        "<!DOCTYPE html>\n<html>\n    <head>\n        <meta charset=\"UTF-8\" />\n"
        f"        <meta http-equiv=\"refresh\" content=\"0;url='{location}'\" />\n\n"
        f"        <title>Redirecting to {location}</title>\n    </head>\n    <body>\n"
        f"        Redirecting to <a href=\"{location}\">{location}</a>.\n    </body>\n</html>"
    )
    return Response(html, status_code=302, media_type="text/html",
                    headers={"Location": location})
