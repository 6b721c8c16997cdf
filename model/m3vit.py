"""M3ViT backbone in PyTorch (float), with the routing of Edge-MoE's hardware.

Weights live in a flat dict of float32 arrays named as Edge-MoE's weight files (see
``model/weights.py``), so the importer, the float model and the quantiser share one vocabulary.
The model computes in float64 (``FLOAT``): in float32 its sums depend on how torch's CPU kernels
split them over threads, and calibration's peaks and second moments, and through them the
quantised artifact, then differed between machines (59 of 360 arrays between 1 and 2 threads).

Routing (DESIGN.md §2): ``logits = x @ w_gate[task]`` (no bias), ``w_gate`` being M³ViT's
``[dim, experts]`` gate; softmax over all experts; the k largest logits are selected (ties to the
lower expert index); each selected expert's output is weighted by its softmax probability, without
renormalising over the k. The weights dict holds the gate as Edge-MoE's files do, transposed
(``l{L}_w_gate_T_task{t}``, ``[experts, dim]``), so the product is ``x @ w_gate_T.T``; see
``model.weights.GateLayout`` for where each layout comes from.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from .config import M3ViTConfig

__all__ = ["FLOAT", "M3ViT", "expected_shapes", "patchify"]

#: The float model's precision (module docstring: why not float32).
FLOAT = torch.float64


def expected_shapes(cfg: M3ViTConfig):
    """Name -> shape of every weight tensor of ``cfg``, in Edge-MoE's file naming."""
    d, e = cfg.dim, cfg.num_experts
    shapes = {
        "patch_embed_weight": (d, cfg.in_chans, cfg.patch, cfg.patch),
        "patch_embed_bias": (d,),
        "pos_embed": (cfg.tokens, d),
    }
    for layer in range(cfg.depth):
        p = f"l{layer}_"
        shapes.update({
            p + "norm1_weight": (d,), p + "norm1_bias": (d,),
            p + "qkv_weight": (3 * d, d), p + "qkv_bias": (3 * d,),
            p + "attn_proj_weight": (d, d), p + "attn_proj_bias": (d,),
            p + "norm2_weight": (d,), p + "norm2_bias": (d,),
        })
        if cfg.is_moe(layer):
            for task in range(cfg.num_tasks):
                shapes[p + f"w_gate_T_task{task}"] = (e, d)     # Edge-MoE's layout, [experts, dim]
            shapes.update({
                p + "htoh4_weight": (e, cfg.expert_hidden, d), p + "htoh4_bias": (e, cfg.expert_hidden),
                p + "h4toh_weight": (e, d, cfg.expert_hidden), p + "h4toh_bias": (e, d),
            })
        else:
            shapes.update({
                p + "fc1_weight": (cfg.mlp_hidden, d), p + "fc1_bias": (cfg.mlp_hidden,),
                p + "fc2_weight": (d, cfg.mlp_hidden), p + "fc2_bias": (d,),
            })
    return shapes


def patchify(image, patch):
    """``[..., C, H, W]`` -> ``[..., patches, C*patch*patch]``, patches in raster order, each
    flattened in (channel, row, column) order to match Conv2d weights."""
    *lead, c, h, w = image.shape
    n = len(lead)
    x = image.reshape(*lead, c, h // patch, patch, w // patch, patch)
    order = (*range(n), n + 1, n + 3, n, n + 2, n + 4)
    x = x.permute(*order) if torch.is_tensor(x) else x.transpose(order)
    return x.reshape(*lead, (h // patch) * (w // patch), c * patch * patch)


class M3ViT(torch.nn.Module):
    """Float M3ViT backbone producing the token features fed to the (host-side) task heads.

    Parameters
    ----------
    cfg : M3ViTConfig
        Model shape.
    weights : dict of str to ndarray
        Tensors named and shaped as :func:`expected_shapes`.
    """

    def __init__(self, cfg: M3ViTConfig, weights):
        super().__init__()
        self.cfg = cfg
        shapes = expected_shapes(cfg)
        missing = sorted(set(shapes) - set(weights))
        if missing:
            raise ValueError(f"weights missing for config {cfg.name!r}: {', '.join(missing[:5])}"
                             + (" ..." if len(missing) > 5 else ""))
        self.w = {}
        for name, shape in shapes.items():
            t = torch.as_tensor(np.asarray(weights[name]), dtype=FLOAT)
            if tuple(t.shape) != shape:
                hint = ""
                if "w_gate_T" in name and tuple(t.shape) == shape[::-1]:
                    hint = (" (that is M³ViT's w_gate layout [dim, experts]; this name holds Edge-MoE's "
                            "transpose [experts, dim]: convert with model.weights.gate_to_edge_moe)")
                raise ValueError(f"weight {name} has shape {tuple(t.shape)}, expected {shape}{hint}")
            self.w[name] = t

    def embed(self, image):
        """Patch embedding (a GEMM over patch vectors) plus position embedding; token 0 is the
        class token, which Edge-MoE folds into ``pos_embed[0]`` (its own embedding is zero)."""
        cfg, w = self.cfg, self.w
        patches = patchify(image, cfg.patch)
        x = patches @ w["patch_embed_weight"].reshape(cfg.dim, -1).T + w["patch_embed_bias"]
        cls = torch.zeros(*x.shape[:-2], 1, cfg.dim, dtype=x.dtype)
        return torch.cat([cls, x], dim=-2) + w["pos_embed"]

    def attention(self, layer, h, record):
        cfg, w, p = self.cfg, self.w, f"l{layer}_"
        qkv = h @ w[p + "qkv_weight"].T + w[p + "qkv_bias"]
        t = h.shape[-2]
        q, k, v = qkv.reshape(*h.shape[:-2], t, 3, cfg.heads, cfg.head_dim).unbind(-3)
        q, k, v = (a.transpose(-2, -3) for a in (q, k, v))          # [..., heads, T, head_dim]
        record(layer, "q", q)
        record(layer, "k", k)
        record(layer, "v", v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim)
        o = torch.softmax(scores, dim=-1) @ v
        o = o.transpose(-2, -3).reshape(*h.shape[:-2], t, cfg.dim)
        record(layer, "attn_out", o)
        return o @ w[p + "attn_proj_weight"].T + w[p + "attn_proj_bias"]

    def mlp(self, layer, h, record):
        w, p = self.w, f"l{layer}_"
        a = F.gelu(h @ w[p + "fc1_weight"].T + w[p + "fc1_bias"])
        record(layer, "hidden", a)
        return a @ w[p + "fc2_weight"].T + w[p + "fc2_bias"]

    def route(self, layer, h, task):
        """Return ``(indices [..., T, k], weights [..., T, k], logits [..., T, E])``."""
        logits = h @ self.w[f"l{layer}_w_gate_T_task{task}"].T
        probs = torch.softmax(logits, dim=-1)
        # Stable sort: among equal logits the lower expert index ranks first.
        idx = torch.argsort(-logits, dim=-1, stable=True)[..., :self.cfg.top_k]
        return idx, torch.gather(probs, -1, idx), logits

    def moe(self, layer, h, task, record):
        w, p = self.w, f"l{layer}_"
        idx, gate, logits = self.route(layer, h, task)
        record(layer, "gate_logits", logits)
        record(layer, "experts", idx)
        out = torch.zeros_like(h)
        hidden = []
        for e in range(self.cfg.num_experts):
            sel = (idx == e)                                   # [..., T, k]
            weight = (gate * sel).sum(-1)                      # [..., T]
            tok = sel.any(-1)
            if not bool(tok.any()):
                continue
            record(layer, f"expert_in.{e}", h[tok])
            a = F.gelu(h[tok] @ w[p + "htoh4_weight"][e].T + w[p + "htoh4_bias"][e])
            record(layer, f"expert_hidden.{e}", a)
            hidden.append(a)
            y = a @ w[p + "h4toh_weight"][e].T + w[p + "h4toh_bias"][e]
            out[tok] += weight[tok][:, None] * y
        if hidden:
            record(layer, "hidden", torch.cat(hidden))
        return out

    def forward(self, image, task, record=None):
        """Backbone features ``[..., tokens, dim]`` of ``image`` ``[..., C, H, W]`` for ``task``.

        ``record``, if given, is called as ``record(layer, name, tensor)`` at every point the
        quantiser calibrates and the numerics report compares (layer -1 is the embedding).
        """
        cfg = self.cfg
        if not 0 <= task < cfg.num_tasks:
            raise ValueError(f"task {task} out of range: config {cfg.name!r} has {cfg.num_tasks} tasks")
        rec = record or (lambda layer, name, t: None)
        image = torch.as_tensor(image, dtype=FLOAT)
        rec(-1, "patches", patchify(image, cfg.patch))
        x = self.embed(image)
        rec(-1, "residual", x)
        for layer in range(cfg.depth):
            p = f"l{layer}_"
            h = F.layer_norm(x, (cfg.dim,), self.w[p + "norm1_weight"], self.w[p + "norm1_bias"], cfg.ln_eps)
            rec(layer, "ln1", h)
            x = x + self.attention(layer, h, rec)
            rec(layer, "residual_attn", x)
            h = F.layer_norm(x, (cfg.dim,), self.w[p + "norm2_weight"], self.w[p + "norm2_bias"], cfg.ln_eps)
            rec(layer, "ln2", h)
            x = x + (self.moe(layer, h, task, rec) if cfg.is_moe(layer) else self.mlp(layer, h, rec))
            rec(layer, "residual", x)
        return x
