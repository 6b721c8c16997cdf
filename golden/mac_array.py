"""Exact integer matrix product, the spec of ``gateware/mac_array.py``.

Every matrix product of the model runs on the one MAC array: activation operands are signed
``PROB_OPERAND_BITS`` = 14 bits (int13 activations, or attention probabilities 0..4096), weight
operands signed ``ACT_BITS`` = 13 bits (int8 weights, or K and V for attention); accumulation is
exact.
"""

from .fixedpoint import ACT_BITS, PROB_OPERAND_BITS, check_range

__all__ = ["ACC_BITS", "matmul"]

#: Accumulator width: |a*w| <= 2**18 (10 x 8 bits) summed over K=768 is below 2**28, plus bias.
ACC_BITS = 32


def matmul(a, w):
    """``a @ w.T`` exactly: ``a`` is ``[M, K]`` activations, ``w`` is ``[N, K]`` (PyTorch layout)."""
    a = check_range(a, PROB_OPERAND_BITS, what="MAC activation operand")
    w = check_range(w, ACT_BITS, what="MAC weight operand")
    if a.shape[-1] != w.shape[-1]:
        raise ValueError(f"inner dimensions differ: {a.shape} x {w.shape}")
    return check_range(a @ w.T, ACC_BITS, what="MAC accumulator")
