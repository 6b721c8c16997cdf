"""The frame's program: which operation runs on which buffers, in which order.

``compile_schedule(cfg)`` turns a config into a list of :class:`Step`; golden's backbone executes
exactly this list, and the hardware sequencer runs the same list, so spec and hardware walk the
same steps. Buffers are named on-chip tensors: ``pixels`` (patch vectors), ``residual`` (int16),
``ln`` (int13 LayerNorm output), ``qkv`` (int13), ``attn`` (int13 head outputs), ``hidden16``
(Q7.8 GELU input), ``hidden`` (int13 GELU output).
"""

from dataclasses import asdict, dataclass

from .fixedpoint import ACT_BITS, RES_BITS

__all__ = ["Step", "compile_schedule"]


@dataclass(frozen=True)
class Step:
    """One operation of the frame program.

    Attributes
    ----------
    op : str
        ``embed``, ``layernorm``, ``linear``, ``attention``, ``gelu`` or ``moe``.
    layer : int
        Encoder layer (-1 for the embedding).
    src, dst : str
        Buffers read and written.
    params : str
        Prefix of the artifact tensors the step uses (e.g. ``"l3.qkv."``).
    out_bits : int
        Output width (ACT_BITS = 13 for activations, 16 for the residual and the GELU input).
    add_residual : bool
        Add the result into ``dst`` (the residual stream) instead of overwriting it.
    head : int
        Attention head (``attention`` steps only).
    """

    op: str
    layer: int
    src: str
    dst: str
    params: str
    out_bits: int = ACT_BITS
    add_residual: bool = False
    head: int = -1

    def to_dict(self):
        return asdict(self)


def compile_schedule(cfg):
    """The program of one frame for config ``cfg``."""
    steps = [Step("embed", -1, "pixels", "residual", "embed.", RES_BITS, add_residual=True)]
    for layer in range(cfg.depth):
        L = f"l{layer}."
        steps.append(Step("layernorm", layer, "residual", "ln", L + "ln1."))
        steps.append(Step("linear", layer, "ln", "qkv", L + "qkv."))
        steps += [Step("attention", layer, "qkv", "attn", L, head=h) for h in range(cfg.heads)]
        steps.append(Step("linear", layer, "attn", "residual", L + "proj.", RES_BITS, add_residual=True))
        steps.append(Step("layernorm", layer, "residual", "ln", L + "ln2."))
        if cfg.is_moe(layer):
            steps.append(Step("moe", layer, "ln", "residual", L, RES_BITS, add_residual=True))
        else:
            steps.append(Step("linear", layer, "ln", "hidden16", L + "fc1.", RES_BITS))
            steps.append(Step("gelu", layer, "hidden16", "hidden", L + "gelu."))
            steps.append(Step("linear", layer, "hidden", "residual", L + "fc2.", RES_BITS, add_residual=True))
    return steps
