"""Post-training quantisation of M3ViT into the integer artifact that golden and gateware load.

Scales are calibrated as the largest magnitude seen on a few inputs (both tasks). Activations are
int13 (``golden.fixedpoint.ACT_BITS``). Weights are int8 symmetric per output channel, except the
gates, which are per tensor so that logits of different experts are comparable for top-k. Biases
are int32 at the accumulator's scale. Every real-valued rescale becomes one ``(mult, shift)`` pair
(see ``golden.fixedpoint.requantize``).

Weights are rounded with error feedback (:func:`round_with_error_feedback`, the column-by-column
scheme of Frantar et al., "GPTQ", 2023) rather than each to its nearest level: each column's rounding
error is pushed onto the columns not yet rounded, weighted by the calibration inputs' second
moments, so that the layer's *output* on those inputs moves as little as an int8 grid allows. The
grid and scales are the same as plain rounding; only which level each weight takes changes, so the
hardware does not see it. Measured on the real weights (README), it is what brings the integer
model's routing to the float model's on the tokens whose top-2 margins are a few hundredths.
Fixed formats need no calibration: attention scores and gate logits enter the softmax in a log2
domain with ``EXP_IN_FRAC`` fractional bits; fc1 outputs enter the GELU as Q7.8.
"""

import math

import numpy as np
import torch

from golden.fixedpoint import ACT_BITS, REQUANT_MULT_BITS, RES_BITS, WEIGHT_BITS, int_range
from golden.gelu import GELU_IN_FRAC, GELU_OUT_FRAC
from golden.layernorm import BETA_BITS, GAMMA_BITS, Z_FRAC
from golden.softmax import EXP_IN_FRAC
from golden.attention import PROB_FRAC

from .artifact import Artifact
from .config import M3ViTConfig
from .m3vit import M3ViT

__all__ = ["ROUNDINGS", "quantize_multiplier", "calibrate", "quantize_model", "calibration_images",
           "round_with_error_feedback"]

_Q8 = (1 << (WEIGHT_BITS - 1)) - 1
_LOG2E = 1.0 / math.log(2.0)


def quantize_multiplier(real):
    """``(mult, shift)`` with ``mult * 2**-shift ~= real``, mult using all REQUANT_MULT_BITS bits."""
    real = np.asarray(real, dtype=np.float64)
    mult = np.zeros(real.shape, dtype=np.int64)
    shift = np.zeros(real.shape, dtype=np.int64)
    for i, r in np.ndenumerate(real):
        if not np.isfinite(r) or r < 0:
            raise ValueError(f"cannot requantise by {r}")
        if r == 0:
            continue
        s = (REQUANT_MULT_BITS - 1) - math.floor(math.log2(r))
        m = round(r * 2.0 ** s)
        if m >= 1 << REQUANT_MULT_BITS:
            m, s = m // 2, s - 1
        if s < 0:
            raise ValueError(f"rescale factor {r} too large for the requantiser")
        if s > 62:
            m, s = round(r * 2.0 ** 62), 62
        mult[i], shift[i] = m, s
    return mult, shift


def calibration_images(image):
    """A few deterministic variants of ``image`` for calibration: itself, mirrored, darker, brighter."""
    img = np.asarray(image, dtype=np.float32)
    return [img, img[..., ::-1].copy(), img * 0.75, np.minimum(img * 1.25, 255 / 256)]


#: Points whose tensors are the inputs of a linear layer: their second moments steer the rounding.
_LINEAR_INPUTS = ("patches", "ln1", "attn_out", "ln2", "hidden", "expert_in.", "expert_hidden.")


def calibrate(model: M3ViT, images):
    """Over ``images`` and all tasks: the largest magnitude at every recorded point, and the
    second-moment matrix ``X.T @ X`` of every linear layer's input (keyed as the peaks)."""
    peaks, grams = {}, {}

    def record(layer, name, t):
        if t.dtype.is_floating_point:
            key = (layer, name)
            peaks[key] = max(peaks.get(key, 0.0), float(t.abs().max()))
            if name.startswith(_LINEAR_INPUTS) and not (name == "hidden" and model.cfg.is_moe(layer)):
                x = t.reshape(-1, t.shape[-1]).double()
                grams[key] = grams.get(key, 0.0) + (x.T @ x).numpy()

    with torch.no_grad():
        for img in images:
            for task in range(model.cfg.num_tasks):
                model(img, task, record)
    return peaks, grams


def round_with_error_feedback(w, scale, gram, damping=0.01):
    """Round ``w`` [out, in] to int8 levels of ``scale`` (per row [out, 1], or a scalar) so that
    ``x @ w.T`` changes least for inputs whose second moments are ``gram`` [in, in].

    Columns are rounded in order; each column's error, divided by the pivot of the inverse
    ``gram``'s Cholesky factor, is subtracted from the later columns in proportion to that factor's
    row (GPTQ). ``damping`` times the mean diagonal is added to ``gram`` so that inputs that never
    varied in calibration still give a well-posed problem. Returns the int8 levels."""
    w = np.array(w, dtype=np.float64)
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64).reshape(-1, 1), (w.shape[0], 1))
    h = np.array(gram, dtype=np.float64)
    h += damping * max(float(np.mean(np.diag(h))), 1e-12) * np.eye(h.shape[0])
    u = np.linalg.cholesky(np.linalg.inv(h)).T          # upper: inv(h) = u.T @ u
    q = np.empty(w.shape, dtype=np.int64)
    for i in range(w.shape[1]):
        q[:, i] = np.clip(np.round(w[:, i] / scale[:, 0]), -_Q8, _Q8)
        err = (w[:, i] - q[:, i] * scale[:, 0]) / u[i, i]
        w[:, i + 1:] -= np.outer(err, u[i, i + 1:])
    return q


def _scale(peak, bits=ACT_BITS):
    return max(float(peak), 1e-8) / ((1 << (bits - 1)) - 1)


def _weights_int8(w, axis_out=True, gram=None):
    """Symmetric int8 per output channel (first axis) or per tensor; rounded with error feedback
    on ``gram`` (the input's second moments) where calibration saw that input."""
    w = np.asarray(w, dtype=np.float64)
    if axis_out:
        s = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) / _Q8
        s = np.where(s > 0, s, 1.0)
    else:
        s = max(np.abs(w).max() / _Q8, 1e-12)
    if gram is not None and w.ndim == 2:
        q = round_with_error_feedback(w, s, gram)
    else:
        q = np.round(w / (s.reshape(-1, *([1] * (w.ndim - 1))) if axis_out else s))
    return np.clip(q, -_Q8, _Q8).astype(np.int8), s


def _bias_int32(b, acc_scale):
    q = np.round(np.asarray(b, dtype=np.float64) / acc_scale)
    lo, hi = int_range(32)
    if q.min() < lo or q.max() > hi:
        raise OverflowError("bias does not fit int32 at the accumulator's scale")
    return q.astype(np.int64)


def _linear(w, b, s_in, s_out, gram=None):
    """int8 weight, int32 bias and per-channel requantisation from ``s_in`` to ``s_out``."""
    wq, sw = _weights_int8(w, gram=gram)
    mult, shift = quantize_multiplier(s_in * sw / s_out)
    return {"w": wq, "b": _bias_int32(b, s_in * sw), "mult": mult, "shift": shift}, sw


def _layernorm(gamma, beta, s_out, s_res, n, eps):
    g = np.asarray(gamma, dtype=np.float64) / s_out
    peak = max(np.abs(g).max(), 1e-12)
    shift = int(np.clip(math.floor(math.log2(((1 << (GAMMA_BITS - 1)) - 1) / peak)), 0, 40))
    gq = np.round(g * 2.0 ** shift).astype(np.int64)
    bq = np.round(np.asarray(beta, dtype=np.float64) / s_out * 2.0 ** (Z_FRAC + shift))
    lo, hi = int_range(BETA_BITS)
    if bq.min() < lo or bq.max() > hi:
        raise OverflowError("LayerNorm beta does not fit its width")
    return {"gamma": gq, "beta": bq.astype(np.int64), "shift": np.int64(shift)}


#: Weight rounding schemes: error feedback (the default) or each weight to its nearest level.
ROUNDINGS = ("error-feedback", "nearest")


def quantize_model(cfg: M3ViTConfig, weights, calib_images, rounding="error-feedback"):
    """Quantise float ``weights`` of ``cfg`` into an :class:`~model.artifact.Artifact`.

    ``rounding`` is one of ``ROUNDINGS``; "nearest" is kept to measure what error feedback buys."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown weight rounding {rounding!r}; choose one of {', '.join(ROUNDINGS)}")
    model = M3ViT(cfg, weights)
    peaks, grams = calibrate(model, calib_images)
    if rounding == "nearest":
        grams = {}
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    res_peak = max(v for (layer, name), v in peaks.items() if name.startswith("residual"))
    s_res = _scale(res_peak * 1.25, RES_BITS)    # headroom: residuals grow on unseen images
    s_pix = 1.0 / 256
    eps_term = max(1, round(cfg.dim ** 2 * cfg.ln_eps / s_res ** 2))
    t = {}
    scales = {"residual": s_res, "pixel": s_pix}

    embed, sw = _linear(w["patch_embed_weight"].reshape(cfg.dim, -1), w["patch_embed_bias"], s_pix, s_res,
                        grams.get((-1, "patches")))
    # The int8 pixel q stands for (q + 128) / 256: fold the +128 into the bias, exactly.
    embed["b"] = embed["b"] + 128 * embed["w"].astype(np.int64).sum(axis=1)
    t.update({f"embed.{k}": v for k, v in embed.items()})
    t["embed.pos"] = np.clip(np.round(w["pos_embed"] / s_res), *int_range(RES_BITS)).astype(np.int64)

    for layer in range(cfg.depth):
        p, L = f"l{layer}_", f"l{layer}."
        s_ln1 = _scale(peaks[(layer, "ln1")])
        s_ln2 = _scale(peaks[(layer, "ln2")])
        s_q, s_k, s_v = (_scale(peaks[(layer, n)]) for n in ("q", "k", "v"))
        s_o = _scale(peaks[(layer, "attn_out")])
        s_h = _scale(peaks[(layer, "hidden")])
        scales.update({L + "ln1": s_ln1, L + "ln2": s_ln2, L + "q": s_q, L + "k": s_k, L + "v": s_v,
                       L + "attn_out": s_o, L + "hidden": s_h})
        for name, s_out in (("ln1", s_ln1), ("ln2", s_ln2)):
            ln = _layernorm(w[p + f"norm{name[-1]}_weight"], w[p + f"norm{name[-1]}_bias"],
                            s_out, s_res, cfg.dim, cfg.ln_eps)
            t.update({L + f"{name}.{k}": v for k, v in ln.items()})

        qkv_out = np.repeat([s_q, s_k, s_v], cfg.dim)
        qkv, _ = _linear(w[p + "qkv_weight"], w[p + "qkv_bias"], s_ln1, qkv_out, grams.get((layer, "ln1")))
        t.update({L + f"qkv.{k}": v for k, v in qkv.items()})
        m, s = quantize_multiplier(s_q * s_k / math.sqrt(cfg.head_dim) * _LOG2E * (1 << EXP_IN_FRAC))
        t[L + "score.mult"], t[L + "score.shift"] = m, s
        m, s = quantize_multiplier(s_v / (1 << PROB_FRAC) / s_o)
        t[L + "av.mult"], t[L + "av.shift"] = m, s
        proj, _ = _linear(w[p + "attn_proj_weight"], w[p + "attn_proj_bias"], s_o, s_res,
                          grams.get((layer, "attn_out")))
        t.update({L + f"proj.{k}": v for k, v in proj.items()})

        gelu_out = quantize_multiplier(2.0 ** -GELU_OUT_FRAC / s_h)
        if cfg.is_moe(layer):
            gates = [_weights_int8(w[p + f"w_gate_T_task{task}"], axis_out=False, gram=grams.get((layer, "ln2")))
                     for task in range(cfg.num_tasks)]
            t[L + "gate.w"] = np.stack([g for g, _ in gates])
            mult, shift = quantize_multiplier(
                np.array([s_ln2 * sg for _, sg in gates]) * _LOG2E * (1 << EXP_IN_FRAC))
            t[L + "gate.mult"], t[L + "gate.shift"] = mult, shift
            fc1 = [_linear(w[p + "htoh4_weight"][e], w[p + "htoh4_bias"][e], s_ln2, 2.0 ** -GELU_IN_FRAC,
                           grams.get((layer, f"expert_in.{e}")))[0] for e in range(cfg.num_experts)]
            fc2 = [_linear(w[p + "h4toh_weight"][e], w[p + "h4toh_bias"][e], s_h, s_res,
                           grams.get((layer, f"expert_hidden.{e}")))[0] for e in range(cfg.num_experts)]
            for name, per_expert in (("expert_fc1", fc1), ("expert_fc2", fc2)):
                for k in ("w", "b", "mult", "shift"):
                    t[L + f"{name}.{k}"] = np.stack([d[k] for d in per_expert])
        else:
            fc1, _ = _linear(w[p + "fc1_weight"], w[p + "fc1_bias"], s_ln2, 2.0 ** -GELU_IN_FRAC,
                             grams.get((layer, "ln2")))
            fc2, _ = _linear(w[p + "fc2_weight"], w[p + "fc2_bias"], s_h, s_res, grams.get((layer, "hidden")))
            t.update({L + f"fc1.{k}": v for k, v in fc1.items()})
            t.update({L + f"fc2.{k}": v for k, v in fc2.items()})
        t[L + "gelu.mult"], t[L + "gelu.shift"] = (np.int64(x) for x in gelu_out)

    t["ln.eps_term"] = np.int64(eps_term)
    return Artifact(cfg, {k: np.asarray(v) for k, v in t.items()}, scales)
