"""The records the accelerator reads from DRAM, as layouts shared by the compiler and the hardware.

``gateware/program.py`` packs these records into the DRAM image; ``gateware/top.py`` and its
components view the same bits through the same layouts, so a field moves or widens in one place.
Every record is little-endian: bit ``i`` of a record is bit ``i % 8`` of its byte ``i // 8``.

- :data:`Header`: the first DRAM beat, naming the program.
- :data:`Instr`: one instruction of the program (``INSTR_BYTES`` each).
- :data:`TileParams`: one output channel's bias and requantisation, ``lanes`` of them at the
  head of every weight tile.
- :data:`LNParams`: one channel's LayerNorm affine parameters.
"""

import numpy as np
from amaranth import Shape, signed, unsigned
from amaranth.lib import data, enum

from golden.fixedpoint import REQUANT_MULT_BITS
from golden.layernorm import BETA_BITS, GAMMA_BITS

__all__ = ["ADDR_BITS", "BEAT_BYTES", "PROGRAM_MAGIC", "Op", "OutMode", "Header", "Instr", "INSTR_BYTES",
           "TileParams", "LNParams", "PARAM_BYTES", "pack_records", "encode"]

#: DRAM byte addresses.
ADDR_BITS = 40
#: DRAM beat (AXI data width) in bytes; every DRAM object is aligned to it.
BEAT_BYTES = 16
PROGRAM_MAGIC = 0x4D33_5649   # "M3VI"


class Op(enum.IntEnum, shape=4):
    """Instruction opcodes."""
    END = 0
    LOAD_PATCHES = 1    # image -> pixels region (patch vectors), int8 sign-extended
    LOAD16 = 2          # DRAM int16 [rows, chunks*lanes] -> region
    STORE16 = 3         # region -> DRAM int16
    LAYERNORM = 4       # region -> region, its parameters at dram1
    GEMM = 5            # region x DRAM tiles -> region (write, residual add, or fused GELU);
                        # with ``ln`` the region's rows through LayerNorm first
    ATTENTION = 6       # one head: QK^T, softmax, A.V
    MOE = 7             # gate, top-k, queues, the active experts, weighted combine
    ROUTES = 8          # the last MOE's expert choices (routing recorder) -> DRAM at output_base + dram0


class OutMode(enum.IntEnum, shape=2):
    """What a GEMM does with its post-processed outputs."""
    WRITE = 0
    RESIDUAL = 1        # add the destination's value before saturating
    GELU = 2            # GELU (mult2/shift2) then write
    QKV = 3             # write, and copy K (from word aux_chunk) and V (from v_chunk) for attention


#: The first DRAM beat at ``weights_base``.
Header = data.StructLayout({
    "magic": 32,                    # PROGRAM_MAGIC
    "count": 32,                    # instructions
    "program": 64,                  # byte offset of the first instruction
})

#: One instruction. Fields unused by an opcode are zero.
Instr = data.StructLayout({
    "op": Op,
    "out_mode": OutMode,
    "narrow": 1,                    # saturate to ACT_BITS, else 16 bits
    "ln": 1,                        # GEMM: the A rows through LayerNorm (parameters at dram1, shift, eps)
    "dram0": ADDR_BITS,             # tiles / parameters / source, relative to its base
    "dram1": ADDR_BITS,
    "dram2": ADDR_BITS,
    "stride0": 32,                  # DRAM bytes between tasks' gates; image row (LOAD_PATCHES)
    "stride1": 32,                  # DRAM bytes between experts; image plane (LOAD_PATCHES)
    "src_base": 24, "src_stride": 8, "src_chunk": 8,
    "dst_base": 24, "dst_stride": 8, "dst_chunk": 8,
    "aux_base": 24, "aux_stride": 8, "aux_chunk": 8,
    "v_chunk": 8,                   # ATTENTION: V's first word in the source row
    "rows": 16,                     # tokens processed
    "row_offset": 8,                # destination token = source token + row_offset
    "k_chunks": 8,                  # inner dimension in words
    "n_out": 16,                    # output channels
    "mult": 16, "shift": 6,
    "mult2": 16, "shift2": 6,
    "eps": 48,
    "count": 16,                    # experts (MOE), patches per row (LOAD_PATCHES), beats (ROUTES)
    "top_k": 4,
})
INSTR_BYTES = -(-Instr.size // (8 * BEAT_BYTES)) * BEAT_BYTES

#: Bytes of one parameter record (:data:`TileParams`, :data:`LNParams`); two fill a DRAM beat.
PARAM_BYTES = 8

#: One output channel of a weight tile: the post-processor's bias and requantisation.
TileParams = data.FlexibleLayout(8 * PARAM_BYTES, {
    "bias": data.Field(signed(32), 0),
    "mult": data.Field(unsigned(REQUANT_MULT_BITS), 32),
    "shift": data.Field(unsigned(6), 48),
})

#: One channel's LayerNorm affine parameters.
LNParams = data.FlexibleLayout(8 * PARAM_BYTES, {
    "gamma": data.Field(signed(GAMMA_BITS), 0),
    "beta": data.Field(signed(BETA_BITS), 32),
})


def _check_fits(name, shape, values):
    lo, hi = (-(1 << shape.width - 1), 1 << shape.width - 1) if shape.signed else (0, 1 << shape.width)
    if np.any(values < lo) or np.any(values >= hi):
        raise ValueError(f"record field {name} does not fit {shape}")


def pack_records(layout, **fields):
    """Records of ``layout`` (at most 64 bits) packed from arrays of field values, as ``<u8`` bytes.

    The numpy counterpart of ``layout.const``, for the many records of a DRAM image; every
    field of ``layout`` must be given and fit its shape.
    """
    assert layout.size <= 64 and set(fields) == {name for name, _ in layout}
    packed = None
    for name, field in layout:
        values = np.asarray(fields[name], dtype=np.int64)
        _check_fits(name, Shape.cast(field.shape), values)
        bits = (values & ((1 << field.width) - 1)).astype(np.uint64) << np.uint64(field.offset)
        packed = bits if packed is None else packed | bits
    return packed.astype("<u8").tobytes()


def encode(layout, fields, nbytes):
    """The ``nbytes`` little-endian bytes of one record given as a dict of field values.

    Raises ``ValueError`` naming the first field whose value does not fit its width (the
    layout's ``const`` would truncate it silently).
    """
    for name, v in fields.items():
        width = layout[name].width
        if not 0 <= int(v) < (1 << width):
            raise ValueError(f"field {name} = {int(v)} does not fit {width} bits")
    return layout.const(fields).as_bits().to_bytes(nbytes, "little")
