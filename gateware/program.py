"""The accelerator's program and DRAM image, compiled in Python from a config and an artifact.

``golden/schedule.py`` lists the frame's steps; :func:`compile_frame` turns them into
instructions for the sequencer of ``gateware/top.py`` and lays out everything the hardware reads
from DRAM. The hardware walks the same steps with three fusions that change no value: GELU runs on
the fc1 outputs as they leave the post-processor; the three heads of an ``attention`` step are
three ATTENTION instructions writing one ``attn`` buffer; and a LayerNorm whose only reader is the
GEMM after it (QKV, a dense layer's fc1) runs inside that GEMM, each row passing LayerNorm on its
way to the MAC array, where LayerNorm keeps the array's pace (rows of 102 channels or more).

DRAM (byte addresses relative to the ``weights_base`` register):

- offset 0: a 16-byte :data:`~gateware.records.Header` naming the program: ``count``
  :data:`~gateware.records.Instr` records of ``INSTR_BYTES`` each, after all the data.
- parameters and weight *tiles*. A tile is one block of ``cols`` output channels of a linear
  layer (the MAC array's columns; the last block zero-padded), laid out *bank-major*: a bank is
  one 16-byte column of the tile (channels ``[16 b, 16 b + 16)``), and bank ``b`` is its
  channels' :data:`~gateware.records.TileParams` records, then its int8 weights, one beat per
  input element ``k``, bank after bank. A tile under a beat wide (``cols`` = 8) is one bank:
  its 8 records, then ``k``-major rows, two per beat. Each bank is one memory of the fetcher's
  buffer (and one of its parameter memories), so a run of whole banks streams into its memories
  from any AXI port with no write conflicts: with ``Capacity.ports`` P, port ``p`` reads one
  contiguous range of banks, one command each (``gateware/fetcher.py``). A bank carries its own
  records so that every port reads as many bytes: with the records all in front of bank 0,
  port 0 read 224 beats of a 192-row tile to the other ports' 192, and the memory's round-robin
  share (0.8 beats a cycle each of four) made port 0 set the pace, 45 bytes a cycle of the
  51.2 the memory gives. On an 8-lane array a bank holds two column groups of 8 channels; the
  layout is per bank, not per group.
- LayerNorm parameters: per channel one :data:`~gateware.records.LNParams` record.
- the position embedding, int16 ``[tokens, dim]`` row-major.

The image (int8 ``[C, H, W]``, at ``image_base``) is read in place; the features (int16
``[tokens, dim]``) are written at ``output_base``, and after each MoE layer a ROUTES instruction
writes that layer's expert choices into the routing region that follows the output
(``runtime.layout``: :func:`~runtime.layout.routing_offset`, :class:`~runtime.layout.RoutingLayout`).

On chip, every tensor lives in one activation memory of ``lanes``-wide int16 words: token ``t``'s
channels ``[c * lanes, (c + 1) * lanes)`` are word ``base + t * stride + c`` of its region.
"""

from dataclasses import dataclass, field

import numpy as np

from golden.schedule import compile_schedule
from model.config import MAC_LANES
from runtime.layout import BEAT, RoutingLayout, routing_offset

from .layernorm import LayerNorm
from .records import (ADDR_BITS, BEAT_BYTES, INSTR_BYTES, PARAM_BYTES, PROGRAM_MAGIC, Header, Instr, LNParams, Op,
                      OutMode, TileParams, encode, pack_records)

__all__ = ["Op", "OutMode", "Instr", "INSTR_BYTES", "PROGRAM_MAGIC", "ADDR_BITS", "BEAT_BYTES", "Capacity", "probs_stride",
           "WEIGHT_PORTS", "CapacityError", "Frame", "compile_frame", "tile_bytes", "encode_instr"]

# The routing layout counts in the beats the DMA writes.
assert BEAT == BEAT_BYTES


#: Most column groups (activation words per tile row) an array may have, a power of two.
MAX_COLUMN_GROUPS = 8
#: AXI4 managers the weight tiles may stream over (the ZCU104's PS has four HP ports).
WEIGHT_PORTS = (1, 2, 4)


def probs_stride(max_tokens):
    """Words of the probability buffer per query block: ``max_tokens`` keys, rounded up to a
    power of two (a block's base is then its index's bits above a key's)."""
    return 1 << (max_tokens - 1).bit_length()

class CapacityError(ValueError):
    """A config or program that the accelerator's on-chip memories cannot hold."""


@dataclass(frozen=True)
class Capacity:
    """What one build of the accelerator holds; fixed at elaboration.

    Parameters
    ----------
    lanes : int
        MAC array rows R (token lanes), and the width of an activation word: 8 or 16.
    cols : int
        MAC array columns C (output channels of a tile): ``lanes`` times 1, 2, 4 or 8, and a
        multiple of a DRAM beat (16 bytes) unless equal to ``lanes``; ``None`` (the default)
        means ``lanes``, the square array.
    act_words : int
        Depth of the activation memory.
    max_tokens : int
        Tokens per frame (queue and softmax row capacity).
    max_k_chunks : int
        Longest inner dimension of a linear layer, in words (weight-buffer depth).
    max_dim_chunks : int
        Model width in words (MoE accumulator and LayerNorm row).
    num_experts, top_k : int
        The router's experts and selections per token; a config must match them.
    max_program : int
        Instructions the program memory holds.
    ports : int
        AXI4 read managers that stream weight tiles: 1, 2 or 4, at most the tile's banks
        (``cols / 16``) unless 1. Port 0 also carries the program, image, parameters and outputs.
    """

    lanes: int = 16
    act_words: int = 16384
    max_tokens: int = 256
    max_k_chunks: int = 48
    max_dim_chunks: int = 16
    num_experts: int = 16
    top_k: int = 2
    max_program: int = 512
    cols: int = None
    ports: int = 1

    def __post_init__(self):
        # A DRAM beat must split into whole int8 words and build whole int16 words.
        if self.lanes not in MAC_LANES:
            raise CapacityError(f"lanes must be one of {', '.join(map(str, MAC_LANES))}, not {self.lanes}")
        if self.cols is None:
            object.__setattr__(self, "cols", self.lanes)
        # A tile's weights for one inner index must fill whole DRAM beats (or be half of one, the
        # square 8-lane array), and its channels whole activation words.
        # Column groups are a power of two: the attention buffers' banks are picked by address bits.
        shapes = [self.lanes << i for i in range(MAX_COLUMN_GROUPS.bit_length())
                  if self.lanes << i == self.lanes or (self.lanes << i) % BEAT_BYTES == 0]
        if self.cols not in shapes:
            raise CapacityError(f"cols must be one of {', '.join(map(str, shapes))} on a {self.lanes}-lane array, "
                                f"not {self.cols}")
        # Each port streams whole banks of a tile, so a second port needs a second bank.
        if self.ports not in WEIGHT_PORTS or (self.ports > 1 and self.ports > self.banks):
            raise CapacityError(f"ports must be one of {', '.join(map(str, WEIGHT_PORTS))} and at most the tile's "
                                f"{self.banks} bank{'s' * (self.banks > 1)} of 16 bytes (cols / 16) on a "
                                f"{self.shape} array, not {self.ports}")

    @property
    def groups(self):
        """Column groups G = cols / lanes: activation words per tile row."""
        return self.cols // self.lanes

    @property
    def probs_stride(self):
        """Words of the probability buffer per query block (:func:`probs_stride`)."""
        return probs_stride(self.max_tokens)

    @property
    def probs_blocks(self):
        """Query blocks the probability buffer holds: every block of ``max_tokens`` tokens, so
        that a head's QK^T and softmax run over all of them in one phase."""
        return -(-self.max_tokens // self.lanes)

    @property
    def banks(self):
        """16-byte banks of a tile row (``cols / 16``, at least 1): the fetcher's buffer memories."""
        return max(1, self.cols // BEAT_BYTES)

    @property
    def shape(self):
        """The MAC array as ``"RxC"``."""
        return f"{self.lanes}x{self.cols}"

    @classmethod
    def board(cls):
        """The ZCU104 build: the edge-moe config on a 16 x 64 array (1,024 of the xczu7ev's 1,728
        DSPs; 64 columns, the most that divide edge-moe's head of 64 channels) whose weight tiles
        stream over four HP ports, with memories for up to 256 tokens."""
        return cls(cols=64, ports=4)

    @classmethod
    def for_config(cls, cfg, lanes, cols=None, **overrides):
        """The smallest capacity that holds ``cfg`` on a ``lanes`` x ``cols`` array."""
        need = _requirements(cfg, lanes)
        kw = dict(lanes=lanes, cols=cols, act_words=need["act_words"], max_tokens=cfg.tokens,
                  max_k_chunks=need["k_chunks"], max_dim_chunks=cfg.dim // lanes,
                  num_experts=cfg.num_experts, top_k=cfg.top_k,
                  max_program=need["program"])
        kw.update(overrides)
        return cls(**kw)


def tile_bytes(k, cols):
    """DRAM bytes of one tile of ``cols`` output channels with inner dimension ``k``."""
    return PARAM_BYTES * cols + k * cols


def _regions(cfg, lanes):
    """Word address and stride of each on-chip region; the pixels share the qkv/hidden space."""
    d = cfg.dim // lanes
    hidden = max(cfg.mlp_hidden, cfg.expert_hidden if cfg.moe_layers else 0) // lanes
    regions, top = {}, 0
    for name, stride in (("residual", d), ("ln", d), ("attn", d), ("qkv", 3 * d), ("hidden", hidden)):
        regions[name] = (top, stride)
        top += cfg.tokens * stride
    pixels_words = cfg.num_patches * cfg.patch_dim // lanes
    regions["pixels"] = (regions["qkv"][0], cfg.patch_dim // lanes)
    top = max(top, regions["qkv"][0] + pixels_words)
    return regions, top


def _requirements(cfg, lanes):
    _, words = _regions(cfg, lanes)
    k = max(cfg.patch_dim, cfg.dim, cfg.mlp_hidden, cfg.expert_hidden) // lanes
    program = 5 + cfg.depth * (6 + cfg.heads) + len(cfg.moe_layers)     # a ROUTES per MoE layer
    return {"act_words": words, "k_chunks": k, "program": program}


def check_capacity(cfg, cap: Capacity):
    """Raise :class:`CapacityError` naming the first limit ``cfg`` exceeds on ``cap``."""
    n = cap.lanes
    if cfg.patch != 16:
        raise CapacityError(f"the image reader takes 16-pixel patches (one DRAM beat), not {cfg.patch}")
    if cfg.image_width % 16:
        raise CapacityError(f"image width {cfg.image_width} is not a multiple of 16 bytes")
    for what, v in (("dim", cfg.dim), ("head_dim", cfg.head_dim), ("mlp_hidden", cfg.mlp_hidden),
                    ("expert_hidden", cfg.expert_hidden), ("patch_dim", cfg.patch_dim)):
        if v % n:
            raise CapacityError(f"{what} = {v} is not a multiple of the {n} lanes")
    if cfg.head_dim % cap.cols:
        raise CapacityError(f"head_dim = {cfg.head_dim} is not a multiple of the {cap.cols} columns (A.V reads a "
                            f"head's V words whole from the V buffer's banks)")
    need = _requirements(cfg, n)
    limits = (("activation words", need["act_words"], cap.act_words),
              ("tokens", cfg.tokens, cap.max_tokens),
              ("inner dimension (words)", need["k_chunks"], cap.max_k_chunks),
              ("model width (words)", cfg.dim // n, cap.max_dim_chunks),
              ("instructions", need["program"], cap.max_program))
    for what, want, have in (("experts", cfg.num_experts, cap.num_experts), ("top-k", cfg.top_k, cap.top_k)):
        if cfg.moe_layers and want != have:
            raise CapacityError(f"config {cfg.name!r} routes to {cfg.top_k} of {cfg.num_experts} experts; this "
                                f"accelerator's router takes {cap.top_k} of {cap.num_experts}")
    if cfg.moe_layers and (cfg.num_experts > 256 or cfg.top_k > BEAT_BYTES):
        raise CapacityError(f"config {cfg.name!r} routes to {cfg.top_k} of {cfg.num_experts} experts; the routing "
                            f"recorder takes at most 256 experts (a byte per id) and top-k {BEAT_BYTES}")
    for what, want, have in limits:
        if want > have:
            raise CapacityError(f"config {cfg.name!r} needs {want} {what}; this accelerator holds {have}")


@dataclass
class Frame:
    """A compiled frame: the DRAM image of the weights and program, and where things are.

    Attributes
    ----------
    weights : bytes
        Everything at ``weights_base``: header, program, tiles, parameters.
    instructions : list of dict
        The program, field by field (for reading and tests).
    output_bytes : int
        Bytes the accelerator writes at ``output_base``.
    regions : dict
        Name -> (word address, words per token) of each on-chip region.
    act_words : int
        Activation-memory words the frame uses.
    dense_bytes : int
        DRAM bytes every frame reads (position embedding, dense tiles, LayerNorm parameters).
    gate_bytes, expert_bytes : dict
        Per MoE layer: DRAM bytes of one task's gate and of one expert (both linear layers).
    program_offset : int
        Where the instructions start.
    labels : list of (int, str)
        Per instruction, its encoder layer (-1 before the first) and what it computes: ``load``,
        ``embed``, ``layernorm``, ``qkv``, ``attention``, ``proj``, ``fc1``, ``fc2``, ``moe``,
        ``routes``, ``store`` or ``end`` (for timelines and reports).
    routing : runtime.layout.RoutingLayout
        The expert routing the accelerator writes after the output (its ``size`` is 0 without
        MoE layers).
    """

    weights: bytes
    instructions: list
    output_bytes: int
    regions: dict
    act_words: int
    dense_bytes: int = 0
    gate_bytes: dict = field(default_factory=dict)
    expert_bytes: dict = field(default_factory=dict)
    program_offset: int = 0
    labels: list = field(default_factory=list)
    routing: RoutingLayout = None


class _Image:
    def __init__(self):
        self.chunks, self.size = [], 0

    def add(self, blob):
        blob = bytes(blob)
        blob += bytes(-len(blob) % BEAT_BYTES)
        addr = self.size
        self.chunks.append(blob)
        self.size += len(blob)
        return addr


def _tiles(w, b, mult, shift, cols):
    """The tiles of ``w [n_out, k]`` as bytes, ``cols`` channels each (see module docstring)."""
    n_out, k = w.shape
    blocks = -(-n_out // cols)
    out = bytearray()
    for cb in range(blocks):
        ch = slice(cb * cols, min((cb + 1) * cols, n_out))
        pad = cols - (ch.stop - ch.start)
        rec = {name: np.pad(np.asarray(v[ch], np.int64), (0, pad)) for name, v in
               (("bias", b), ("mult", mult), ("shift", shift))}
        wt = np.zeros((k, cols), dtype=np.int8)
        wt[:, :cols - pad] = w[ch].T
        # Bank-major: each 16-byte column of the tile (one fetcher memory) contiguous, behind
        # its channels' records.
        bank = min(cols, BEAT_BYTES)
        banks = wt.reshape(k, cols // bank, bank).transpose(1, 0, 2)
        for j, weights in enumerate(banks):
            bank_ch = slice(j * bank, (j + 1) * bank)
            out += pack_records(TileParams, **{name: v[bank_ch] for name, v in rec.items()}) + weights.tobytes()
    return bytes(out)


def _ln_params(gamma, beta):
    return pack_records(LNParams, gamma=gamma, beta=beta)


class _Compiler:
    """The DRAM image and the instructions of one frame, built step by step."""

    def __init__(self, artifact, cap):
        self.cfg, self.t, self.n, self.cols, self.groups = (artifact.config, artifact.tensors, cap.lanes, cap.cols,
                                                            cap.groups)
        self.regions, self.act_words = _regions(self.cfg, self.n)
        self.img = _Image()
        self.img.add(bytes(BEAT_BYTES))                       # header, filled in at the end
        self.instrs, self.dense = [], 0
        self.pending_ln = None
        self.gate_bytes, self.expert_bytes = {}, {}
        self.labels, self.label = [], (-1, "load")
        self.routing = RoutingLayout(len(self.cfg.moe_layers), self.cfg.tokens, self.cfg.top_k)

    def emit(self, **fields):
        self.instrs.append(fields)
        self.labels.append(self.label)

    def tiles(self, prefix, lead=()):
        t = self.t
        return _tiles(t[prefix + "w"][lead], t[prefix + "b"][lead], t[prefix + "mult"][lead],
                      t[prefix + "shift"][lead], self.cols)

    def dense_object(self, blob):
        self.dense += len(blob) + (-len(blob) % BEAT_BYTES)
        return self.img.add(blob)

    def region(self, name, key):
        base, stride = self.regions[name]
        return {f"{key}_base": base, f"{key}_stride": stride}

    def prologue(self):
        cfg, n, region = self.cfg, self.n, self.region
        pos = self.dense_object(self.t["embed.pos"].astype("<i2").tobytes())
        self.emit(op=Op.LOAD16, dram0=pos, rows=cfg.tokens, k_chunks=cfg.dim // n, **region("residual", "dst"))
        self.emit(op=Op.LOAD_PATCHES, rows=cfg.num_patches, count=cfg.image_width // cfg.patch,
                  stride0=cfg.image_width, stride1=cfg.image_height * cfg.image_width,
                  k_chunks=cfg.patch_dim // n, n_out=cfg.in_chans, **region("pixels", "dst"))

    def step(self, step, fuse=False):
        """Emit ``step``'s instructions; with ``fuse``, a LayerNorm leaves its parameters and
        settings to the GEMM that follows, which takes its rows through LayerNorm."""
        cfg, t, n, region, p = self.cfg, self.t, self.n, self.region, step.params
        d = cfg.dim // n
        self.label = (step.layer, p.rstrip(".").rpartition(".")[2] if step.op == "linear" else step.op)
        if step.op == "embed":
            self.emit(op=Op.GEMM, out_mode=OutMode.RESIDUAL, narrow=0, dram0=self.dense_object(self.tiles("embed.")),
                      rows=cfg.num_patches, row_offset=1, k_chunks=cfg.patch_dim // n, n_out=cfg.dim,
                      **region("pixels", "src"), **region("residual", "dst"))
        elif step.op == "layernorm":
            params = self.dense_object(_ln_params(t[p + "gamma"], t[p + "beta"]))
            ln = dict(shift=int(t[p + "shift"]), eps=int(t["ln.eps_term"]))
            if fuse:
                # The next GEMM reads the residual stream through LayerNorm itself.
                self.pending_ln = dict(ln=1, dram1=params, **ln, **region("residual", "src"))
            else:
                self.emit(op=Op.LAYERNORM, dram1=params, rows=cfg.tokens, k_chunks=d, **ln,
                          **region("residual", "src"), **region("ln", "dst"))
        elif step.op == "linear":
            self.linear(step)
        elif step.op == "attention":
            hc, h = cfg.head_dim // n, step.head
            # K's words in the K buffer are the head's; V's buffer holds a token's words in
            # rows of ``groups``.
            self.emit(op=Op.ATTENTION, rows=cfg.tokens, k_chunks=hc, src_chunk=h * hc, aux_chunk=h * hc,
                      v_chunk=h * hc // self.groups, dst_chunk=h * hc,
                      mult=int(t[p + "score.mult"]), shift=int(t[p + "score.shift"]),
                      mult2=int(t[p + "av.mult"]), shift2=int(t[p + "av.shift"]),
                      **region("qkv", "src"), **region("attn", "dst"))
        elif step.op == "moe":
            self.moe(step)
        elif step.op != "gelu":
            raise ValueError(f"unknown schedule op {step.op!r}")

    def linear(self, step):
        t, p, region = self.t, step.params, self.region
        fields = dict(op=Op.GEMM, dram0=self.dense_object(self.tiles(p)), rows=self.cfg.tokens,
                      k_chunks=t[p + "w"].shape[1] // self.n, n_out=t[p + "w"].shape[0], **region(step.src, "src"))
        if self.pending_ln is not None:
            fields.update(self.pending_ln)
            self.pending_ln = None
        if step.dst == "hidden16":
            # fc1: golden's separate ``gelu`` step runs on the outputs on their way out
            g = f"l{step.layer}.gelu."
            self.emit(**fields, out_mode=OutMode.GELU, narrow=0, mult2=int(t[g + "mult"]),
                      shift2=int(t[g + "shift"]), **region("hidden", "dst"))
        elif step.add_residual:
            self.emit(**fields, out_mode=OutMode.RESIDUAL, narrow=0, **region("residual", "dst"))
        elif step.dst == "qkv":
            # K and V also go into the attention buffers, whose banks A.V and QK^T read whole.
            d = self.cfg.dim // self.n
            self.emit(**fields, out_mode=OutMode.QKV, narrow=1, aux_chunk=d, v_chunk=2 * d, **region("qkv", "dst"))
        else:
            self.emit(**fields, out_mode=OutMode.WRITE, narrow=1, **region(step.dst, "dst"))

    def moe(self, step):
        cfg, t, n, p, region = self.cfg, self.t, self.n, step.params, self.region
        zeros = np.zeros(cfg.num_experts, np.int64)
        gates = [_tiles(t[p + "gate.w"][task], zeros, zeros + t[p + "gate.mult"][task],
                        zeros + t[p + "gate.shift"][task], self.cols) for task in range(cfg.num_tasks)]
        experts = [(self.tiles(p + "expert_fc1.", (e,)), self.tiles(p + "expert_fc2.", (e,)))
                   for e in range(cfg.num_experts)]
        self.gate_bytes[step.layer] = len(gates[0])
        self.expert_bytes[step.layer] = len(experts[0][0]) + len(experts[0][1])
        g = f"l{step.layer}.gelu."
        self.emit(op=Op.MOE, dram0=self.img.add(b"".join(gates)), stride0=len(gates[0]),
                  dram1=self.img.add(b"".join(a + b for a, b in experts)), dram2=len(experts[0][0]),
                  stride1=self.expert_bytes[step.layer], rows=cfg.tokens, k_chunks=cfg.dim // n,
                  n_out=cfg.num_experts, count=cfg.expert_hidden // n, top_k=cfg.top_k, mult2=int(t[g + "mult"]),
                  shift2=int(t[g + "shift"]), **region("ln", "src"), **region("residual", "dst"),
                  **region("hidden", "aux"))
        # The layer's routing, while the recorder holds it (the next gate overwrites it).
        routes, self.label = self.routing, (step.layer, "routes")
        self.emit(op=Op.ROUTES, rows=cfg.tokens, count=routes.layer_bytes // BEAT_BYTES,
                  dram0=routing_offset(cfg.tokens * cfg.dim * 2)
                  + routes.layer_offset(cfg.moe_layers.index(step.layer)))


def layernorm_keeps_pace(dim):
    """Whether LayerNorm streams a row of ``dim`` channels at one channel per cycle, the rate a
    GEMM's A operand of ``dim`` words is taken at (``LayerNorm.row_period``)."""
    return LayerNorm.row_period(dim) == dim


def _fusable_layernorm(steps, i, dim):
    """Whether step ``i`` is a LayerNorm whose only reader is the GEMM right after it, and
    LayerNorm keeps the array's pace: that GEMM then runs it (its rows pass LayerNorm on their
    way to the MAC array), and the array does not wait for a LayerNorm phase of its own. A row
    LayerNorm cannot stream (a divider's period or its banks slower than the row) would slow
    every tile of the GEMM, each column block again."""
    step = steps[i]
    if step.op != "layernorm" or i + 1 == len(steps) or not layernorm_keeps_pace(dim):
        return False
    after = steps[i + 1]
    if after.op != "linear" or after.src != step.dst:
        return False
    for later in steps[i + 2:]:
        if later.src == step.dst:
            return False
        if later.dst == step.dst:
            break
    return True


def compile_frame(artifact, cap: Capacity):
    """Compile ``artifact``'s frame for an accelerator of capacity ``cap``.

    Raises
    ------
    CapacityError
        When the config does not fit ``cap``.
    """
    cfg = artifact.config
    check_capacity(cfg, cap)
    c = _Compiler(artifact, cap)
    c.prologue()
    steps = compile_schedule(cfg)
    for i, step in enumerate(steps):
        c.step(step, fuse=_fusable_layernorm(steps, i, cfg.dim))
    c.label = (cfg.depth - 1, "store")
    c.emit(op=Op.STORE16, rows=cfg.tokens, k_chunks=cfg.dim // cap.lanes, **c.region("residual", "src"))
    c.label = (cfg.depth - 1, "end")
    c.emit(op=Op.END)
    instrs = c.instrs
    if len(instrs) > cap.max_program:
        raise CapacityError(f"the program has {len(instrs)} instructions; this accelerator holds "
                            f"{cap.max_program}")
    prog = c.img.add(b"".join(encode_instr(i) for i in instrs))
    blob = bytearray(b"".join(c.img.chunks))
    blob[:BEAT_BYTES] = encode(Header, {"magic": PROGRAM_MAGIC, "count": len(instrs), "program": prog}, BEAT_BYTES)
    return Frame(weights=bytes(blob), instructions=instrs, output_bytes=cfg.tokens * cfg.dim * 2,
                 regions=c.regions, act_words=c.act_words, dense_bytes=c.dense, gate_bytes=c.gate_bytes,
                 expert_bytes=c.expert_bytes, program_offset=prog, labels=c.labels,
                 routing=c.routing)


def encode_instr(fields):
    """The little-endian bytes of one instruction given as a dict of field values."""
    try:
        return encode(Instr, fields, INSTR_BYTES)
    except ValueError as e:
        raise CapacityError(f"instruction {e}") from None
