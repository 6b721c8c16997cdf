"""Single-pass (online-normaliser) softmax in base 2, the spec of ``gateware/softmax.py``.

Inputs are integers ``u`` in the log2 domain with ``EXP_IN_FRAC`` fractional bits: element ``j``
stands for ``2 ** (u_j / 2**EXP_IN_FRAC)``. (Attention scores and gate logits reach this domain
through one ``requantize`` whose multiplier folds in ``log2(e)`` and the score scale.)

Pass 1 (one element per step, the only pass that must see the whole row):
    running max ``m`` and running sum ``S`` of ``2**(u - m)`` scaled by ``2**EXP_FRAC``;
    when a new maximum arrives the old sum is rescaled by ``2**(m_old - m_new)``.
Once per row:
    ``rcp = 2**RCP_BITS // S`` (one integer division).
Pass 2 (normalisation, deferred until the consumer streams the row again):
    ``p_j = rshift_round(exp2_neg(m - u_j) * rcp, RCP_BITS - out_frac)``, unsigned with ``out_frac``
    fractional bits, so 1.0 is ``2**out_frac`` (attention uses 8 bits, the gate 15).

``exp2_neg(a) = 2**(-a / 2**EXP_IN_FRAC)`` uses a table of the fractional part and a right shift
by the integer part, both rounded half up.
"""

import math

import numpy as np

from .fixedpoint import as_int, rshift_round

__all__ = [
    "EXP_IN_FRAC", "EXP_FRAC", "RCP_BITS", "EXP_LUT", "MAX_ROW_LEN",
    "exp2_neg", "softmax_stats", "softmax_normalise", "softmax", "softmax_exact",
]

#: Fractional bits of the log2-domain input.
EXP_IN_FRAC = 8
#: ``exp2_neg(0) == 2**EXP_FRAC``.
EXP_FRAC = 15
#: Reciprocal precision: ``rcp = 2**RCP_BITS // S``.
RCP_BITS = 40
#: Longest row: keeps the running sum below 2**(EXP_FRAC + 12).
MAX_ROW_LEN = 4096
#: Shifts beyond this give 0 for every operand the unit produces; hardware clamps the same way.
_MAX_SHIFT = 62

#: ``EXP_LUT[r] = round(2**EXP_FRAC * 2**(-r / 2**EXP_IN_FRAC))`` for the fractional part r.
EXP_LUT = np.array([math.floor((1 << EXP_FRAC) * 2.0 ** (-r / (1 << EXP_IN_FRAC)) + 0.5)
                    for r in range(1 << EXP_IN_FRAC)], dtype=np.int64)


def _split(a):
    """Split a non-negative log2-domain distance into (integer part clamped, table entry)."""
    q = np.minimum(np.right_shift(a, EXP_IN_FRAC), _MAX_SHIFT - EXP_FRAC)
    return q, EXP_LUT[np.bitwise_and(a, (1 << EXP_IN_FRAC) - 1)]


def exp2_neg(a):
    """``2**(-a / 2**EXP_IN_FRAC)`` scaled by ``2**EXP_FRAC`` for integer ``a >= 0``."""
    a = as_int(a)
    if np.any(a < 0):
        raise ValueError("exp2_neg takes non-negative distances")
    q, t = _split(a)
    return rshift_round(t, q)


def softmax_stats(u):
    """Pass 1 over the last axis: return ``(m, S)`` per row, in element order.

    ``S`` is the running sum after the last element; it equals (up to the rounding of each
    rescale) ``sum_j 2**((u_j - m) / 2**EXP_IN_FRAC) * 2**EXP_FRAC``.
    """
    u = as_int(u)
    n = u.shape[-1]
    if n < 1 or n > MAX_ROW_LEN:
        raise ValueError(f"softmax rows must have 1..{MAX_ROW_LEN} elements, got {n}")
    m = u[..., 0].copy()
    s = np.full(m.shape, 1 << EXP_FRAC, dtype=np.int64)
    for j in range(1, n):
        x = u[..., j]
        new_max = x > m
        # New maximum: S <- S * 2**((m - x)/2**F) + 1.0; otherwise S <- S + 2**((x - m)/2**F).
        q, t = _split(np.abs(x - m))
        rescaled = rshift_round(s * t, q + EXP_FRAC) + (1 << EXP_FRAC)
        added = s + rshift_round(t, q)
        s = np.where(new_max, rescaled, added)
        m = np.where(new_max, x, m)
    return m, s


def softmax_normalise(u, m, s, out_frac):
    """Pass 2: probabilities with ``out_frac`` fractional bits from the row statistics."""
    u = as_int(u)
    if not 1 <= out_frac <= RCP_BITS - EXP_FRAC:
        raise ValueError(f"out_frac must lie in [1, {RCP_BITS - EXP_FRAC}]")
    rcp = (np.int64(1) << RCP_BITS) // as_int(s)
    e = exp2_neg(as_int(m)[..., None] - u)
    return rshift_round(e * rcp[..., None], RCP_BITS - out_frac)


def softmax(u, out_frac):
    """Integer softmax over the last axis; returns probabilities scaled by ``2**out_frac``."""
    m, s = softmax_stats(u)
    return softmax_normalise(u, m, s, out_frac)


def softmax_exact(u):
    """Float reference: exact base-2 softmax of the same integer inputs (for error bounds)."""
    x = np.asarray(u, dtype=np.float64) / (1 << EXP_IN_FRAC)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp2(x)
    return e / e.sum(axis=-1, keepdims=True)
