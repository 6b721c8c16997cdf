"""The quantised-model artifact: integer tensors + real scales + config, in one versioned file.

File format: a numpy ``.npz`` archive (no pickles) holding one int64 array per tensor and a
``__meta__`` entry, a JSON string with ``format`` (``"m3vit-int8"``), ``version``, ``config`` and
``scales``. Every tensor is checked against :func:`artifact_schema` on save and on load, so a
malformed file is refused with a message naming the tensor, never read as silent garbage.
"""

import json
from pathlib import Path

import numpy as np

from golden.fixedpoint import REQUANT_MULT_BITS, RES_BITS, WEIGHT_BITS, int_range
from golden.layernorm import BETA_BITS, GAMMA_BITS

from .config import M3ViTConfig

__all__ = ["FORMAT", "VERSION", "ArtifactError", "Artifact", "artifact_schema"]

FORMAT = "m3vit-int8"
VERSION = 1


class ArtifactError(ValueError):
    """The artifact file is missing, of another format or version, or malformed."""


def artifact_schema(cfg: M3ViTConfig):
    """Name -> (shape, bits, signed) of every tensor in an artifact for ``cfg``."""
    d, e, tasks = cfg.dim, cfg.num_experts, cfg.num_tasks
    u16, shift = (REQUANT_MULT_BITS, False), (6, False)

    def linear(prefix, lead, n_out, n_in):
        return {prefix + "w": ((*lead, n_out, n_in), WEIGHT_BITS, True),
                prefix + "b": ((*lead, n_out), 32, True),
                prefix + "mult": ((*lead, n_out), *u16),
                prefix + "shift": ((*lead, n_out), *shift)}

    s = {"ln.eps_term": ((), 48, False)}
    s.update(linear("embed.", (), d, cfg.patch_dim))
    s["embed.pos"] = ((cfg.tokens, d), RES_BITS, True)
    for layer in range(cfg.depth):
        L = f"l{layer}."
        for ln in ("ln1", "ln2"):
            s.update({L + ln + ".gamma": ((d,), GAMMA_BITS, True), L + ln + ".beta": ((d,), BETA_BITS, True),
                      L + ln + ".shift": ((), 6, False)})
        s.update(linear(L + "qkv.", (), 3 * d, d))
        s.update(linear(L + "proj.", (), d, d))
        for scalar in ("score", "av", "gelu"):
            s.update({L + scalar + ".mult": ((), *u16), L + scalar + ".shift": ((), *shift)})
        if cfg.is_moe(layer):
            s[L + "gate.w"] = ((tasks, e, d), WEIGHT_BITS, True)
            s.update({L + "gate.mult": ((tasks,), *u16), L + "gate.shift": ((tasks,), *shift)})
            s.update(linear(L + "expert_fc1.", (e,), cfg.expert_hidden, d))
            s.update(linear(L + "expert_fc2.", (e,), d, cfg.expert_hidden))
        else:
            s.update(linear(L + "fc1.", (), cfg.mlp_hidden, d))
            s.update(linear(L + "fc2.", (), d, cfg.mlp_hidden))
    return s


def _check(cfg, tensors):
    schema = artifact_schema(cfg)
    missing = sorted(set(schema) - set(tensors))
    if missing:
        raise ArtifactError(f"artifact lacks {len(missing)} tensors, e.g. {', '.join(missing[:3])}")
    extra = sorted(set(tensors) - set(schema))
    if extra:
        raise ArtifactError(f"artifact has unexpected tensors, e.g. {', '.join(extra[:3])}")
    for name, (shape, bits, signed) in schema.items():
        a = np.asarray(tensors[name])
        if a.shape != tuple(shape):
            raise ArtifactError(f"tensor {name} has shape {list(a.shape)}, expected {list(shape)}")
        if a.dtype.kind not in "iu":
            raise ArtifactError(f"tensor {name} is {a.dtype}, expected integers")
        lo, hi = int_range(bits, signed)
        if a.size and (a.min() < lo or a.max() > hi):
            raise ArtifactError(f"tensor {name} exceeds {'s' if signed else 'u'}int{bits}: "
                                f"[{a.min()}, {a.max()}]")


class Artifact:
    """A quantised M3ViT: integer tensors (``tensors``), real scales for dequantisation
    (``scales``: ``residual`` is the residual stream's), and the model ``config``."""

    def __init__(self, config: M3ViTConfig, tensors, scales):
        _check(config, tensors)
        self.config = config
        self.tensors = {k: np.asarray(v, dtype=np.int64) for k, v in tensors.items()}
        self.scales = dict(scales)

    def __getitem__(self, name):
        return self.tensors[name]

    def save(self, path):
        meta = {"format": FORMAT, "version": VERSION, "config": self.config.to_dict(), "scales": self.scales}
        with open(path, "wb") as f:
            np.savez_compressed(f, __meta__=np.array(json.dumps(meta)), **self.tensors)

    @classmethod
    def load(cls, path):
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"artifact file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                tensors = {k: z[k] for k in z.files if k != "__meta__"}
        except (OSError, ValueError, KeyError) as err:
            raise ArtifactError(f"{path} is not a readable {FORMAT} artifact ({err})") from None
        if meta.get("format") != FORMAT:
            raise ArtifactError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
        if meta.get("version") != VERSION:
            raise ArtifactError(f"{path} is {FORMAT} version {meta.get('version')}, this tool reads {VERSION}")
        try:
            cfg = M3ViTConfig.from_dict(meta["config"])
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{path} has an invalid config: {err}") from None
        return cls(cfg, tensors, meta.get("scales", {}))
