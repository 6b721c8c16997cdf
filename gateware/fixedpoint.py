"""Combinational twins of ``golden.fixedpoint``'s rounding and saturation, for every vector unit."""

from amaranth.hdl import Cat, Const, Mux, Value, signed

__all__ = ["rshift_round", "saturate", "halve_round_saturate"]


def rshift_round(value, shift):
    """``golden.fixedpoint.rshift_round``: floor shift right by ``shift`` with round half up.

    ``shift`` is an ``int`` or an unsigned ``Value``. The rounding constant ``2**(shift-1)`` would
    need a variable left shift; ``(((value << 1) >> shift) + 1) >> 1`` is the same number
    (``floor((floor(2v / 2**s) + 1) / 2) == floor((v + 2**(s-1)) / 2**s)``, and ``v`` at
    ``shift == 0``) and needs only the right shifter the result needs anyway, one bit wider.
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
    return (((value << 1) >> shift) + 1) >> 1


def saturate(value, bits):
    """``golden.fixedpoint.saturate`` to a signed ``bits``-wide integer."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    clamped = Mux(value > hi, Const(hi, signed(bits)), Mux(value < lo, Const(lo, signed(bits)), value))
    return clamped[:bits].as_signed()


def halve_round_saturate(half, bits):
    """``saturate((half + 1) >> 1, bits)``: the second stage of a rounding shift by a variable amount.

    The first stage, ``half = (value << 1) >> shift``, keeps one bit below the result's LSB (the
    same number as ``value >> (shift - 1)`` for ``shift >= 1``, and it makes ``shift == 0`` exact
    without a special case). Adding the rounding bit over ``half``'s full width and then comparing
    the sum with the limits would put two carry chains in series; instead the add works on the low
    ``bits + 2`` bits only, in parallel with a check that the high bits are all sign copies
    (else the result saturates by the sign) and with the limit compares, which move before the add:
    ``(h + 1) >> 1 > hi`` exactly when ``h > 2 * hi``, and ``< lo`` exactly when ``h < 2 * lo - 1``.
    """
    half = Value.cast(half)
    if not half.shape().signed:
        half = Cat(half, Const(0, 1)).as_signed()
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    low_width = bits + 2
    if len(half) <= low_width:
        return saturate((half + 1) >> 1, bits)
    sign = half[-1]
    fits = Mux(sign, half[low_width - 1:].all(), ~half[low_width - 1:].any())
    narrow = half[:low_width].as_signed()
    rounded = ((narrow + 1) >> 1)[:bits].as_signed()
    saturated = Mux(sign, Const(lo, signed(bits)), Const(hi, signed(bits)))
    return Mux(~fits, saturated,
               Mux(narrow > 2 * hi, Const(hi, signed(bits)),
                   Mux(narrow < 2 * lo - 1, Const(lo, signed(bits)), rounded)))
