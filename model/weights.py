"""Weights and images: Edge-MoE's weight-folder importer and the built-in deterministic defaults.

Edge-MoE stores each tensor as raw little-endian float32 (C order, no header) in
``<name>.float32.bin``, names and layouts as :func:`model.m3vit.expected_shapes`. Its public
snapshot lacks the expert weight tensors; the importer generates those deterministically and
reports that it did.

The gate is the one tensor whose layout differs between the two sources a user may hold, and a
raw file cannot tell them apart (both hold ``dim * experts`` floats), so the layouts are named
(:class:`GateLayout`) and every conversion states which one it reads:

- M³ViT keeps ``w_gate`` as ``[dim, experts]`` and computes ``inp @ self.w_gate`` (VITA-Group/M3ViT,
  ``models/gate_funs/noisy_gate.py``: ``torch.zeros(d_model, self.tot_expert)``).
- Edge-MoE's ``l{L}_w_gate_T_task{t}`` files hold its transpose, ``[experts, dim]`` (sharc-lab/Edge-MoE:
  ``include/kernel.hpp`` declares ``moe_w_gate[layer][NUM_EXPERTS][FEATURE_DIM]``, ``src/moe.cpp`` sums
  ``x[in] * w_gate[out][in]``, ``weights/scripts/prepare_for_onboard.py`` reshapes the file to
  (16, 192)).

The project's weights dict holds the Edge-MoE layout under the Edge-MoE name.
"""

import enum

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.image import pixels_from_image

from .config import M3ViTConfig
from .m3vit import expected_shapes

__all__ = [
    "GateLayout", "gate_to_edge_moe", "WeightError", "ImportedWeights", "load_weight_folder", "generated_expert_weights",
    "default_weights", "default_image", "load_image", "image_to_pixels",
]

#: Expert tensors that the importer may generate when a folder lacks them.
_GENERATED_SUFFIXES = ("htoh4_weight", "h4toh_weight")
#: Seeds: fixed so that every run and every machine sees the same tensors.
EXPERT_SEED = 2023
DEFAULT_SEED = 7


class WeightError(ValueError):
    """A weight or image file is missing, unreadable or of the wrong size."""


class GateLayout(enum.Enum):
    """Where a gate tensor comes from, and so which axis is which."""

    #: Edge-MoE's ``w_gate_T`` files: ``[experts, dim]``, logits = ``x @ w.T``.
    EDGE_MOE = "edge-moe"
    #: M³ViT's ``NoisyGate.w_gate`` parameter: ``[dim, experts]``, logits = ``x @ w``.
    M3VIT = "m3vit"

    def shape(self, cfg: M3ViTConfig):
        return ((cfg.num_experts, cfg.dim) if self is GateLayout.EDGE_MOE
                else (cfg.dim, cfg.num_experts))


def gate_to_edge_moe(w, layout: GateLayout, cfg: M3ViTConfig, name="gate"):
    """One task's gate in ``layout`` -> the ``[experts, dim]`` array the weights dict holds.

    Raises
    ------
    WeightError
        ``w`` does not have ``layout``'s shape for ``cfg`` (the message says which layout the
        shape would fit, if either).
    """
    layout = GateLayout(layout)
    w = np.asarray(w, dtype=np.float32)
    want = layout.shape(cfg)
    if w.shape != want:
        other = GateLayout.M3VIT if layout is GateLayout.EDGE_MOE else GateLayout.EDGE_MOE
        hint = (f"; that is the {other.value} layout {list(other.shape(cfg))}, say so"
                if w.shape == other.shape(cfg) else "")
        raise WeightError(f"{name} has shape {list(w.shape)}, but the {layout.value} layout for "
                          f"config {cfg.name!r} is {list(want)}{hint}")
    return w if layout is GateLayout.EDGE_MOE else np.ascontiguousarray(w.T)


@dataclass
class ImportedWeights:
    """Tensors by name plus the names that were generated rather than read."""

    tensors: dict
    generated: list = field(default_factory=list)
    source: str = "built-in"


def read_raw(path: Path, shape, what, dtype="<f4"):
    """A raw little-endian array file (C order, no header) of ``shape``; ``WeightError`` naming
    the file, ``what`` it is and the expected size when it is missing or of another size."""
    expected, kind = int(np.prod(shape)), np.dtype(dtype)
    if not path.is_file():
        raise WeightError(f"missing {what} file {path} (expected {expected} {kind.name} values, "
                          f"{expected * kind.itemsize} bytes, shape {list(shape)})")
    size = path.stat().st_size
    if size != expected * kind.itemsize:
        raise WeightError(f"{path} holds {size} bytes, expected {expected * kind.itemsize} "
                          f"({expected} {kind.name} values, shape {list(shape)})")
    return np.fromfile(path, dtype=kind).reshape(shape)


def generated_expert_weights(cfg: M3ViTConfig, tensors, layer):
    """Deterministic stand-ins for one MoE layer's expert weights.

    Each expert's first (second) layer is drawn from a normal distribution with the mean and
    standard deviation of the dense fc1 (fc2) weight of the nearest dense layer, seeded by
    ``EXPERT_SEED`` and the layer index.
    """
    dense = [d for d in range(cfg.depth) if not cfg.is_moe(d)]
    if not dense:
        raise WeightError("cannot generate expert weights: the config has no dense layer to take "
                          "statistics from")
    ref = min(dense, key=lambda d: (abs(d - layer), d))
    rng = np.random.default_rng(EXPERT_SEED + layer)
    out = {}
    for suffix, dense_name, shape in (
            ("htoh4_weight", "fc1_weight", (cfg.num_experts, cfg.expert_hidden, cfg.dim)),
            ("h4toh_weight", "fc2_weight", (cfg.num_experts, cfg.dim, cfg.expert_hidden))):
        w = tensors[f"l{ref}_{dense_name}"]
        out[f"l{layer}_{suffix}"] = rng.normal(float(w.mean()), float(w.std()), size=shape).astype(np.float32)
    return out


def _read_gate(folder, name, cfg):
    """One gate, from Edge-MoE's ``..._w_gate_T_task{t}`` file ([experts, dim]) or, where the
    folder was exported from an M³ViT checkpoint instead, its ``..._w_gate_task{t}`` file
    ([dim, experts]); the name says the layout, never the size, which is the same for both."""
    edge_moe = folder / f"{name}.float32.bin"
    m3vit = folder / f"{name.replace('_w_gate_T_', '_w_gate_')}.float32.bin"
    if edge_moe.exists() and m3vit.exists():
        raise WeightError(f"{folder} holds both {edge_moe.name} (Edge-MoE's [experts, dim]) and "
                          f"{m3vit.name} (M³ViT's [dim, experts]) for one gate: keep one")
    if m3vit.exists():
        layout, path = GateLayout.M3VIT, m3vit
    else:
        layout, path = GateLayout.EDGE_MOE, edge_moe
    w = read_raw(path, layout.shape(cfg), f"{layout.value} gate")
    return gate_to_edge_moe(w, layout, cfg, path.name)


def load_weight_folder(folder, cfg: M3ViTConfig):
    """Read an Edge-MoE weight folder for ``cfg``; generate missing expert weights.

    Gates are read from Edge-MoE's ``l{L}_w_gate_T_task{t}.float32.bin`` ([experts, dim]) or,
    for a folder exported from an M³ViT checkpoint, from ``l{L}_w_gate_task{t}.float32.bin``
    holding M³ViT's own ``w_gate`` ([dim, experts]); see :class:`GateLayout`.

    Raises
    ------
    WeightError
        The folder is missing, or a file is missing or has the wrong size (the message names the
        file and the expected size).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightError(f"weight folder {folder} does not exist")
    shapes = expected_shapes(cfg)
    tensors, generated = {}, []
    for name, shape in shapes.items():
        path = folder / f"{name}.float32.bin"
        if "_w_gate_T_" in name:
            tensors[name] = _read_gate(folder, name, cfg)
            continue
        if name.endswith(_GENERATED_SUFFIXES) and not path.exists():
            generated.append(name)
            continue
        tensors[name] = read_raw(path, shape, "weight")
    for layer in sorted({int(n[1:n.index("_")]) for n in generated}):
        tensors.update(generated_expert_weights(cfg, tensors, layer))
    return ImportedWeights(tensors, generated, str(folder))


def default_weights(cfg: M3ViTConfig):
    """Built-in weights for ``cfg``: seeded, with trained-ViT-like statistics (small linear
    weights, LayerNorm gains near 1), so a fresh clone runs without any download."""
    rng = np.random.default_rng(DEFAULT_SEED)
    tensors = {}
    for name, shape in expected_shapes(cfg).items():
        fan_in = shape[-1] if len(shape) > 1 else cfg.dim
        if name.endswith("norm1_weight") or name.endswith("norm2_weight"):
            t = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            t = 0.02 * rng.standard_normal(shape)
        elif name == "pos_embed":
            t = 0.5 * rng.standard_normal(shape)
        elif name == "patch_embed_weight":
            t = rng.standard_normal(shape) / np.sqrt(cfg.patch_dim) * 4.0
        elif "w_gate" in name:
            t = rng.standard_normal(shape) / np.sqrt(cfg.dim) * 2.0
        else:
            t = rng.standard_normal(shape) / np.sqrt(fan_in)
        tensors[name] = t.astype(np.float32)
    return ImportedWeights(tensors, [], "built-in")


def default_image(cfg: M3ViTConfig):
    """A built-in 8-bit test image ``[C, H, W]`` in [0, 1): smooth gradients, stripes and a disc,
    so that patches differ from one another as in a real scene."""
    c, h, w = cfg.in_chans, cfg.image_height, cfg.image_width
    y, x = np.mgrid[0:h, 0:w]
    planes = [
        (x * 255) // max(w - 1, 1),
        ((y // 4 + x // 8) % 2) * 160 + (y * 90) // max(h - 1, 1),
        np.where((x - w * 0.6) ** 2 + (y - h * 0.5) ** 2 < (min(h, w) * 0.3) ** 2, 230, 40),
    ]
    pixels = np.stack([planes[i % 3] for i in range(c)]).astype(np.int64)
    return (np.clip(pixels, 0, 255) / 256.0).astype(np.float32)


def load_image(path, cfg: M3ViTConfig):
    """Read an image ``[C, H, W]`` float32 with values in [0, 1]: Edge-MoE's raw ``.bin``
    (little-endian float32, C order) or a ``.npy`` file."""
    path = Path(path)
    shape = (cfg.in_chans, cfg.image_height, cfg.image_width)
    if path.suffix == ".npy":
        if not path.is_file():
            raise WeightError(f"missing image file {path}")
        try:
            img = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise WeightError(f"{path} is not a readable .npy array: {err}") from None
        if img.shape != shape:
            raise WeightError(f"image {path} has shape {list(img.shape)}, config {cfg.name!r} "
                              f"expects {list(shape)}")
        img = img.astype(np.float32)
    else:
        img = read_raw(path, shape, "image")
    if not np.all(np.isfinite(img)) or img.min() < 0.0 or img.max() > 1.0:
        raise WeightError(f"image {path} must hold values in [0, 1] (8-bit pixels / 256), "
                          f"found [{np.nanmin(img):.3g}, {np.nanmax(img):.3g}]")
    return img


def image_to_pixels(image):
    """Float image in [0, 1] -> int8 accelerator input ``round(256 * x) - 128`` as int64 (the
    runtime's conversion, ``runtime.image.pixels_from_image``, widened for golden's arithmetic)."""
    return pixels_from_image(image).astype(np.int64)
