"""GELU as ReLU minus a tabulated correction, the spec of ``gateware/gelu.py``.

``GELU(x) = ReLU(x) - delta(|x|)`` with ``delta(a) = a * Phi(-a)``, which is even in x, peaks at
about 0.17 and is below 2**-20 beyond |x| = 5.5 (as in Edge-MoE). The input is a fixed-point value
with ``GELU_IN_FRAC`` fractional bits (int16, produced by the fc1 requantisation); delta is a table
with step 1/32 up to 5.5, linearly interpolated, in units of ``2**-DELTA_FRAC``. The result carries
``GELU_OUT_FRAC`` fractional bits, three more than the input, so that its one rounding before the
requantisation to the activation width (int13, by the caller's multiplier and shift) stays well
below that width's step: at the Q7.8 input's own step it alone was 3 LSB of an int13 output.
"""

import math

import numpy as np

from .fixedpoint import ACT_BITS, RES_BITS, check_range, requantize, rshift_round

__all__ = [
    "GELU_IN_BITS", "GELU_IN_FRAC", "GELU_OUT_FRAC", "DELTA_STEP_BITS", "DELTA_FRAC", "DELTA_LUT",
    "gelu_fixed", "gelu", "gelu_exact",
]

#: Width and fractional bits of the GELU input (int16, Q7.8: range +-128, step 1/256).
GELU_IN_BITS = RES_BITS
GELU_IN_FRAC = 8
#: Fractional bits of ``gelu_fixed``'s result (Q7.11).
GELU_OUT_FRAC = GELU_IN_FRAC + 3
#: Table step is 2**-DELTA_STEP_BITS = 1/32.
DELTA_STEP_BITS = 5
#: Table values are in units of 2**-DELTA_FRAC.
DELTA_FRAC = 14
#: Entries cover |x| in [0, 5.5]; beyond, delta is 0.
_DELTA_ENTRIES = int(5.5 * (1 << DELTA_STEP_BITS)) + 1


def _delta(a):
    return a * 0.5 * math.erfc(a / math.sqrt(2.0))


#: ``DELTA_LUT[i] = round(delta(i / 32) * 2**DELTA_FRAC)``; the last entry (5.5) is 0.
DELTA_LUT = np.array([math.floor(_delta(i / (1 << DELTA_STEP_BITS)) * (1 << DELTA_FRAC) + 0.5)
                      for i in range(_DELTA_ENTRIES)], dtype=np.int64)

_INTERP_BITS = GELU_IN_FRAC - DELTA_STEP_BITS


def gelu_fixed(x):
    """GELU of int16 Q7.8 input, result with ``GELU_OUT_FRAC`` fractional bits (not saturated)."""
    x = check_range(x, GELU_IN_BITS, what="GELU input")
    a = np.abs(x)
    i = np.minimum(np.right_shift(a, _INTERP_BITS), _DELTA_ENTRIES - 1)
    f = np.bitwise_and(a, (1 << _INTERP_BITS) - 1)
    lo = DELTA_LUT[i]
    hi = DELTA_LUT[np.minimum(i + 1, _DELTA_ENTRIES - 1)]
    # delta in units of 2**-(DELTA_FRAC + _INTERP_BITS), then one rounding to the output's units.
    delta_fine = np.left_shift(lo, _INTERP_BITS) + (hi - lo) * f
    delta = rshift_round(delta_fine, DELTA_FRAC + _INTERP_BITS - GELU_OUT_FRAC)
    delta = np.where(i >= _DELTA_ENTRIES - 1, 0, delta)
    return np.left_shift(np.maximum(x, 0), GELU_OUT_FRAC - GELU_IN_FRAC) - delta


def gelu(x, mult, shift, bits=ACT_BITS):
    """GELU of Q7.8 input requantised to ``bits`` (ACT_BITS) by ``mult * 2**-shift`` (which scale
    ``gelu_fixed``'s ``GELU_OUT_FRAC`` fractional bits)."""
    return requantize(gelu_fixed(x), mult, shift, bits)


def gelu_exact(x):
    """Float reference: exact (erf) GELU of the same fixed-point input, in real units."""
    v = np.asarray(x, dtype=np.float64) / (1 << GELU_IN_FRAC)
    return v * 0.5 * (1.0 + np.vectorize(math.erf)(v / math.sqrt(2.0)))
