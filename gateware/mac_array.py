"""Output-stationary R x C multiply-accumulate array, the twin of ``golden/mac_array.py``."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import ACT_BITS, PROB_OPERAND_BITS
from golden.mac_array import ACC_BITS

from .lanes import lane_layout
from .skid_buffer import SkidBuffer

__all__ = ["MACArray"]


class MACArray(wiring.Component):
    """``golden.mac_array.matmul`` on a tile of ``rows`` tokens by ``cols`` output channels.

    Processing element ``(r, c)`` accumulates ``a[r] * w[c]`` over the inner index ``k`` of a
    tile: row ``r`` is token lane ``r``, column ``c`` is output channel ``c``. Each PE is one
    DSP48E2 in its usual shape: operand registers (AREG/BREG), product register (MREG) and the
    accumulator in the P register, whose feedback is replaced by zero on a tile's first ``k``
    (the OPMODE W/Z select); the clock enable of all of them is the array's ``advance``.
    Yosys (0.70) packs all four registers of each PE into its DSP for 7-series (DSP48E1); for
    UltraScale+ it places the multiplier in a DSP48E2 but packs no register of any design, even
    plain Verilog, so its xcup resource figures overcount flip-flops (Vivado not run here).

    When a tile's last product has been accumulated, the R x C sums move at once into a drain
    register bank, which shifts them out one column per transfer while the PEs already
    accumulate the next tile. Accumulation wraps modulo ``2**acc_bits``, so a tile whose exact
    result fits ``acc_bits`` (golden checks it does) comes out exact even when a partial sum
    does not.

    Parameters
    ----------
    rows : int
        Token lanes R (activation operands per transfer).
    cols : int
        Output channels C (weight operands per transfer).
    a_bits, w_bits, acc_bits : int
        Signed widths of the activation operand, weight operand and accumulator; the defaults
        are golden's ``PROB_OPERAND_BITS`` (activations and attention probabilities),
        ``ACT_BITS`` (int8 weights, or K and V activations for attention) and ``ACC_BITS``.
        Operands up to 27 x 18 bits keep one DSP48E2 per PE.

    Attributes
    ----------
    i : In(stream.Signature(StructLayout({"a": ArrayLayout(signed(a_bits), rows), "w": ArrayLayout(signed(w_bits), cols), "last": 1})))
        One inner index ``k`` of a tile: ``a[r]`` is token ``r``'s activation, ``w[c]`` is
        channel ``c``'s weight. ``last`` marks the tile's final ``k``; the next transfer starts
        a new tile. A tile has at least one transfer. ``a`` fans out to a whole row and ``w``
        to a whole column: drive them from registers.
    o : Out(stream.Signature(StructLayout({"data": ArrayLayout(signed(acc_bits), rows), "last": 1})))
        A tile's sums, one column per transfer in increasing channel order: ``data[r]`` is
        ``sum_k a[r] * w[c]``; ``last`` marks column ``cols - 1``.
    skip_rest : In(1)
        With a column's transfer on ``o``: the tile's later columns are not wanted; the drain
        bank is free after this one, as after ``last``.
    pe_latency : int
        3: clock edges from an operand transfer to its product being in the accumulator.
    latency : int
        4: when a tile's ``last`` transfers on clock edge ``t`` and the drain bank is free, the
        tile's column 0 is on ``o`` from edge ``t + latency`` on (it transfers on that edge if
        ``o.ready``); column ``c`` follows ``c`` transfers later.

    Throughput: one transfer (R*C MACs) per cycle. The drain of a tile (``cols`` transfers)
    overlaps the next tile's accumulation; the array waits only when a tile's sums are complete
    while the previous tile's are still being drained, which with ``o`` always ready happens
    only for tiles shorter than ``cols`` transfers. So back-to-back tiles of depth ``K >= cols``
    run at one ``k`` per cycle (100% of R*C MACs per cycle); shorter tiles take ``cols`` cycles
    each (fewer when ``skip_rest`` cuts their drain short).
    """

    pe_latency = 3
    latency = pe_latency + 1

    def __init__(self, rows, cols, *, a_bits=PROB_OPERAND_BITS, w_bits=ACT_BITS,
                 acc_bits=ACC_BITS):
        if rows < 1 or cols < 1:
            raise ValueError("rows and cols must be positive")
        if a_bits < 2 or w_bits < 2:
            raise ValueError("operands need at least 2 bits (signed)")
        if acc_bits < a_bits + w_bits - 1:
            raise ValueError("the accumulator cannot hold a single product")
        self.rows, self.cols = rows, cols
        self.a_bits, self.w_bits, self.acc_bits = a_bits, w_bits, acc_bits
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "a": data.ArrayLayout(signed(a_bits), rows),
                "w": data.ArrayLayout(signed(w_bits), cols),
                "last": 1,
            }))),
            "o": Out(stream.Signature(lane_layout(rows, signed(acc_bits)))),
            "skip_rest": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        rows, cols = self.rows, self.cols

        # Control travels beside the PE pipeline: stage 1 holds the operands, stage 2 the
        # products; the accumulators follow.
        v1, first1, last1 = Signal(), Signal(), Signal()
        v2, first2, last2 = Signal(), Signal(), Signal()
        in_tile = Signal()   # the previous accepted transfer was not a tile's last
        done = Signal()      # the accumulators hold a complete tile not yet drained
        remaining = Signal(range(cols + 1))   # columns of the drain bank still to transfer

        free = Signal()
        load = Signal()
        advance = Signal()
        # ``remaining != 0`` and ``remaining == 1`` kept as registers: the column path's
        # handshake, and through it the drain's load, start at them.
        m.d.comb += [
            free.eq(~self.o.valid | (self.o.ready & (self.o.payload.last | self.skip_rest))),
            load.eq(done & free),
            # A first product about to overwrite a finished tile that cannot leave yet.
            advance.eq(~(done & ~free & v2)),
        ]

        m.submodules.skid = skid = SkidBuffer(self.i.payload.shape())
        wiring.connect(m, wiring.flipped(self.i), skid.i)
        in_valid, operands = skid.o.valid, skid.o.payload
        m.d.comb += skid.o.ready.eq(advance)

        with m.If(advance):
            m.d.sync += [
                v1.eq(in_valid),
                first1.eq(~in_tile),
                last1.eq(operands.last),
                v2.eq(v1),
                first2.eq(first1),
                last2.eq(last1),
            ]
            with m.If(in_valid):
                m.d.sync += in_tile.eq(~operands.last)
        with m.If(load):
            m.d.sync += done.eq(0)
        with m.If(advance & v2 & last2):
            m.d.sync += done.eq(1)

        drain = [Signal(data.ArrayLayout(signed(self.acc_bits), rows), name=f"drain{c}")
                 for c in range(cols)]
        m.d.comb += self.o.payload.data.eq(drain[0])
        with m.If(load):
            m.d.sync += [remaining.eq(cols), self.o.valid.eq(1), self.o.payload.last.eq(cols == 1)]
        with m.Elif(self.o.valid & self.o.ready):
            m.d.sync += [remaining.eq(Mux(self.skip_rest, 0, remaining - 1)),
                         self.o.valid.eq(~self.skip_rest & (remaining != 1)),
                         self.o.payload.last.eq(~self.skip_rest & (remaining == 2))]
            for c in range(cols - 1):
                m.d.sync += drain[c].eq(drain[c + 1])

        for r in range(rows):
            for c in range(cols):
                acc = self._pe(m, r, c, operands, advance, v2, first2)
                with m.If(load):
                    m.d.sync += drain[c][r].eq(acc)
        return m

    def _pe(self, m, r, c, operands, advance, v2, first2):
        """Add PE ``(r, c)`` to ``m``: the three DSP48E2 register stages. Returns its accumulator."""
        a = Signal(signed(self.a_bits), name=f"pe{r}_{c}_a")
        w = Signal(signed(self.w_bits), name=f"pe{r}_{c}_w")
        prod = Signal(signed(self.a_bits + self.w_bits), name=f"pe{r}_{c}_m")
        acc = Signal(signed(self.acc_bits), name=f"pe{r}_{c}_p")
        with m.If(advance):
            m.d.sync += [
                a.eq(operands.a[r]),
                w.eq(operands.w[c]),
                prod.eq(a * w),
            ]
            # Zeroing the feedback (not selecting prod alone) is the form Yosys packs into P.
            with m.If(v2):
                m.d.sync += acc.eq(Mux(first2, 0, acc) + prod)
        return acc
