"""How far the integer golden model is from the float model, and its operators from exact maths.

``compare(...)`` runs both models on one image for every task and reports, per layer, the cosine
similarity and largest absolute error of golden's dequantised residual stream against the float
one, and per MoE layer the fraction of tokens whose set of k experts equals the float model's.
The operator figures sweep every representable input of the GELU and every distance the softmax's
exp table can see.
"""

import numpy as np
import torch

from golden.attention import PROB_FRAC
from golden.backbone import run_backbone
from golden.gelu import GELU_IN_BITS, gelu, gelu_exact
from golden.softmax import softmax, softmax_exact
from golden.fixedpoint import ACT_BITS, int_range

from .m3vit import M3ViT
from .quantize import calibration_images, quantize_model
from .reference import REFERENCE_LAYER, STREAMS
from .weights import image_to_pixels

__all__ = ["compare", "compare_with_reference", "gelu_error_lsb", "softmax_error", "numerics_report"]


def _cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def compare(cfg, weights, image, artifact=None, tasks=None, rounding="error-feedback"):
    """Golden vs float on ``image`` for ``tasks`` (default all); returns ``(layers, routing, artifact)``.
    Without ``artifact``, quantises with ``rounding`` (``model.quantize.ROUNDINGS``)."""
    if artifact is None:
        artifact = quantize_model(cfg, weights, calibration_images(image), rounding)
    model = M3ViT(cfg, weights)
    pixels = image_to_pixels(image)
    # The float model sees the same 8-bit pixels as the accelerator.
    image_q = (pixels + 128) / 256.0
    s_res = artifact.scales["residual"]
    layers, routing = [], []
    for task in range(cfg.num_tasks) if tasks is None else tasks:
        ref = {}

        def record(layer, name, t):
            if name in ("residual", "experts"):
                ref[(layer, name)] = t.detach().numpy()

        with torch.no_grad():
            model(image_q, task, record)
        run = run_backbone(artifact, pixels, task)
        for layer, res in sorted(run.layer_outputs().items()):
            f = ref[(layer, "residual")]
            g = res * s_res
            layers.append({"layer": layer, "task": task, "cosine": _cosine(g, f),
                           "max_abs_err": float(np.abs(g - f).max()),
                           "ref_max_abs": float(np.abs(f).max())})
        for step, data in run.trace:
            if "experts" in data:
                mine = np.sort(data["experts"], axis=-1)
                theirs = np.sort(ref[(step.layer, "experts")], axis=-1)
                routing.append({"layer": step.layer, "task": task,
                                "agreement": float(np.mean(np.all(mine == theirs, axis=-1))),
                                "experts_run": int(len(data["experts_run"]))})
    return layers, routing, artifact


def _expert_sets_equal(a, b):
    return np.all(np.sort(a, axis=-1) == np.sort(b, axis=-1), axis=-1)


def compare_with_reference(cfg, weights, image, reference, artifact):
    """The float model and golden against an independent implementation (``model.reference``).

    Returns ``(streams, routing)``: per residual stream the float model's cosine and largest
    absolute error; per task, at the reference's MoE layer, the fraction of tokens whose top-2
    expert set equals the reference's for the float model and for golden, and the largest
    difference of the float model's gate probabilities from the reference's on the tokens whose
    sets agree (matched expert by expert)."""
    model = M3ViT(cfg, weights)
    pixels = image_to_pixels(image)
    image_q = (pixels + 128) / 256.0
    streams, routing = [], []
    for task in range(cfg.num_tasks):
        rec = {}
        with torch.no_grad():
            model(image_q, task, lambda layer, name, t: rec.__setitem__((layer, name), t.detach().numpy()))
        if task == 0:
            for stem, key in STREAMS.items():
                f, r = rec[key], reference.streams[stem]
                streams.append({"stream": stem, "cosine": _cosine(f, r),
                                "max_abs_err": float(np.abs(f - r).max())})
        probs = torch.softmax(torch.as_tensor(rec[(REFERENCE_LAYER, "gate_logits")]), dim=-1).numpy()
        ref_top = reference.top2[task]
        float_top = rec[(REFERENCE_LAYER, "experts")]
        same = _expert_sets_equal(float_top, ref_top)
        gate_err = float(np.abs(np.take_along_axis(probs, ref_top, axis=-1)[same]
                                - reference.gate_weights[task][same]).max()) if same.any() else None
        golden_top = next(data["experts"] for step, data in run_backbone(artifact, pixels, task).trace
                          if "experts" in data and step.layer == REFERENCE_LAYER)
        routing.append({"layer": REFERENCE_LAYER, "task": task,
                        "float": float(np.mean(same)),
                        "golden": float(np.mean(_expert_sets_equal(golden_top, ref_top))),
                        "float_gate_weight_max_err": gate_err})
    return streams, routing


def gelu_error_lsb(artifact):
    """Largest |golden GELU - exact GELU| over all int16 inputs, in LSB of each layer's output
    grid, counting only inputs whose exact output lies inside the activation range."""
    x = np.arange(*int_range(GELU_IN_BITS)).astype(np.int64)
    x = np.append(x, int_range(GELU_IN_BITS)[1])
    exact = gelu_exact(x)
    worst = 0.0
    for layer in range(artifact.config.depth):
        p = f"l{layer}."
        s_h = artifact.scales[p + "hidden"]
        y = gelu(x, artifact[p + "gelu.mult"], artifact[p + "gelu.shift"])
        inside = np.abs(exact / s_h) <= int_range(ACT_BITS)[1]
        worst = max(worst, float(np.abs(y[inside] * s_h - exact[inside]).max() / s_h))
    return worst


def softmax_error(seed=0):
    """Largest |golden softmax - exact softmax of the same integer inputs| with attention's
    PROB_FRAC output bits: all pair distances of the int16 range, all-equal rows of every length
    up to 256, and seeded random rows (lengths 1..257, narrow and wide spreads)."""
    rng = np.random.default_rng(seed)
    lo, hi = int_range(16)
    worst = 0.0

    def check(u):
        nonlocal worst
        p = softmax(u, PROB_FRAC) / (1 << PROB_FRAC)
        worst = max(worst, float(np.abs(p - softmax_exact(u)).max()))

    d = np.arange(lo, hi + 1, dtype=np.int64)
    check(np.stack([np.zeros_like(d), d], axis=1).clip(lo, hi))
    check(np.stack([d, np.zeros_like(d)], axis=1).clip(lo, hi))
    for n in range(1, 257):
        check(np.full((1, n), rng.integers(lo, hi + 1)))
    for n in list(range(1, 33)) + [64, 65, 128, 129, 257]:
        for spread in (4, 64, 1024, 8192, 32767):
            check(rng.integers(-spread, spread + 1, size=(64, n)))
    return worst


def numerics_report(cfg, weights, image, source, reference=None, rounding="error-feedback"):
    """Everything ``m3vit numerics`` prints and writes as JSON; with a ``model.reference.Reference``,
    also the comparison with it (``reference_streams``, ``reference_routing_agreement``)."""
    layers, routing, artifact = compare(cfg, weights, image, rounding=rounding)
    extra = {}
    if reference is not None:
        streams, ref_routing = compare_with_reference(cfg, weights, image, reference, artifact)
        extra = {"reference": reference.source, "reference_streams": streams,
                 "reference_routing_agreement": ref_routing}
    return {
        "config": cfg.name,
        "weights": source,
        "layers": layers,
        "routing_agreement": routing,
        "gelu_max_lsb_err": gelu_error_lsb(artifact),
        "softmax_max_abs_err": softmax_error(),
        "residual_scale": artifact.scales["residual"],
        "weight_rounding": rounding,
        **extra,
    }
