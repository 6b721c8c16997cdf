"""One attention head in integers: scores, single-pass softmax, A·V.

    acc_s = q_h @ k_h.T                              (MAC array, int13 x int13)
    u     = requantize(acc_s, score_mult, score_shift, 16)   (log2 domain, EXP_IN_FRAC bits)
    p     = softmax(u, PROB_FRAC)                    (unsigned, 0..2**PROB_FRAC)
    acc_o = p @ v_h                                  (MAC array, probability 0..4096 x int13)
    o     = requantize(acc_o, av_mult, av_shift, ACT_BITS)

Rows are queries; the softmax walks each row's keys in index order, as the hardware receives them.
"""

from .fixedpoint import ACT_BITS, PROB_FRAC, RES_BITS, requantize
from .mac_array import matmul
from .softmax import softmax

__all__ = ["PROB_FRAC", "attention_head"]



def attention_head(q, k, v, score_mult, score_shift, av_mult, av_shift, record=None):
    """Return the int13 head output ``[T, head_dim]`` for int13 ``q``, ``k``, ``v`` ``[T, head_dim]``."""
    u = requantize(matmul(q, k), score_mult, score_shift, RES_BITS)
    p = softmax(u, PROB_FRAC)
    if record is not None:
        record("scores", u)
        record("probs", p)
    return requantize(matmul(p, v.T), av_mult, av_shift, ACT_BITS)
