"""The whole M3ViT backbone in integers: runs the frame program of ``golden/schedule.py``.

Input: int8 pixels (``model.weights.image_to_pixels``); output: the int16 residual stream after
the last layer (dequantise with ``artifact.scales["residual"]``). Every step's output is recorded
so that gateware tests can replay any layer from its exact inputs.
"""

from dataclasses import dataclass, field

import numpy as np

from .attention import attention_head
from .fixedpoint import RES_BITS, as_int, check_range
from .gelu import gelu
from .layernorm import layernorm
from .mac_array import matmul
from .moe import moe
from .postprocess import postprocess
from .schedule import compile_schedule

__all__ = ["GoldenRun", "run_backbone", "patch_vectors"]


def patch_vectors(pixels, patch):
    """int8 pixels ``[C, H, W]`` -> patch vectors ``[patches, C*patch*patch]`` (raster order)."""
    c, h, w = pixels.shape
    x = pixels.reshape(c, h // patch, patch, w // patch, patch).transpose(1, 3, 0, 2, 4)
    return x.reshape((h // patch) * (w // patch), c * patch * patch)


@dataclass
class GoldenRun:
    """Result of one frame: ``output`` (int16 features) and ``trace``: per step index, the
    step and a dict of named int64 arrays it produced."""

    output: np.ndarray
    trace: list = field(default_factory=list)

    def layer_outputs(self):
        """The residual stream after the embedding (key -1) and after each layer."""
        out = {}
        for step, data in self.trace:
            if step.dst == "residual":
                out[step.layer] = data["residual"]
        return out


def _linear(a, art, prefix, out_bits, residual):
    t = art.tensors
    return postprocess(matmul(a, t[prefix + "w"]), t[prefix + "b"], t[prefix + "mult"], t[prefix + "shift"],
                       out_bits, residual)


def run_backbone(artifact, pixels, task):
    """Run one frame of ``artifact`` on int8 ``pixels`` ``[C, H, W]`` for ``task``."""
    cfg, t = artifact.config, artifact.tensors
    if not 0 <= task < cfg.num_tasks:
        raise ValueError(f"task {task} out of range: config {cfg.name!r} has {cfg.num_tasks} tasks")
    pixels = check_range(pixels, 8, what="pixels")
    if pixels.shape != (cfg.in_chans, cfg.image_height, cfg.image_width):
        raise ValueError(f"pixels have shape {list(pixels.shape)}, expected "
                         f"{[cfg.in_chans, cfg.image_height, cfg.image_width]}")
    buf = {"pixels": patch_vectors(pixels, cfg.patch)}
    run = GoldenRun(None)
    d, hd = cfg.dim, cfg.head_dim
    for step in compile_schedule(cfg):
        data = {}
        rec = data.__setitem__
        src = buf.get(step.src)
        if step.op == "embed":
            res = np.empty((cfg.tokens, d), dtype=np.int64)
            res[0] = t["embed.pos"][0]                   # class token: zero embedding + position
            res[1:] = _linear(src, artifact, "embed.", RES_BITS, t["embed.pos"][1:])
            buf["residual"] = res
        elif step.op == "layernorm":
            p = step.params
            buf["ln"] = layernorm(src, t[p + "gamma"], t[p + "beta"], int(t[p + "shift"]), int(t["ln.eps_term"]))
        elif step.op == "linear":
            residual = buf[step.dst] if step.add_residual else None
            buf[step.dst] = _linear(src, artifact, step.params, step.out_bits, residual)
        elif step.op == "attention":
            h, p = step.head, step.params
            q, k, v = (src[:, s * d + h * hd: s * d + (h + 1) * hd] for s in range(3))
            if step.head == 0:
                buf["attn"] = np.zeros((cfg.tokens, d), dtype=np.int64)
            buf["attn"][:, h * hd:(h + 1) * hd] = attention_head(
                q, k, v, t[p + "score.mult"], t[p + "score.shift"], t[p + "av.mult"], t[p + "av.shift"], rec)
        elif step.op == "gelu":
            buf[step.dst] = gelu(src, t[step.params + "mult"], t[step.params + "shift"])
        elif step.op == "moe":
            p = step.params

            def experts(e, p=p):
                return tuple({k: t[f"{p}{name}.{k}"][e] for k in ("w", "b", "mult", "shift")}
                             for name in ("expert_fc1", "expert_fc2"))

            gate = (t[p + "gate.w"][task], t[p + "gate.mult"][task], t[p + "gate.shift"][task])
            buf["residual"] = moe(src, buf["residual"], gate, experts, t[p + "gelu.mult"], t[p + "gelu.shift"],
                                  cfg.top_k, rec)
        else:
            raise ValueError(f"unknown schedule op {step.op!r}")
        data[step.dst] = buf[step.dst]
        run.trace.append((step, data))
    run.output = as_int(buf["residual"])
    return run
