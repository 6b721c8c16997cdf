"""One-pass integer LayerNorm over token lanes, the twin of ``golden/layernorm.py``."""

import math

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import ACT_BITS, RES_BITS
from golden.layernorm import BETA_BITS, GAMMA_BITS, RSQRT_BITS, Z_FRAC

from .fixedpoint import halve_round_saturate, rshift_round
from .isqrt import SeqIsqrt
from .lanes import lane_layout
from .row_bank import RowBank, TwoPassTiming
from .seq_divider import SeqDivider
from .skid_buffer import SkidBuffer

__all__ = ["BANKS", "LayerNorm"]

#: ``2**(2 * RSQRT_BITS) // V`` needs this many quotient bits (V may be 1).
_RECIP_BITS = 2 * RSQRT_BITS + 1
#: ``golden.layernorm.layernorm`` accepts affine shifts up to this.
_MAX_AFFINE_SHIFT = 40
#: Row banks by default: a bank is held ``2 * n + 102`` cycles per row of ``n`` channels, so with 3
#: a row of 102 or more channels streams at one channel per cycle (edge-moe's 192: 192 cycles a
#: token block, against 243 with 2 banks).
BANKS = 3
#: Per-row divider period, row latency and pass-2 read latency (the class's attributes).
_DIVIDER_PERIOD = _RECIP_BITS + 2
_LATENCY = _RECIP_BITS + (_RECIP_BITS + 1) // 2 + 11
_READ_LATENCY = 6


class LayerNorm(TwoPassTiming, wiring.Component):
    """``golden.layernorm.layernorm`` of ``lanes`` rows (tokens) in lockstep.

    Element ``j`` (channel ``j``) of every lane arrives in the same transfer, in increasing ``j``.
    Pass 1 accumulates ``S1 = sum(x)`` and ``S2 = sum(x*x)`` exactly per lane and stores the row in
    a row buffer; once per row and lane a sequential divider forms ``2**64 // V`` with
    ``V = n*S2 - S1**2 + eps_term`` and a sequential square root turns it into
    ``R = isqrt(2**64 // V)``; pass 2 streams the row again and emits
    ``sat8(rshift_round(rshift_round((n*x - S1) * R, 20) * gamma[j] + beta[j], 12 + affine_shift))``.
    ``n`` is the row's length as marked by ``last``.

    Parameters
    ----------
    lanes : int
        Token lanes processed in parallel.
    max_dim : int
        Longest row (channels); sizes the row buffer, the parameter memories and the sums.
    banks : int
        Rows the buffer holds (``BANKS``, 3, by default); with 2, pass 1 of row ``k + 1``
        overlaps pass 2 of row ``k``; with 3, rows of 102 or more elements stream back to back
        (see ``steady_period``).

    Attributes
    ----------
    i : In(stream.Signature(StructLayout({"x": ArrayLayout(signed(16), lanes), "last": 1})))
        Residual-stream values; ``last`` marks a row's final element (``n <= max_dim``).
    o : Out(stream.Signature(StructLayout({"y": ArrayLayout(signed(8), lanes), "last": 1})))
        One transfer per input element, same order.
    params : In(stream.Signature(StructLayout({"index": range(max_dim), "gamma": signed(16),
        "beta": signed(32)})))
        Write port of the per-channel parameter memories, shared by all lanes; always ready (a
        plain stream rather than ``always_ready`` so the unit also converts as a top level).
        Write while no row is in pass 2.
    affine_shift : In(unsigned(6))
        0..40, as golden's ``affine_shift``.
    eps_term : In(unsigned(var_width))
        Golden's ``eps_term``, at least 1 (so ``V >= 1``). ``affine_shift`` and ``eps_term`` are
        settings: hold them while rows are in flight.
    var_width : int
        Width of ``n*S2 - S1**2`` for rows up to ``max_dim``: the bound on ``eps_term``.
    divider_period : int
        Cycles per row of the per-lane ``2**64 // V`` divider (67), which bounds the row rate.
    latency : int
        Clock edges from the transfer of a row's last input to the transfer of its first output
        when the unit is otherwise idle and ``o`` is ready: ``65 + 33 + 11`` (109): pass 1 and
        its hand-off 2, divider 65 + 1, square root 33 + 1, pass 2's load, read, subtract,
        multiply, affine, shift, round and output 7.
    read_latency : int
        6: clock edges from pass 2 reading an element from the row buffer to its ``o`` transfer
        (``o`` ready).

    Timing: ``i`` accepts one element per cycle, stalling only when a row starts while ``banks``
    rows are held (from their first input until pass 2 has read their last element) or for a
    cycle when a row's sums find the divider's input slot occupied. Pass 2 emits one element per
    cycle while ``o`` is ready and starts the next row on the cycle after the previous row's last
    when its ``R`` is ready. A lone row group of ``n`` elements spans ``2 * n + latency - 1``
    cycles from first input to last output. Steady state with back-to-back rows and ``o``
    always ready: ``steady_period(n)`` (``TwoPassTiming``; a bank is held ``2 * n + 102`` cycles).
    """

    def __init__(self, lanes, max_dim, banks=BANKS):
        if lanes < 1 or max_dim < 1 or banks < 1:
            raise ValueError("lanes, max_dim and banks must be positive")
        self.lanes = lanes
        self.max_dim = max_dim
        self.banks = banks
        self.s1_width = (max_dim << (RES_BITS - 1)).bit_length() + 1
        self.s2_width = (max_dim << (2 * RES_BITS - 2)).bit_length()
        # n*S2 - S1**2 = n * sum((x - mean)**2) <= n**2 * 2**30 (half the row at each extreme).
        self.var_width = (max_dim ** 2 << (2 * RES_BITS - 2)).bit_length()
        # |n*x - S1| <= sqrt((n - 1) * V), so |z| <= sqrt(n - 1) * 2**Z_FRAC + 1 after rounding.
        z_bound = ((math.isqrt(max(max_dim - 1, 0)) + 1) << Z_FRAC) + 1
        self.z_width = z_bound.bit_length() + 1
        self.divider_period, self.latency, self.read_latency = _DIVIDER_PERIOD, _LATENCY, _READ_LATENCY
        super().__init__({
            "i": In(stream.Signature(lane_layout(lanes, signed(RES_BITS), "x"))),
            "o": Out(stream.Signature(lane_layout(lanes, signed(ACT_BITS), "y"))),
            "params": In(stream.Signature(data.StructLayout({
                "index": range(max_dim),
                "gamma": signed(GAMMA_BITS),
                "beta": signed(BETA_BITS),
            }))),
            "affine_shift": In(unsigned(_MAX_AFFINE_SHIFT.bit_length())),
            "eps_term": In(unsigned(self.var_width)),
        })

    @staticmethod
    def row_period(n, banks=BANKS):
        """``steady_period(n)`` of a LayerNorm with ``banks`` banks, without building one."""
        timing = TwoPassTiming()
        timing.banks, timing.latency, timing.read_latency = banks, _LATENCY, _READ_LATENCY
        timing.divider_period = _DIVIDER_PERIOD
        return timing.steady_period(n)

    def elaborate(self, platform):
        m = Module()
        r_width = (_RECIP_BITS + 1) // 2
        s1 = signed(self.s1_width)
        m.submodules.rows = bank = RowBank(
            self.lanes, ("x", signed(RES_BITS)), self.max_dim, self.banks,
            stats={"s1": s1, "s2": unsigned(self.s2_width)}, tag={"s1": s1, "r": unsigned(r_width)})
        gamma_rd, beta_rd = self._parameters(m)
        self._sums(m, bank)
        self._rsqrt(m, bank)
        self._normalise(m, bank, gamma_rd, beta_rd)
        return m

    def _parameters(self, m):
        """The per-channel gamma and beta memories: written from ``params``, read in pass 2."""
        m.submodules.gamma = gamma_mem = memory.Memory(
            shape=signed(GAMMA_BITS), depth=self.max_dim, init=[])
        m.submodules.beta = beta_mem = memory.Memory(
            shape=signed(BETA_BITS), depth=self.max_dim, init=[])
        gamma_wr, beta_wr = gamma_mem.write_port(), beta_mem.write_port()
        m.d.comb += [
            self.params.ready.eq(1),
            gamma_wr.addr.eq(self.params.payload.index),
            gamma_wr.data.eq(self.params.payload.gamma),
            gamma_wr.en.eq(self.params.valid),
            beta_wr.addr.eq(self.params.payload.index),
            beta_wr.data.eq(self.params.payload.beta),
            beta_wr.en.eq(self.params.valid),
        ]
        return gamma_mem.read_port(), beta_mem.read_port()

    def _sums(self, m, bank):
        """Pass 1: the square at the input, then the two running sums in the bank's stage."""
        # The input goes through a skid buffer so that ``i.ready`` is a register, not the row
        # bank's state through logic (the A reader's handshake and queue were behind it).
        m.submodules.skid = skid = SkidBuffer(self.i.payload.shape())
        wiring.connect(m, wiring.flipped(self.i), skid.i)
        p, stage = skid.o.payload, bank.stage
        wiring.connect(m, skid.o, bank.i)
        for k in range(self.lanes):
            x1 = Signal(signed(RES_BITS), name=f"x1_{k}")
            sq1 = Signal(2 * RES_BITS - 1, name=f"sq1_{k}")
            s1_run = Signal(signed(self.s1_width), name=f"s1_run{k}")
            s2_run = Signal(self.s2_width, name=f"s2_run{k}")
            with m.If(skid.o.valid & skid.o.ready):
                m.d.sync += [x1.eq(p.x[k]), sq1.eq(p.x[k] * p.x[k])]
            s1_new = Mux(stage.first, 0, s1_run) + x1
            s2_new = Mux(stage.first, 0, s2_run) + sq1
            with m.If(stage.update):
                m.d.sync += [s1_run.eq(s1_new), s2_run.eq(s2_new)]
            m.d.comb += [bank.stats.s1[k].eq(s1_new), bank.stats.s2[k].eq(s2_new)]

    def _rsqrt(self, m, bank):
        """Once per row and lane: ``2**64 // V``, then its square root, into pass 2's start."""
        lanes, rows, start = self.lanes, bank.rows, bank.start
        dividers = [SeqDivider(_RECIP_BITS, self.var_width + 1) for _ in range(lanes)]
        roots = [SeqIsqrt(_RECIP_BITS) for _ in range(lanes)]
        for k in range(lanes):
            m.submodules[f"divider{k}"] = dividers[k]
            m.submodules[f"isqrt{k}"] = roots[k]
            s1, s2 = rows.payload.stats.s1[k], rows.payload.stats.s2[k]
            variance = rows.payload.n * s2 - s1 * s1 + self.eps_term
            m.d.comb += [
                dividers[k].i.valid.eq(rows.valid),
                dividers[k].i.payload.dividend.eq(1 << (2 * RSQRT_BITS)),
                dividers[k].i.payload.divisor.eq(variance),
                roots[k].i.valid.eq(dividers[k].o.valid),
                roots[k].i.payload.eq(dividers[k].o.payload.quotient),
                dividers[k].o.ready.eq(roots[k].i.ready),
                start.payload.tag.r[k].eq(roots[k].o.payload),
                roots[k].o.ready.eq(start.valid & start.ready),
            ]
        # The row's length and S1 travel beside the divider and the square root.
        div_n = Signal.like(rows.payload.n)
        div_s1 = Signal(rows.payload.stats.s1.shape())
        m.d.comb += [
            rows.ready.eq(dividers[0].i.ready),
            start.valid.eq(roots[0].o.valid),
        ]
        with m.If(rows.valid & rows.ready):
            m.d.sync += [div_n.eq(rows.payload.n), div_s1.eq(rows.payload.stats.s1)]
        with m.If(dividers[0].o.valid & roots[0].i.ready):
            m.d.sync += [start.payload.n.eq(div_n), start.payload.tag.s1.eq(div_s1)]

    def _normalise(self, m, bank, gamma_rd, beta_rd):
        """Pass 2: ``n*x - S1``, times R, affine, round, saturate, 4 stages after the read."""
        r = bank.o
        advance = Signal()
        m.d.comb += [
            advance.eq(~self.o.valid | self.o.ready),
            r.ready.eq(advance),
            gamma_rd.addr.eq(bank.index),
            gamma_rd.en.eq(advance),
            beta_rd.addr.eq(bank.index),
            beta_rd.en.eq(advance),
        ]
        vb, vc, vd, ve = Signal(), Signal(), Signal(), Signal()
        lastb, lastc, lastd, laste = Signal(), Signal(), Signal(), Signal()
        gamma_b, gamma_c = Signal(signed(GAMMA_BITS)), Signal(signed(GAMMA_BITS))
        beta_b, beta_c = Signal(signed(BETA_BITS)), Signal(signed(BETA_BITS))
        with m.If(advance):
            m.d.sync += [
                vb.eq(r.valid), lastb.eq(r.payload.last),
                gamma_b.eq(gamma_rd.data), beta_b.eq(beta_rd.data),
                vc.eq(vb), lastc.eq(lastb), gamma_c.eq(gamma_b), beta_c.eq(beta_b),
                vd.eq(vc), lastd.eq(lastc),
                ve.eq(vd), laste.eq(lastd),
                self.o.valid.eq(ve), self.o.payload.last.eq(laste),
            ]
        r_width = len(r.payload.tag.r[0])
        for k in range(self.lanes):
            d_b = Signal(signed(self.s1_width + 1), name=f"d_b{k}")
            r_b = Signal(r_width, name=f"r_b{k}")
            z_c = Signal(signed(self.z_width), name=f"z_c{k}")
            w_d = Signal(signed(max(self.z_width + GAMMA_BITS, BETA_BITS) + 1), name=f"w_d{k}")
            half_e = Signal(signed(len(w_d) + 1), name=f"half_e{k}")
            with m.If(advance):
                m.d.sync += [
                    d_b.eq(r.payload.n * r.payload.x[k] - r.payload.tag.s1[k]),
                    r_b.eq(r.payload.tag.r[k]),
                    z_c.eq(rshift_round(d_b * r_b, RSQRT_BITS - Z_FRAC)),
                    w_d.eq(z_c * gamma_c + beta_c),
                    # Shifting by the constant first needs no adder for Z_FRAC + affine_shift.
                    # The variable shift has a stage of its own: with the rounding add and the
                    # saturation after it, it made the unit's deepest path (9 levels).
                    half_e.eq(((w_d << 1) >> Z_FRAC) >> self.affine_shift),
                    self.o.payload.y[k].eq(halve_round_saturate(half_e, ACT_BITS)),
                ]
