"""Online-normaliser softmax over token lanes, the twin of ``golden/softmax.py``."""

from fractions import Fraction

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.softmax import EXP_FRAC, EXP_IN_FRAC, EXP_LUT, MAX_ROW_LEN, RCP_BITS, _MAX_SHIFT

from .fixedpoint import rshift_round
from .seq_divider import SeqDivider

__all__ = ["Softmax"]

#: The integer part of an exp shift is clamped here, exactly as ``golden.softmax._split`` does.
_MAX_Q = _MAX_SHIFT - EXP_FRAC
#: Width of a log2-domain input and of a distance between two of them.
_IN_BITS = 16
_DIST_BITS = _IN_BITS + 1
#: ``rcp = 2**RCP_BITS // S`` with ``S >= 2**EXP_FRAC`` (the row maximum contributes 1.0).
_RCP_BITS_WIDTH = RCP_BITS - EXP_FRAC + 1


class Softmax(wiring.Component):
    """Softmax of ``lanes`` rows in lockstep, bit-exact with ``golden.softmax.softmax``.

    Each lane carries one row (one token's scores, or one token's gate logits); element ``j`` of
    every lane arrives in the same transfer, in increasing ``j``. Pass 1 keeps the running max and
    running sum per lane as ``golden.softmax.softmax_stats`` does (arrival order is element order)
    and stores the row in a row buffer; a sequential divider forms ``rcp = 2**RCP_BITS // S`` per
    lane; pass 2 streams the row again from the buffer and emits ``softmax_normalise``'s
    probabilities in the same order.

    Parameters
    ----------
    lanes : int
        Token lanes processed in parallel.
    max_len : int
        Longest row (``1 .. golden.softmax.MAX_ROW_LEN``); sizes the row buffer and the sum.
    out_frac : int
        Fractional bits of the output (attention uses 8, the gate 15); 1.0 is ``2**out_frac``.
    banks : int
        Rows the buffer holds. With 2, pass 1 of row ``k + 1`` overlaps pass 2 of row ``k``;
        with 3, rows of 29 or more elements stream back to back (see ``steady_period``).

    Attributes
    ----------
    i : In(stream.Signature(StructLayout({"u": ArrayLayout(signed(16), lanes), "last": 1})))
        Log2-domain inputs with ``EXP_IN_FRAC`` fractional bits; ``last`` marks a row's final
        element. Rows longer than ``max_len`` are not allowed.
    o : Out(stream.Signature(StructLayout({"p": ArrayLayout(unsigned(out_frac + 1), lanes),
        "last": 1})))
        Probabilities, one transfer per input element, same order, ``last`` on the row's final one.
    divider_period : int
        Cycles per row of the reciprocal divider: ``RCP_BITS - EXP_FRAC + 3`` (28).
    latency : int
        Clock edges from the transfer of a row's last input to the transfer of its first output
        when the divider and pass 2 are free and ``o`` is ready: ``divider.latency + 7`` (33).
        Pass 1 adds 2 of them, the divider hand-offs 3, pass 2's read-exp-multiply pipe 2.
    read_latency : int
        3: clock edges from pass 2 reading an element from the row buffer to its ``o`` transfer
        (``o`` ready).

    Timing: ``i`` accepts one element per cycle; it stalls only when a row starts while ``banks``
    rows are held (in pass 1, awaiting or in the divider, or in pass 2), or for one cycle when
    a row's last element finds the divider's input slot still occupied. Pass 2 issues one element
    per cycle while ``o`` is ready, and the next row's first element on the cycle after the
    previous row's last when its reciprocal is ready. A lone row group of ``n`` elements with
    ``o`` always ready thus spans ``2 * n + latency - 1`` cycles from first input to last output.
    The divider, one per lane, takes ``divider_period`` (28) cycles per row, which bounds the
    row rate for short rows (the gate's 16 experts). Steady state with back-to-back rows and ``o``
    always ready: see ``steady_period``.
    """

    def __init__(self, lanes, max_len, out_frac, banks=2):
        if not 1 <= max_len <= MAX_ROW_LEN:
            raise ValueError(f"max_len must lie in [1, {MAX_ROW_LEN}]")
        if not 1 <= out_frac <= RCP_BITS - EXP_FRAC:
            raise ValueError(f"out_frac must lie in [1, {RCP_BITS - EXP_FRAC}]")
        if lanes < 1 or banks < 1:
            raise ValueError("lanes and banks must be positive")
        self.lanes = lanes
        self.max_len = max_len
        self.out_frac = out_frac
        self.banks = banks
        # Each element adds at most 1.0 (rescaling never grows the sum), so S <= n * 2**EXP_FRAC.
        self.sum_width = (max_len << EXP_FRAC).bit_length()
        self.divider_period = _RCP_BITS_WIDTH + 2
        self.latency = _RCP_BITS_WIDTH + 7
        self.read_latency = 3
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "u": data.ArrayLayout(signed(_IN_BITS), lanes),
                "last": 1,
            }))),
            "o": Out(stream.Signature(data.StructLayout({
                "p": data.ArrayLayout(unsigned(out_frac + 1), lanes),
                "last": 1,
            }))),
        })

    def steady_period(self, n):
        """Average cycles per row group for back-to-back rows of ``n`` elements, ``o`` ready.

        The largest of three limits: the input (``n``), the per-row divider
        (``divider_period``), and the row buffer: a bank is held from a row's first input until
        pass 2 has read its last element, ``2 * n + latency - read_latency - 1`` cycles
        (``2 * n + 29``), so ``banks`` banks hold at most ``banks`` rows per that time. Exact (as the
        sum of any ``banks`` consecutive row periods) when one limit dominates.
        """
        held = 2 * n + self.latency - self.read_latency - 1
        return max(Fraction(n), Fraction(self.divider_period), Fraction(held, self.banks))

    def elaborate(self, platform):
        m = Module()
        lanes, max_len, banks = self.lanes, self.max_len, self.banks
        depth = banks * max_len

        m.submodules.rows = rows = memory.Memory(
            shape=data.ArrayLayout(signed(_IN_BITS), lanes), depth=depth, init=[])
        row_wr = rows.write_port()
        row_rd = rows.read_port()
        m.submodules.exp_lut = exp_lut = memory.Memory(
            shape=unsigned(EXP_FRAC + 1), depth=len(EXP_LUT), init=[int(v) for v in EXP_LUT])
        lut1 = [exp_lut.read_port() for _ in range(lanes)]
        lut2 = [exp_lut.read_port() for _ in range(lanes)]
        dividers = [SeqDivider(RCP_BITS + 1, self.sum_width, _RCP_BITS_WIDTH)
                    for _ in range(lanes)]
        for k, div in enumerate(dividers):
            m.submodules[f"divider{k}"] = div

        def clamp_q(dist):
            return Mux(dist[EXP_IN_FRAC:] > _MAX_Q, _MAX_Q, dist[EXP_IN_FRAC:])

        # Rows held in the buffer: counted from a row's first input to pass 2 issuing its last.
        held = Signal(range(banks + 1))
        held_inc = Signal()
        held_dec = Signal()
        m.d.sync += held.eq(held + held_inc - held_dec)

        # ---- pass 1: running max at the input, LUT read, then the running-sum update ----
        row_open = Signal()
        idx = Signal(range(max_len))
        wr_base = Signal(range(depth))
        m_run = [Signal(signed(_IN_BITS), name=f"m_run{k}") for k in range(lanes)]

        v1 = Signal()
        first1 = Signal()
        last1 = Signal()
        n1 = Signal(range(max_len + 1))
        newmax1 = [Signal(name=f"newmax1_{k}") for k in range(lanes)]
        q1 = [Signal(range(_MAX_Q + 1), name=f"q1_{k}") for k in range(lanes)]
        m1 = [Signal(signed(_IN_BITS), name=f"m1_{k}") for k in range(lanes)]
        s_run = [Signal(self.sum_width, name=f"s_run{k}") for k in range(lanes)]

        slot_valid = Signal()
        slot_n = Signal(range(max_len + 1))
        slot_m = [Signal(signed(_IN_BITS), name=f"slot_m{k}") for k in range(lanes)]
        slot_s = [Signal(self.sum_width, name=f"slot_s{k}") for k in range(lanes)]

        advance1 = Signal()
        accept = Signal()
        m.d.comb += [
            advance1.eq(~(v1 & last1 & slot_valid)),
            self.i.ready.eq(advance1 & (row_open | (held < banks))),
            accept.eq(self.i.valid & self.i.ready),
            held_inc.eq(accept & ~row_open),
            row_wr.addr.eq(wr_base + idx),
            row_wr.data.eq(self.i.payload.u),
            row_wr.en.eq(accept),
        ]
        for k in range(lanes):
            x = self.i.payload.u[k]
            is_new = Signal(name=f"is_new{k}")
            dist = Signal(_DIST_BITS, name=f"dist{k}")
            m.d.comb += [
                is_new.eq(row_open & (x > m_run[k])),
                dist.eq(Mux(row_open, Mux(is_new, x - m_run[k], m_run[k] - x), 0)),
                lut1[k].addr.eq(dist[:EXP_IN_FRAC]),
                lut1[k].en.eq(advance1),
            ]
            with m.If(accept):
                m.d.sync += [
                    m_run[k].eq(Mux(row_open & ~is_new, m_run[k], x)),
                    m1[k].eq(Mux(row_open & ~is_new, m_run[k], x)),
                    newmax1[k].eq(is_new),
                    q1[k].eq(clamp_q(dist)),
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
            with m.If(self.i.payload.last):
                m.d.sync += wr_base.eq(Mux(wr_base == depth - max_len, 0, wr_base + max_len))

        update = v1 & advance1
        for k in range(lanes):
            t = lut1[k].data
            # Both branches of golden's update, then the same select on a new maximum. Each is
            # rshift_round written as (twice the value, shifted, + 1) >> 1 with the other term
            # folded into that one add: one carry chain after the shifter, not two or three.
            t_half = (t << 1) >> q1[k]
            added = (Cat(Const(1, 1), s_run[k]) + t_half) >> 1
            prod_half = (((s_run[k] * t) << 1) >> EXP_FRAC) >> q1[k]
            rescaled = (prod_half + (1 + (1 << (EXP_FRAC + 1)))) >> 1
            s_new = Signal(self.sum_width, name=f"s_new{k}")
            m.d.comb += s_new.eq(Mux(first1, 1 << EXP_FRAC, Mux(newmax1[k], rescaled, added)))
            with m.If(update):
                m.d.sync += s_run[k].eq(s_new)
                with m.If(last1):
                    m.d.sync += [slot_s[k].eq(s_new), slot_m[k].eq(m1[k])]
        with m.If(update & last1):
            m.d.sync += [slot_valid.eq(1), slot_n.eq(n1)]

        # ---- once per row: rcp = 2**RCP_BITS // S in every lane, all dividers in lockstep ----
        div_m = [Signal(signed(_IN_BITS), name=f"div_m{k}") for k in range(lanes)]
        div_n = Signal(range(max_len + 1))
        div_start = slot_valid & dividers[0].i.ready
        for k, div in enumerate(dividers):
            m.d.comb += [
                div.i.valid.eq(slot_valid),
                div.i.payload.dividend.eq(1 << RCP_BITS),
                div.i.payload.divisor.eq(slot_s[k]),
            ]
        with m.If(div_start):
            m.d.sync += [slot_valid.eq(0), div_n.eq(slot_n)]
            m.d.sync += [div_m[k].eq(slot_m[k]) for k in range(lanes)]

        # ---- pass 2: read back, exp of the distance to the max, times rcp, round ----
        active = Signal()
        j = Signal(range(max_len))
        n2 = Signal(range(max_len + 1))
        rd_base = Signal(range(depth))
        m2 = [Signal(signed(_IN_BITS), name=f"m2_{k}") for k in range(lanes)]
        rcp2 = [Signal(_RCP_BITS_WIDTH, name=f"rcp2_{k}") for k in range(lanes)]

        advance2 = Signal()
        issue = Signal()
        issue_last = Signal()
        load = Signal()
        m.d.comb += [
            advance2.eq(~self.o.valid | self.o.ready),
            issue.eq(active & advance2),
            issue_last.eq(issue & (j == n2 - 1)),
            load.eq(dividers[0].o.valid & (~active | issue_last)),
            held_dec.eq(issue_last),
            row_rd.addr.eq(rd_base + j),
            row_rd.en.eq(advance2),
        ]
        for div in dividers:
            m.d.comb += div.o.ready.eq(load)
        with m.If(issue):
            m.d.sync += j.eq(j + 1)
        with m.If(issue_last):
            m.d.sync += [
                active.eq(0),
                j.eq(0),
                rd_base.eq(Mux(rd_base == depth - max_len, 0, rd_base + max_len)),
            ]
        with m.If(load):
            m.d.sync += [active.eq(1), j.eq(0), n2.eq(div_n)]
            for k, div in enumerate(dividers):
                m.d.sync += [m2[k].eq(div_m[k]), rcp2[k].eq(div.o.payload.quotient)]

        # The row's statistics travel with each element: the next row's may load while the
        # previous row's last elements are still in flight.
        va = Signal()
        lasta = Signal()
        ma = [Signal(signed(_IN_BITS), name=f"ma{k}") for k in range(lanes)]
        rcpa = [Signal(_RCP_BITS_WIDTH, name=f"rcpa{k}") for k in range(lanes)]
        vb = Signal()
        lastb = Signal()
        qb = [Signal(range(_MAX_Q + 1), name=f"qb{k}") for k in range(lanes)]
        rcpb = [Signal(_RCP_BITS_WIDTH, name=f"rcpb{k}") for k in range(lanes)]

        with m.If(advance2):
            m.d.sync += [
                va.eq(issue), lasta.eq(j == n2 - 1),
                vb.eq(va), lastb.eq(lasta),
                self.o.valid.eq(vb), self.o.payload.last.eq(lastb),
            ]
        for k in range(lanes):
            dist = Signal(_DIST_BITS, name=f"dist2_{k}")
            e = rshift_round(lut2[k].data, qb[k])
            m.d.comb += [
                dist.eq(ma[k] - row_rd.data[k]),
                lut2[k].addr.eq(dist[:EXP_IN_FRAC]),
                lut2[k].en.eq(advance2),
            ]
            with m.If(advance2):
                m.d.sync += [
                    ma[k].eq(m2[k]), rcpa[k].eq(rcp2[k]),
                    qb[k].eq(clamp_q(dist)), rcpb[k].eq(rcpa[k]),
                    self.o.payload.p[k].eq(rshift_round(e * rcpb[k], RCP_BITS - self.out_frac)),
                ]
        return m
