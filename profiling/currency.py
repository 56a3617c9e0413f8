"""Money in one currency: what spend, order amounts and prices are counted in.

An event's `amount` and `price` are in its `currency` (default USD). A shop
that sells in several currencies needs them in one unit before they are
summed or compared: a user's spend, the fraud model's "amount against the
usual" and the segments' spend and price features would otherwise count
150 yen as 150 dollars.

`Currencies(base, rates)`: `rates` maps each other currency to its units per
one unit of `base` (`{"EUR": 0.92, "JPY": 150.0}` with base USD). A value in
a currency without a rate is left out (`None`): the event still counts, its
money does not. Without rates, every value counts as sent: a one-currency shop
needs nothing set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

CONVERTED: Final = "converted"
AS_SENT: Final = "as_sent"
LEFT_OUT: Final = "left_out"
Handling = Literal["converted", "as_sent", "left_out"]
CODE_PATTERN: Final = r"^[A-Z]{3}$"  # ISO 4217's form
# The rates taken: far wider than any two currencies in use are apart (about 1e6 at the
# widest). Past them a rate is a slip (a unit mixed up, an exponent); a tiny one, even
# finite and above 0 (1e-320), made every amount in its currency infinite, or its sums
# and squares in the amount statistics. Within them, an amount up to the contract's
# 1e7 stays under 1e16 in the base currency.
MIN_RATE: Final = 1e-9
MAX_RATE: Final = 1e9


@dataclass(frozen=True, slots=True)
class Currencies:
    """The currency money is counted in, and the rates that bring others to it."""

    base: str = "USD"
    rates: Mapping[str, float] = field(default_factory=dict)  # units of each per unit of base

    def __post_init__(self) -> None:
        """Codes of three letters A-Z, rates from MIN_RATE to MAX_RATE; the base's own, if
        given, 1."""
        for code in (self.base, *self.rates):
            if not re.fullmatch(CODE_PATTERN, code):
                raise ValueError(f"{code!r} is not a currency code (3 letters A-Z, ISO 4217)")
        for code, rate in self.rates.items():
            if not (isinstance(rate, int | float) and MIN_RATE <= rate <= MAX_RATE):
                raise ValueError(
                    f"the rate of {code} must be from {MIN_RATE:g} to {MAX_RATE:g} units per "
                    f"{self.base}, not {rate!r}"
                )
        own = self.rates.get(self.base, 1)
        if own != 1:
            raise ValueError(f"{self.base} is the base currency: its rate is 1, not {own}")

    def value(self, amount: float | None, currency: str) -> float | None:
        """`amount` of `currency` in the base currency; None when there is no rate for it."""
        if amount is None or currency == self.base or not self.rates:
            return amount
        rate = self.rates.get(currency)
        return None if rate is None else amount / rate

    def handling(self, currency: str) -> Handling:
        """What happens to money sent in `currency` (not the base)."""
        if not self.rates:
            return AS_SENT
        return CONVERTED if currency in self.rates else LEFT_OUT


SAME_CURRENCY: Final = Currencies()
