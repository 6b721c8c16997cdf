"""The integer primitives every golden op and every gateware block share.

One rounding rule for the whole project: *round half up* on an arithmetic right shift,
``(x + 2**(s-1)) >> s`` (floor shift), which is one adder in hardware.
One saturation rule: clamp to the signed range of the target width.

All functions take and return numpy ``int64`` arrays (or Python ints); no floats.
"""

import numpy as np

__all__ = [
    "WEIGHT_BITS", "ACT_BITS", "PROB_FRAC", "PROB_OPERAND_BITS", "RES_BITS", "REQUANT_MULT_BITS", "REQUANT_MAX_SHIFT",
    "as_int", "rshift_round", "saturate", "requantize", "int_range", "check_range",
]

#: Width of the weights (symmetric int8).
WEIGHT_BITS = 8
#: Width of the activations between operators (LayerNorm outputs, Q, K, V, head outputs, GELU
#: outputs). Chosen by the layer-1 routing agreement with the float model on the real weights
#: (README, "Routing fidelity"): with error-feedback weight rounding, int10 activations and
#: 8-bit attention probabilities agree on 0.922 / 0.946 of tokens (task 0 / 1), int12 with 10-bit
#: probabilities 0.961 / 0.984, int13 with 12-bit probabilities 0.984 / 0.984. The weight port
#: carries K and V, so it is ACT_BITS wide too; both operands stay inside DSP48E2's 27 x 18.
ACT_BITS = 13
#: Attention probabilities carry PROB_FRAC fractional bits, so 1.0 is 2**PROB_FRAC.
PROB_FRAC = 12
#: The MAC array's activation operand: ACT_BITS activations, and attention probabilities
#: 0..2**PROB_FRAC (a fully dominant key gives 2**PROB_FRAC, which needs PROB_FRAC + 2 signed bits).
PROB_OPERAND_BITS = max(ACT_BITS, PROB_FRAC + 2)
#: Width of the residual stream (the token features between layers).
RES_BITS = 16
#: Requantisation multipliers are unsigned and below 2**REQUANT_MULT_BITS.
REQUANT_MULT_BITS = 16
#: Requantisation shifts lie in [0, REQUANT_MAX_SHIFT].
REQUANT_MAX_SHIFT = 63


def as_int(x):
    """Return ``x`` as an int64 numpy array (exact for integer input)."""
    a = np.asarray(x)
    if a.dtype.kind not in "iub":
        raise TypeError(f"integer data expected, got dtype {a.dtype}")
    return a.astype(np.int64)


def int_range(bits, signed=True):
    """Return the (lowest, highest) value of a ``bits``-wide integer."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def saturate(x, bits, signed=True):
    """Clamp ``x`` to the range of a ``bits``-wide integer."""
    lo, hi = int_range(bits, signed)
    return np.clip(as_int(x), lo, hi)


def rshift_round(x, shift):
    """Arithmetic right shift by ``shift`` with round-half-up: ``floor(x / 2**shift + 1/2)``.

    ``shift`` may be an array (broadcast against ``x``); every element must lie in [0, 62].
    """
    x = as_int(x)
    shift = as_int(shift)
    if np.any(shift < 0) or np.any(shift > 62):
        raise ValueError("shift must lie in [0, 62]")
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    return np.right_shift(x + half, shift)


def requantize(acc, mult, shift, bits, signed=True):
    """Scale an accumulator by ``mult * 2**-shift``, round half up, saturate to ``bits``.

    This is the single requantisation of the project: GEMM outputs, attention scores into the
    softmax's log2 domain, GELU outputs and expert outputs all go through it.
    ``mult`` and ``shift`` broadcast against ``acc`` (per output channel on the last axis).
    """
    acc = as_int(acc)
    mult = as_int(mult)
    if np.any(mult < 0) or np.any(mult >= (1 << REQUANT_MULT_BITS)):
        raise ValueError(f"requantisation multiplier must lie in [0, 2**{REQUANT_MULT_BITS})")
    return saturate(rshift_round(acc * mult, shift), bits, signed)


def check_range(x, bits, signed=True, what="value"):
    """Raise ``OverflowError`` unless every element of ``x`` fits ``bits`` bits."""
    lo, hi = int_range(bits, signed)
    x = as_int(x)
    if x.size and (x.min() < lo or x.max() > hi):
        raise OverflowError(f"{what} does not fit {'s' if signed else 'u'}int{bits}: "
                            f"range [{x.min()}, {x.max()}]")
    return x
