"""resource.Quantity as the API server stores it: parsed exactly, re-emitted in canonical form.

An implementation of its own, written from k8s.io/apimachinery/pkg/api/resource (quantity.go's
CanonicalizeBytes and its tests), never the operator's parser: the emulator plays the real server, so it
must be able to catch the operator's mistakes about quantities, not share them.

The rules: the format (binary Ki..Ei, decimal SI n..E, or decimal exponent e<N>) is the one the value was
written in; values finer than 1n round up (away from zero); a binary value below 1024 in magnitude, or
not a whole number, is emitted in decimal SI instead; a decimal mantissa is the integer with the
largest exponent that is a multiple of 3 (`1.5` is `1500m`, `2000` is `2k`); zero is `0`.
"""

from __future__ import annotations

import re
from decimal import ROUND_UP, Decimal, localcontext

_SYNTAX = re.compile(r"([+-]?)(\d*)(?:\.(\d*))?(.*)")
_BINARY_EXP = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_EXP = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX = {exp: suffix for suffix, exp in _DECIMAL_EXP.items()}
_BINARY_SUFFIX = {exp: suffix for suffix, exp in _BINARY_EXP.items()} | {0: ""}


class QuantityError(ValueError):
    """Not a quantity: the API server answers 400/422 ("quantities must match the regular expression")."""


def parse(written: str | int | float) -> tuple[int, str]:
    """-> (the value in nano-units, rounded up as the server does, format: "binary" | "si" | "exponent")."""
    text = repr(written) if isinstance(written, float) else str(written).strip()
    match = _SYNTAX.fullmatch(text)
    if match is None or not (match.group(2) or match.group(3)):
        raise QuantityError(f"quantities must match the regular expression: {written!r}")
    sign, whole, fraction, suffix = match.groups()
    digits = Decimal(f"{sign}{whole or '0'}.{fraction or '0'}")
    if suffix in _BINARY_EXP:
        amount, fmt = digits * (2 ** _BINARY_EXP[suffix]), "binary"
    elif suffix in _DECIMAL_EXP:
        amount, fmt = digits.scaleb(_DECIMAL_EXP[suffix]), "si"
    elif re.fullmatch(r"[eE][+-]?\d+", suffix):
        amount, fmt = digits.scaleb(int(suffix[1:])), "exponent"
    else:
        raise QuantityError(f"unable to parse quantity's suffix: {written!r}")
    with localcontext() as ctx:
        ctx.prec = 200
        nanos = amount.scaleb(9).to_integral_value(rounding=ROUND_UP)
    return int(nanos), fmt


def canonical(written: str | int | float) -> str:
    """The string the API server stores and returns for `written`."""
    nanos, fmt = parse(written)
    if nanos == 0:
        return "0"
    sign, magnitude = ("-" if nanos < 0 else ""), abs(nanos)
    if fmt == "binary" and magnitude >= 1024 * 10**9 and magnitude % 10**9 == 0:
        number, exponent = magnitude // 10**9, 0
        while number % 1024 == 0 and exponent < 60:
            number, exponent = number // 1024, exponent + 10
        return f"{sign}{number}{_BINARY_SUFFIX[exponent]}"
    number, exponent = magnitude, -9
    while number % 10 == 0:
        number, exponent = number // 10, exponent + 1
    shift = exponent % 3
    number, exponent = number * 10**shift, exponent - shift
    if fmt == "exponent" or exponent not in _DECIMAL_SUFFIX:
        return f"{sign}{number}" + (f"e{exponent}" if exponent else "")
    return f"{sign}{number}{_DECIMAL_SUFFIX[exponent]}"
