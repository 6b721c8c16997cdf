"""Bias, requantisation and optional residual add on the MAC array's output, the spec of
``gateware/postprocess.py``.

    out = saturate(rshift_round((acc + bias) * mult, shift) [+ residual], bits)

``bias``, ``mult`` and ``shift`` are per output channel (last axis). With a residual, the rounded
value is added before the one saturation, so the residual stream never wraps.
"""

from .fixedpoint import as_int, rshift_round, saturate, REQUANT_MULT_BITS

__all__ = ["postprocess"]


def postprocess(acc, bias, mult, shift, bits, residual=None):
    """Return ``bits``-wide outputs from exact accumulators (see module docstring)."""
    mult = as_int(mult)
    if mult.size and (mult.min() < 0 or mult.max() >= (1 << REQUANT_MULT_BITS)):
        raise ValueError(f"requantisation multiplier must lie in [0, 2**{REQUANT_MULT_BITS})")
    value = rshift_round((as_int(acc) + as_int(bias)) * mult, shift)
    if residual is not None:
        value = value + as_int(residual)
    return saturate(value, bits)
