"""Expert-reordering queues (a counting sort of token ids by expert), the spec of
``gateware/expert_queue.py``.

From each token's k selected experts and gate weights, build one queue per expert holding its
tokens in increasing token order with their weights, and the list of experts that have tokens in
increasing expert order. The MoE then runs expert by expert over this list, so each expert's
weights are fetched once per layer and experts without tokens cost nothing.
"""

from dataclasses import dataclass

import numpy as np

from .fixedpoint import as_int

__all__ = ["ExpertQueues", "build_expert_queues"]


@dataclass(frozen=True)
class ExpertQueues:
    """Per-expert token queues laid out back to back.

    Attributes
    ----------
    counts : ndarray, shape [E]
        Tokens queued for each expert.
    offsets : ndarray, shape [E]
        Start of each expert's queue in ``tokens``/``weights`` (exclusive prefix sum of counts).
    tokens, weights : ndarray, shape [T*k]
        Token ids and their gate weights, queue after queue.
    active : ndarray
        Experts with at least one token, in increasing order.
    """

    counts: np.ndarray
    offsets: np.ndarray
    tokens: np.ndarray
    weights: np.ndarray
    active: np.ndarray

    def queue(self, expert):
        """Return ``(tokens, weights)`` queued for ``expert``."""
        lo = int(self.offsets[expert])
        hi = lo + int(self.counts[expert])
        return self.tokens[lo:hi], self.weights[lo:hi]


def build_expert_queues(indices, weights, num_experts):
    """Counting sort of ``[T, k]`` expert ``indices`` (with ``weights``) into expert queues."""
    indices = as_int(indices)
    weights = as_int(weights)
    if indices.ndim != 2 or weights.shape != indices.shape:
        raise ValueError("indices and weights must both have shape [tokens, k]")
    if indices.size and (indices.min() < 0 or indices.max() >= num_experts):
        raise ValueError(f"expert index out of range 0..{num_experts - 1}")
    counts = np.bincount(indices.ravel(), minlength=num_experts).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    fill = offsets.copy()
    tokens = np.empty(indices.size, dtype=np.int64)
    queued = np.empty(indices.size, dtype=np.int64)
    # Tokens in increasing order, each token's selections in rank order: the order in which the
    # hardware receives them from the top-k unit.
    for t in range(indices.shape[0]):
        for r in range(indices.shape[1]):
            e = indices[t, r]
            tokens[fill[e]] = t
            queued[fill[e]] = weights[t, r]
            fill[e] += 1
    return ExpertQueues(counts, offsets, tokens, queued, np.flatnonzero(counts).astype(np.int64))
