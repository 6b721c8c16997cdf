"""One-pass integer LayerNorm over token lanes, the twin of ``golden/layernorm.py``."""

import math
from fractions import Fraction

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import ACT_BITS, RES_BITS
from golden.layernorm import BETA_BITS, GAMMA_BITS, RSQRT_BITS, Z_FRAC

from .fixedpoint import halve_round_saturate, rshift_round
from .isqrt import SeqIsqrt
from .seq_divider import SeqDivider

__all__ = ["LayerNorm"]

#: ``2**(2 * RSQRT_BITS) // V`` needs this many quotient bits (V may be 1).
_RECIP_BITS = 2 * RSQRT_BITS + 1
#: ``golden.layernorm.layernorm`` accepts affine shifts up to this.
_MAX_AFFINE_SHIFT = 40


class LayerNorm(wiring.Component):
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
        Rows the buffer holds; with 2, pass 1 of row ``k + 1`` overlaps pass 2 of row ``k``;
        with 4, rows of 102 or more elements stream back to back (see ``steady_period``).

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
        when the unit is otherwise idle and ``o`` is ready: ``65 + 33 + 10`` (108): pass 1 and
        its hand-off 2, divider 65 + 1, square root 33 + 1, pass 2's load, read, subtract,
        multiply, affine, round and output 6.
    read_latency : int
        5: clock edges from pass 2 reading an element from the row buffer to its ``o`` transfer
        (``o`` ready).

    Timing: ``i`` accepts one element per cycle, stalling only when a row starts while ``banks``
    rows are held (from their first input until pass 2 has read their last element) or for a
    cycle when a row's sums find the divider's input slot occupied. Pass 2 emits one element per
    cycle while ``o`` is ready and starts the next row on the cycle after the previous row's last
    when its ``R`` is ready. A lone row group of ``n`` elements spans ``2 * n + latency - 1``
    cycles from first input to last output. Steady state with back-to-back rows and ``o``
    always ready: see ``steady_period``.
    """

    def __init__(self, lanes, max_dim, banks=2):
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
        self.divider_period = _RECIP_BITS + 2
        self.latency = _RECIP_BITS + (_RECIP_BITS + 1) // 2 + 10
        self.read_latency = 5
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "x": data.ArrayLayout(signed(RES_BITS), lanes),
                "last": 1,
            }))),
            "o": Out(stream.Signature(data.StructLayout({
                "y": data.ArrayLayout(signed(ACT_BITS), lanes),
                "last": 1,
            }))),
            "params": In(stream.Signature(data.StructLayout({
                "index": range(max_dim),
                "gamma": signed(GAMMA_BITS),
                "beta": signed(BETA_BITS),
            }))),
            "affine_shift": In(unsigned(_MAX_AFFINE_SHIFT.bit_length())),
            "eps_term": In(unsigned(self.var_width)),
        })

    def steady_period(self, n):
        """Average cycles per row group for back-to-back rows of ``n`` elements, ``o`` ready.

        The largest of three limits: the input (``n``), the per-row divider
        (``divider_period``), and the row buffer: a bank is held from a row's first input until
        pass 2 has read its last element, ``2 * n + latency - read_latency - 1`` cycles
        (``2 * n + 102``), so ``banks`` banks hold at most ``banks`` rows per that time. Exact (as the
        sum of any ``banks`` consecutive row periods) when one limit dominates.
        """
        held = 2 * n + self.latency - self.read_latency - 1
        return max(Fraction(n), Fraction(self.divider_period), Fraction(held, self.banks))

    def elaborate(self, platform):
        m = Module()
        lanes, max_dim, banks = self.lanes, self.max_dim, self.banks
        depth = banks * max_dim

        m.submodules.rows = rows = memory.Memory(
            shape=data.ArrayLayout(signed(RES_BITS), lanes), depth=depth, init=[])
        row_wr = rows.write_port()
        row_rd = rows.read_port()
        m.submodules.gamma = gamma_mem = memory.Memory(
            shape=signed(GAMMA_BITS), depth=max_dim, init=[])
        m.submodules.beta = beta_mem = memory.Memory(
            shape=signed(BETA_BITS), depth=max_dim, init=[])
        gamma_wr, beta_wr = gamma_mem.write_port(), beta_mem.write_port()
        gamma_rd, beta_rd = gamma_mem.read_port(), beta_mem.read_port()
        m.d.comb += [
            self.params.ready.eq(1),
            gamma_wr.addr.eq(self.params.payload.index),
            gamma_wr.data.eq(self.params.payload.gamma),
            gamma_wr.en.eq(self.params.valid),
            beta_wr.addr.eq(self.params.payload.index),
            beta_wr.data.eq(self.params.payload.beta),
            beta_wr.en.eq(self.params.valid),
        ]

        dividers = [SeqDivider(_RECIP_BITS, self.var_width + 1) for _ in range(lanes)]
        roots = [SeqIsqrt(_RECIP_BITS) for _ in range(lanes)]
        for k in range(lanes):
            m.submodules[f"divider{k}"] = dividers[k]
            m.submodules[f"isqrt{k}"] = roots[k]
        r_width = roots[0].root_width

        # Rows held in the buffer: counted from a row's first input to pass 2 issuing its last.
        held = Signal(range(banks + 1))
        held_inc = Signal()
        held_dec = Signal()
        m.d.sync += held.eq(held + held_inc - held_dec)

        # ---- pass 1: square at the input, then the two running sums ----
        row_open = Signal()
        idx = Signal(range(max_dim))
        wr_base = Signal(range(depth))

        v1 = Signal()
        first1 = Signal()
        last1 = Signal()
        n1 = Signal(range(max_dim + 1))
        x1 = [Signal(signed(RES_BITS), name=f"x1_{k}") for k in range(lanes)]
        sq1 = [Signal(2 * RES_BITS - 1, name=f"sq1_{k}") for k in range(lanes)]
        s1_run = [Signal(signed(self.s1_width), name=f"s1_run{k}") for k in range(lanes)]
        s2_run = [Signal(self.s2_width, name=f"s2_run{k}") for k in range(lanes)]

        slot_valid = Signal()
        slot_n = Signal(range(max_dim + 1))
        slot_s1 = [Signal(signed(self.s1_width), name=f"slot_s1_{k}") for k in range(lanes)]
        slot_s2 = [Signal(self.s2_width, name=f"slot_s2_{k}") for k in range(lanes)]

        advance1 = Signal()
        accept = Signal()
        m.d.comb += [
            advance1.eq(~(v1 & last1 & slot_valid)),
            self.i.ready.eq(advance1 & (row_open | (held < banks))),
            accept.eq(self.i.valid & self.i.ready),
            held_inc.eq(accept & ~row_open),
            row_wr.addr.eq(wr_base + idx),
            row_wr.data.eq(self.i.payload.x),
            row_wr.en.eq(accept),
        ]
        with m.If(advance1):
            m.d.sync += v1.eq(accept)
        with m.If(accept):
            m.d.sync += [
                first1.eq(~row_open),
                last1.eq(self.i.payload.last),
                n1.eq(idx + 1),
                row_open.eq(~self.i.payload.last),
                idx.eq(Mux(self.i.payload.last, 0, idx + 1)),
            ]
            for k in range(lanes):
                x = self.i.payload.x[k]
                m.d.sync += [x1[k].eq(x), sq1[k].eq(x * x)]
            with m.If(self.i.payload.last):
                m.d.sync += wr_base.eq(Mux(wr_base == depth - max_dim, 0, wr_base + max_dim))

        update = v1 & advance1
        for k in range(lanes):
            s1_new = Mux(first1, 0, s1_run[k]) + x1[k]
            s2_new = Mux(first1, 0, s2_run[k]) + sq1[k]
            with m.If(update):
                m.d.sync += [s1_run[k].eq(s1_new), s2_run[k].eq(s2_new)]
                with m.If(last1):
                    m.d.sync += [slot_s1[k].eq(s1_new), slot_s2[k].eq(s2_new)]
        with m.If(update & last1):
            m.d.sync += [slot_valid.eq(1), slot_n.eq(n1)]

        # ---- once per row and lane: 2**64 // V, then its square root ----
        div_n = Signal(range(max_dim + 1))
        div_s1 = [Signal(signed(self.s1_width), name=f"div_s1_{k}") for k in range(lanes)]
        root_n = Signal(range(max_dim + 1))
        root_s1 = [Signal(signed(self.s1_width), name=f"root_s1_{k}") for k in range(lanes)]
        for k in range(lanes):
            variance = slot_n * slot_s2[k] - slot_s1[k] * slot_s1[k] + self.eps_term
            m.d.comb += [
                dividers[k].i.valid.eq(slot_valid),
                dividers[k].i.payload.dividend.eq(1 << (2 * RSQRT_BITS)),
                dividers[k].i.payload.divisor.eq(variance),
                roots[k].i.valid.eq(dividers[k].o.valid),
                roots[k].i.payload.eq(dividers[k].o.payload.quotient),
                dividers[k].o.ready.eq(roots[k].i.ready),
            ]
        with m.If(slot_valid & dividers[0].i.ready):
            m.d.sync += [slot_valid.eq(0), div_n.eq(slot_n)]
            m.d.sync += [div_s1[k].eq(slot_s1[k]) for k in range(lanes)]
        with m.If(dividers[0].o.valid & roots[0].i.ready):
            m.d.sync += root_n.eq(div_n)
            m.d.sync += [root_s1[k].eq(div_s1[k]) for k in range(lanes)]

        # ---- pass 2: n*x - S1, times R, affine, round, saturate ----
        active = Signal()
        j = Signal(range(max_dim))
        n2 = Signal(range(max_dim + 1))
        rd_base = Signal(range(depth))
        s1_2 = [Signal(signed(self.s1_width), name=f"s1_2_{k}") for k in range(lanes)]
        r2 = [Signal(r_width, name=f"r2_{k}") for k in range(lanes)]

        advance2 = Signal()
        issue = Signal()
        issue_last = Signal()
        load = Signal()
        m.d.comb += [
            advance2.eq(~self.o.valid | self.o.ready),
            issue.eq(active & advance2),
            issue_last.eq(issue & (j == n2 - 1)),
            load.eq(roots[0].o.valid & (~active | issue_last)),
            held_dec.eq(issue_last),
            row_rd.addr.eq(rd_base + j),
            row_rd.en.eq(advance2),
            gamma_rd.addr.eq(j),
            gamma_rd.en.eq(advance2),
            beta_rd.addr.eq(j),
            beta_rd.en.eq(advance2),
        ]
        for root in roots:
            m.d.comb += root.o.ready.eq(load)
        with m.If(issue):
            m.d.sync += j.eq(j + 1)
        with m.If(issue_last):
            m.d.sync += [
                active.eq(0),
                j.eq(0),
                rd_base.eq(Mux(rd_base == depth - max_dim, 0, rd_base + max_dim)),
            ]
        with m.If(load):
            m.d.sync += [active.eq(1), j.eq(0), n2.eq(root_n)]
            for k in range(lanes):
                m.d.sync += [s1_2[k].eq(root_s1[k]), r2[k].eq(roots[k].o.payload)]

        # The row's statistics travel with each element: the next row's may load while the
        # previous row's last elements are still in flight.
        va, vb, vc, vd = Signal(), Signal(), Signal(), Signal()
        lasta, lastb, lastc, lastd = Signal(), Signal(), Signal(), Signal()
        na = Signal(range(max_dim + 1))
        gamma_b, gamma_c = Signal(signed(GAMMA_BITS)), Signal(signed(GAMMA_BITS))
        beta_b, beta_c = Signal(signed(BETA_BITS)), Signal(signed(BETA_BITS))
        with m.If(advance2):
            m.d.sync += [
                va.eq(issue), lasta.eq(j == n2 - 1), na.eq(n2),
                vb.eq(va), lastb.eq(lasta), gamma_b.eq(gamma_rd.data), beta_b.eq(beta_rd.data),
                vc.eq(vb), lastc.eq(lastb), gamma_c.eq(gamma_b), beta_c.eq(beta_b),
                vd.eq(vc), lastd.eq(lastc),
                self.o.valid.eq(vd), self.o.payload.last.eq(lastd),
            ]
        for k in range(lanes):
            s1_a = Signal(signed(self.s1_width), name=f"s1_a{k}")
            r_a = Signal(r_width, name=f"r_a{k}")
            d_b = Signal(signed(self.s1_width + 1), name=f"d_b{k}")
            r_b = Signal(r_width, name=f"r_b{k}")
            z_c = Signal(signed(self.z_width), name=f"z_c{k}")
            w_d = Signal(signed(max(self.z_width + GAMMA_BITS, BETA_BITS) + 1), name=f"w_d{k}")
            with m.If(advance2):
                m.d.sync += [
                    s1_a.eq(s1_2[k]), r_a.eq(r2[k]),
                    d_b.eq(na * row_rd.data[k] - s1_a), r_b.eq(r_a),
                    z_c.eq(rshift_round(d_b * r_b, RSQRT_BITS - Z_FRAC)),
                    w_d.eq(z_c * gamma_c + beta_c),
                    # Shifting by the constant first needs no adder for Z_FRAC + affine_shift.
                    self.o.payload.y[k].eq(halve_round_saturate(
                        ((w_d << 1) >> Z_FRAC) >> self.affine_shift, ACT_BITS)),
                ]
        return m
