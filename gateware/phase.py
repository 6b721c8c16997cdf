"""What the sequencer tells the datapath: the phase settings and the per-tile descriptors.

A *phase* is one matrix product (or LayerNorm pass, or store) between two barriers; its settings
(:data:`Phase`) hold still while its tiles run. Each tile is one :data:`Tile` descriptor on the
queue of every unit the phase uses; weight tiles are fetched from DRAM on :data:`Fetch`
descriptors.
"""

from amaranth.lib import data, enum

from .records import ADDR_BITS

#: The weight buffer's slots (``gateware/fetcher.py``): tiles fetched ahead of the array.
SLOT_BITS = 2
SLOTS = 1 << SLOT_BITS

__all__ = ["AMode", "WMode", "Sink", "Tile", "Fetch", "ARead", "WRead", "Dest", "KVCopy", "Phase", "Position",
           "Trace"]


class AMode(enum.Enum, shape=2):
    """What the A reader streams."""
    ROWS = 0      # tokens row0.. of a region, transposed
    LIST = 1      # tokens named by the current expert queue, transposed
    PROBS = 2     # the probability buffer, as stored
    WORDS = 3     # region words in address order (for the store)


class WMode(enum.Enum, shape=2):
    """What the W reader streams."""
    TILE = 0      # the weight-tile buffer
    TRANS = 1     # K for QK^T, transposed from the K buffer
    DIRECT = 2    # V for A.V, one word per token from the V buffer


class Sink(enum.Enum, shape=3):
    """Where the MAC array's columns go in a phase."""
    WRITE = 0
    RESIDUAL = 1
    GELU = 2
    SOFTMAX = 3
    ROUTER = 4
    COMBINE = 5
    LAYERNORM = 6   # no MAC: the A reader feeds the LayerNorm unit


#: One tile: token block ``tb`` by output-channel block ``cb``, its weights in buffer slot
#: ``slot``; ``release`` on the last tile to use that slot, ``last`` on the phase's last tile;
#: ``blocks``: the token words per token it yields (its valid channels in words, or LayerNorm's row);
#: ``cols``: its valid channels (the column path's, reckoned by the sequencer so that no subtraction
#: from the phase's channel count sits in front of the column handshake).
Tile = data.StructLayout({"tb": 12, "cb": 12, "slot": SLOT_BITS, "release": 1, "last": 1, "blocks": 8, "cols": 12})
#: One weight-tile fetch: DRAM offset (from ``weights_base``), beats, the buffer slot it fills, and
#: ``rows``, the tile's inner dimension: the beats of each 16-byte bank (``gateware/fetcher.py``).
Fetch = data.StructLayout({"addr": ADDR_BITS, "beats": 16, "slot": SLOT_BITS, "rows": 16})

#: The A reader's walk: ``rows`` tokens (from ``base``, ``stride`` words apart) by ``chunks``
#: words from word ``chunk0`` of each; with ``ln`` each token's row passes LayerNorm on its way
#: to the MAC array (a GEMM whose input is a LayerNorm of the residual stream).
ARead = data.StructLayout({"mode": AMode, "ln": 1, "base": 24, "stride": 8, "chunk0": 8, "chunks": 8,
                           "rows": 16})
#: The W reader's walk: ``len`` elements of a tile, or ``rows`` tokens of a region like ``ARead``.
WRead = data.StructLayout({"mode": WMode, "base": 24, "stride": 8, "chunk0": 8, "len": 16, "rows": 16})
#: Where results go: token ``t`` of ``rows`` is written at ``base + (t + offset) * stride + chunk0``.
Dest = data.StructLayout({"base": 24, "stride": 8, "chunk0": 8, "rows": 16, "offset": 8})

#: A QKV GEMM's copy of K and V into the attention buffers: words ``k_chunk`` to ``v_chunk - 1``
#: of each token are K, the as many from ``v_chunk`` on are V.
KVCopy = data.StructLayout({"on": 1, "k_chunk": 8, "v_chunk": 8})

#: The settings of one phase.
Phase = data.StructLayout({
    "sink": Sink,
    "a": ARead,
    "w": WRead,
    "d": Dest,
    "n_cols": 16,               # output channels
    "n_cb": 12,                 # output-channel blocks, ceil(n_cols / cols)
    "narrow": 1,                # post-processor saturates to ACT_BITS
    "fix_params": 1,            # one (mult, shift) for all channels, no bias, instead of the tile's
    "fix_mult": 16,             # that (mult, shift); GELU's requantisation
    "fix_shift": 6,
    "blocks_per_tile": 8,       # token words per token of a whole tile (LayerNorm: the row's chunks)
    "last_blocks": 8,           # the same for the last channel block, which may be partly empty
    "ln_shift": 6,              # LayerNorm affine shift and epsilon term
    "ln_eps": 48,
    "kv": KVCopy,
    "last_row_group": 12,       # QK^T: the last query block whose scores go through the softmax
})

#: Where in the program the sequencer is: ``running`` from the first instruction's fetch to the
#: end (not while the header and program load), instruction ``pc``, MoE ``expert``.
Position = data.StructLayout({"running": 1, "pc": 16, "expert": 8})
#: What a simulation watches to draw a frame's timeline (``sim/trace.py``); the board build leaves
#: it unconnected. ``busy`` from start to done; ``sink`` is the phase's column sink; ``mac`` an operand transfer into the MAC
#: array this cycle; ``stall`` the array waiting for a weight tile from DRAM.
Trace = data.StructLayout({"busy": 1, "at": Position, "sink": Sink, "mac": 1, "stall": 1})
