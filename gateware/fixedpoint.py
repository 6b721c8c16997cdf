"""Combinational twins of ``golden.fixedpoint``'s rounding and saturation, for every vector unit."""

from amaranth.hdl import Const, Mux, Value, signed

__all__ = ["rshift_round", "saturate"]


def rshift_round(value, shift):
    """``golden.fixedpoint.rshift_round``: floor shift right by ``shift`` with round half up.

    ``shift`` is an ``int`` or an unsigned ``Value``. The rounding constant ``2**(shift-1)`` would
    need a variable left shift; ``((value >> (shift - 1)) + 1) >> 1`` is the same number
    (``floor((floor(v / 2**(s-1)) + 1) / 2) == floor((v + 2**(s-1)) / 2**s)``) and needs only the
    right shifter the result needs anyway.
    """
    if isinstance(shift, int):
        if shift < 0:
            raise ValueError("shift must be non-negative")
        if shift == 0:
            return value
        return ((value >> (shift - 1)) + 1) >> 1
    shift = Value.cast(shift)
    if shift.shape().signed:
        raise TypeError("shift must be unsigned")
    rounded = ((value >> (shift - 1)[:len(shift)]) + 1) >> 1
    return Mux(shift == 0, value, rounded)


def saturate(value, bits):
    """``golden.fixedpoint.saturate`` to a signed ``bits``-wide integer."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    clamped = Mux(value > hi, Const(hi, signed(bits)), Mux(value < lo, Const(lo, signed(bits)), value))
    return clamped[:bits].as_signed()
