"""Top-k selection per token, the spec of ``gateware/topk.py``.

The k largest of E integer logits are selected; a strictly greater logit wins, so among equal
logits the lower expert index is taken first. Selections are returned in rank order (largest
first, ties by lower index).
"""

import numpy as np

from .fixedpoint import as_int

__all__ = ["topk"]


def topk(logits, k):
    """Return ``(indices, values)``, each of shape ``[..., k]``, of the k largest logits."""
    logits = as_int(logits)
    n = logits.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"top-k needs 1 <= k <= {n} experts, got k={k}")
    # A stable sort on the negated logits keeps equal logits in index order.
    order = np.argsort(-logits, axis=-1, kind="stable")[..., :k]
    return order.astype(np.int64), np.take_along_axis(logits, order, axis=-1)
