"""Mixture of experts in integers: gate, top-k, expert-reordered execution, weighted combine.

    logits = x @ W_gate[task].T                      (int32, one weight scale per gate)
    top-k on logits (ties to the lower expert index)
    g      = softmax(requantize(logits, gate_mult, gate_shift, 16), GATE_FRAC)[selected]
    queues = counting sort of tokens by expert; experts run in increasing index order
    per active expert e, on its queued tokens:
        h = requantize(x @ W1[e].T + b1[e] -> Q7.8);  a = gelu(h) (int13);
        o = requantize(a @ W2[e].T + b2[e] -> residual scale, int16)
        acc[token] += g * o                         (exact: any order gives the same sum)
    residual = sat16(rshift_round((residual << GATE_FRAC) + acc, GATE_FRAC))

The combine keeps the weighted sum exact and rounds once, so the result does not depend on
the order in which experts (or a token's k selections) are visited.
"""

import numpy as np

from .expert_queue import build_expert_queues
from .fixedpoint import RES_BITS, as_int, requantize, rshift_round, saturate
from .gelu import GELU_IN_BITS, gelu
from .mac_array import matmul
from .postprocess import postprocess
from .softmax import softmax
from .topk import topk

__all__ = ["GATE_FRAC", "route", "expert_forward", "moe"]

#: Gate weights carry 15 fractional bits (1.0 = 2**15).
GATE_FRAC = 15


def route(x, gate_w, gate_mult, gate_shift, k):
    """Return ``(indices [T, k], gate weights [T, k], logits [T, E])`` for int8 tokens ``x``."""
    logits = matmul(x, gate_w)
    indices, _ = topk(logits, k)
    probs = softmax(requantize(logits, gate_mult, gate_shift, RES_BITS), GATE_FRAC)
    return indices, np.take_along_axis(probs, indices, axis=-1), logits


def expert_forward(x, fc1, fc2, gelu_mult, gelu_shift):
    """One expert (or dense MLP) on int13 tokens ``x``: int16 output at the residual scale.

    ``fc1``/``fc2`` are dicts with ``w``, ``b``, ``mult``, ``shift``."""
    h = postprocess(matmul(x, fc1["w"]), fc1["b"], fc1["mult"], fc1["shift"], GELU_IN_BITS)
    a = gelu(h, gelu_mult, gelu_shift)
    return postprocess(matmul(a, fc2["w"]), fc2["b"], fc2["mult"], fc2["shift"], RES_BITS), h, a


def moe(x, residual, gate, experts, gelu_mult, gelu_shift, k, record=None):
    """MoE on int13 ``x`` [T, D] added into the int16 ``residual`` [T, D]; returns the new residual.

    ``gate`` is ``(w [E, D], mult, shift)``; ``experts(e)`` returns that expert's ``(fc1, fc2)``."""
    gate_w, gate_mult, gate_shift = gate
    indices, weights, logits = route(x, gate_w, gate_mult, gate_shift, k)
    queues = build_expert_queues(indices, weights, gate_w.shape[0])
    acc = np.left_shift(as_int(residual), GATE_FRAC)
    for e in queues.active:
        tokens, g = queues.queue(e)
        fc1, fc2 = experts(int(e))
        o, _, _ = expert_forward(x[tokens], fc1, fc2, gelu_mult, gelu_shift)
        acc[tokens] += g[:, None] * o
    if record is not None:
        record("gate_logits", logits)
        record("experts", indices)
        record("gate_weights", weights)
        record("experts_run", queues.active)
    return saturate(rshift_round(acc, GATE_FRAC), RES_BITS)
