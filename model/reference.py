"""An independent implementation's outputs on the real weights: loading and comparing with them.

``reference/`` beside an Edge-MoE weight folder holds what Edge-MoE's own fixed-point HLS C++
(``ap_fixed<32,10>`` activations, 16-bit weights) computed on that folder's weights and image: the
residual stream after patch embedding, after layer 0 and after layer 1's attention, and layer 1's
gate logits, top-2 experts and gate probabilities per task (file names and layouts in the data
folder's README). They depend on real weights alone, so they check the float model (and through it
the gate layout) against someone else's reading of the same files.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import M3ViTConfig
from .weights import WeightError, read_raw

__all__ = ["Reference", "load_reference", "REFERENCE_LAYER"]

#: The MoE layer whose routing the reference holds.
REFERENCE_LAYER = 1

#: Residual streams: file stem -> the float model's record key (layer, name) for the same point.
STREAMS = {
    "x_embed": (-1, "residual"),
    "x_l0": (0, "residual"),
    "x_l1_attn": (1, "residual_attn"),
}


@dataclass
class Reference:
    """The reference's tensors: ``streams[stem]`` [tokens, dim]; per task ``logits[t]``
    [tokens, experts], ``top2[t]`` [tokens, 2] (descending logit) and ``gate_weights[t]`` [tokens, 2]."""

    streams: dict
    logits: list
    top2: list
    gate_weights: list
    source: str


def load_reference(folder, cfg: M3ViTConfig):
    """Read a ``reference/`` folder for ``cfg`` (the edge-moe shape: layer 1 is a MoE layer).

    Raises
    ------
    WeightError
        The folder or a file is missing or has the wrong size, or ``cfg`` has no MoE layer 1.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightError(f"reference folder {folder} does not exist")
    if cfg.depth <= REFERENCE_LAYER or not cfg.is_moe(REFERENCE_LAYER) or cfg.top_k != 2:
        raise WeightError(f"config {cfg.name!r} is not the reference's shape (a top-2 MoE layer "
                          f"{REFERENCE_LAYER}): compare the edge-moe config with it")
    t, d, e = cfg.tokens, cfg.dim, cfg.num_experts
    streams = {stem: read_raw(folder / f"{stem}.float32.bin", (t, d), "reference") for stem in STREAMS}
    tasks = range(cfg.num_tasks)
    return Reference(
        streams=streams,
        logits=[read_raw(folder / f"l1_gate_logits_task{k}.float32.bin", (t, e), "reference")
                for k in tasks],
        top2=[read_raw(folder / f"l1_top2_task{k}.int32.bin", (t, 2), "reference", "<i4") for k in tasks],
        gate_weights=[read_raw(folder / f"l1_gate_weights_task{k}.float32.bin", (t, 2), "reference")
                      for k in tasks],
        source=str(folder),
    )
