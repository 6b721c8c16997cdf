"""Model configurations: data, not code. Every part of the project reads its shapes from here."""

from dataclasses import asdict, dataclass, fields

__all__ = ["M3ViTConfig", "CONFIGS", "get_config"]


@dataclass(frozen=True)
class M3ViTConfig:
    """Shape of an M3ViT backbone.

    Parameters
    ----------
    name : str
        Label used on the command line and in artifacts.
    image_height, image_width, in_chans, patch : int
        Input image ``[in_chans, image_height, image_width]`` cut into ``patch``-square patches.
    dim, depth, heads : int
        Token width, number of encoder layers, attention heads (``dim`` divisible by ``heads``).
    mlp_hidden : int
        Hidden width of the dense MLP (even layers).
    num_experts, top_k, expert_hidden : int
        Mixture of experts in odd layers: experts, experts chosen per token, expert hidden width.
    num_tasks : int
        Tasks; each has its own gate per MoE layer.
    ln_eps : float
        LayerNorm epsilon.
    """

    name: str
    image_height: int
    image_width: int
    in_chans: int
    patch: int
    dim: int
    depth: int
    heads: int
    mlp_hidden: int
    num_experts: int
    top_k: int
    expert_hidden: int
    num_tasks: int
    ln_eps: float = 1e-6

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type is int and (not isinstance(v, int) or v < 1):
                raise ValueError(f"config {self.name!r}: {f.name} must be a positive integer, got {v!r}")
        if self.image_height % self.patch or self.image_width % self.patch:
            raise ValueError(f"config {self.name!r}: image {self.image_height}x{self.image_width} "
                             f"is not a multiple of the patch size {self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"config {self.name!r}: dim {self.dim} not divisible by heads {self.heads}")
        if self.top_k > self.num_experts:
            raise ValueError(f"config {self.name!r}: top_k {self.top_k} > num_experts {self.num_experts}")

    @property
    def num_patches(self):
        return (self.image_height // self.patch) * (self.image_width // self.patch)

    @property
    def tokens(self):
        """Patches plus the class token."""
        return self.num_patches + 1

    @property
    def head_dim(self):
        return self.dim // self.heads

    @property
    def patch_dim(self):
        """Length of one flattened patch vector (channel, row, column order, as Conv2d weights)."""
        return self.in_chans * self.patch * self.patch

    def is_moe(self, layer):
        """Odd layers hold the mixture of experts (as M3ViT and Edge-MoE)."""
        return layer % 2 == 1

    @property
    def moe_layers(self):
        return [layer for layer in range(self.depth) if self.is_moe(layer)]

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**d)


CONFIGS = {
    # The Edge-MoE hardware's model (DESIGN.md §2).
    "edge-moe": M3ViTConfig(
        name="edge-moe", image_height=128, image_width=256, in_chans=3, patch=16,
        dim=192, depth=12, heads=3, mlp_hidden=768,
        num_experts=16, top_k=2, expert_hidden=384, num_tasks=2),
    # Small enough for whole-model simulation in Amaranth's Python simulator.
    "tiny": M3ViTConfig(
        name="tiny", image_height=32, image_width=64, in_chans=3, patch=16,
        dim=32, depth=2, heads=2, mlp_hidden=64,
        num_experts=4, top_k=2, expert_hidden=32, num_tasks=2),
}


def get_config(name):
    """Return the named configuration, or raise ``KeyError`` naming the choices."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown config {name!r}; choose one of {', '.join(sorted(CONFIGS))}") from None


#: Token lanes (= output channels) of the MAC arrays the accelerator is built with: a 16-byte DRAM
#: beat must split into whole int8 weight words and build whole int16 token words.
MAC_LANES = (8, 16)


def default_lanes(cfg: M3ViTConfig):
    """The MAC array a config is simulated on unless told otherwise: 8 lanes for small models
    (dim <= 64, so that pysim stays fast), else 16."""
    return 8 if cfg.dim <= 64 else 16
