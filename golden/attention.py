"""One attention head in integers: scores, single-pass softmax, A·V.

    acc_s = q_h @ k_h.T                              (MAC array, int10 x int10)
    u     = requantize(acc_s, score_mult, score_shift, 16)   (log2 domain, EXP_IN_FRAC bits)
    p     = softmax(u, PROB_FRAC)                    (unsigned, 0..2**PROB_FRAC)
    acc_o = p @ v_h                                  (MAC array, probability 0..256 x int10)
    o     = requantize(acc_o, av_mult, av_shift, ACT_BITS)

Rows are queries; the softmax walks each row's keys in index order, as the hardware receives them.
"""

from .fixedpoint import ACT_BITS, RES_BITS, requantize
from .mac_array import matmul
from .softmax import softmax

__all__ = ["PROB_FRAC", "attention_head"]

#: Attention probabilities carry 8 fractional bits, so 1.0 is 256 (fits the MAC array's 10-bit operand).
PROB_FRAC = 8


def attention_head(q, k, v, score_mult, score_shift, av_mult, av_shift, record=None):
    """Return the int10 head output ``[T, head_dim]`` for int10 ``q``, ``k``, ``v`` ``[T, head_dim]``."""
    u = requantize(matmul(q, k), score_mult, score_shift, RES_BITS)
    p = softmax(u, PROB_FRAC)
    if record is not None:
        record("scores", u)
        record("probs", p)
    return requantize(matmul(p, v.T), av_mult, av_shift, ACT_BITS)
