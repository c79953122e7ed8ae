"""ISO 4217 minor-unit exponents: how many decimals a currency's smallest unit stands for.

Brex sends money as an integer count of the currency's smallest unit (``{"amount": 700,
"currency": "USD"}`` is USD 7.00 [spec: Money]). The exponent is ISO 4217's, not "always cents":
JPY 1500 is JPY 1500, KWD 12345 is KWD 12.345. A currency missing here is refused by
``to_major`` with a message saying so; we never guess an exponent.

The table is ISO 4217's list of current codes (SIX, amendment 176 and later): every code with an
exponent other than 2, then the codes with 2. Funds and precious metals (XAU, XDR, ...) have no
minor unit and are not money we book; they are left out on purpose.
"""

from __future__ import annotations

from decimal import Decimal

_EXPONENT_0 = ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX",
               "UYI", "VND", "VUV", "XAF", "XOF", "XPF")
_EXPONENT_3 = ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")
_EXPONENT_4 = ("CLF", "UYW")
_EXPONENT_2 = (
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF",
    "CHE", "CHF", "CHW", "CNY", "COP", "COU", "CRC", "CUP", "CVE", "CZK", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ", "GYD",
    "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR", "KPW",
    "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT",
    "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK",
    "NPR", "NZD", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR",
    "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP",
    "SZL", "THB", "TJS", "TMT", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "USD", "USN", "UYU",
    "UZS", "VED", "VES", "WST", "XCD", "XCG", "YER", "ZAR", "ZMW", "ZWG",
)

EXPONENTS: dict[str, int] = {
    **{code: 2 for code in _EXPONENT_2},
    **{code: 0 for code in _EXPONENT_0},
    **{code: 3 for code in _EXPONENT_3},
    **{code: 4 for code in _EXPONENT_4},
}


class UnknownCurrency(ValueError):
    """A currency code whose ISO 4217 exponent we do not know: the amount cannot be read."""

    def __init__(self, currency: str) -> None:
        super().__init__(
            f"currency {currency!r} is not an ISO 4217 currency we know the minor unit of, so "
            "its integer amount cannot be converted safely; add its exponent to "
            "shared/integrations/brex/currencies.py if it is a real currency")
        self.currency = currency


def exponent(currency: str) -> int:
    try:
        return EXPONENTS[currency]
    except KeyError:
        raise UnknownCurrency(currency) from None


def to_major(amount: int, currency: str) -> Decimal:
    """Integer minor units -> a Decimal in major units, exact: ``to_major(12345, "KWD")`` is
    ``Decimal("12.345")``, ``to_major(1500, "JPY")`` is ``Decimal("1500")``."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"a minor-unit amount is an integer, got {amount!r}")
    return Decimal(amount).scaleb(-exponent(currency))
