"""Kubernetes quantities (`500m`, `1Gi`, `1e3`) as exact numbers, so that what the operator wrote and what
the API server stored are compared by value: the server re-emits every quantity in its canonical form
(`0.5` comes back `500m`, `1024Mi` comes back `1Gi`), and a string comparison would see drift forever.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from types import MappingProxyType

# The grammar of k8s.io/apimachinery's ParseQuantity: a signed decimal number, then one suffix, binary
# (Ki..Ei), decimal SI (n u m "" k M G T P E) or a decimal exponent (e3, E-2).
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_BINARY = MappingProxyType({"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60})
_DECIMAL = MappingProxyType({"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18})
_NANO = Fraction(1, 10**9)


def parse(text: str | int | float) -> Fraction:
    """The exact value of a quantity; ValueError when it is not one. Like the API server, values finer
    than a nano-unit round up (away from zero) to the next one, so `0.0000000001` equals `1n`."""
    raw = str(text).strip() if not isinstance(text, float) else repr(text)
    match = _QUANTITY.match(raw)
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = Fraction(match.group(1)), match.group(2) or ""
    if suffix in _BINARY:
        value = number * _BINARY[suffix]
    elif suffix in _DECIMAL:
        value = number * Fraction(10) ** _DECIMAL[suffix]
    else:
        value = number * Fraction(10) ** int(suffix[1:])
    nanos = value / _NANO
    if nanos.denominator != 1:
        nanos = Fraction(math.ceil(nanos) if nanos > 0 else math.floor(nanos))
    return nanos * _NANO


def equal(a: object, b: object) -> bool:
    """Whether two written quantities are the same amount (False when either is not a quantity)."""
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, str | int | float):
        return False
    if not isinstance(b, str | int | float):
        return False
    try:
        return parse(a) == parse(b)
    except ValueError:
        return False
