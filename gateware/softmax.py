"""Online-normaliser softmax over token lanes, the twin of ``golden/softmax.py``."""

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.softmax import EXP_FRAC, EXP_IN_FRAC, EXP_LUT, MAX_ROW_LEN, RCP_BITS, _MAX_SHIFT

from .fixedpoint import rshift_round
from .lanes import lane_layout
from .row_bank import RowBank, TwoPassTiming
from .seq_divider import SeqDivider

__all__ = ["Softmax"]

#: The integer part of an exp shift is clamped here, exactly as ``golden.softmax._split`` does.
_MAX_Q = _MAX_SHIFT - EXP_FRAC
#: Width of a log2-domain input and of a distance between two of them.
_IN_BITS = 16
_DIST_BITS = _IN_BITS + 1
#: ``rcp = 2**RCP_BITS // S`` with ``S >= 2**EXP_FRAC`` (the row maximum contributes 1.0).
_RCP_BITS_WIDTH = RCP_BITS - EXP_FRAC + 1
#: Cycles an element whose update rescales the running sum spends in the statistics stage: the
#: rescale ``S * t`` is a registered product (the DSP's pipeline register), so that update
#: spans two cycles; an element that only adds to the sum takes one.
_RESCALE_CYCLES = 2


class Softmax(TwoPassTiming, wiring.Component):
    """Softmax of ``lanes`` rows in lockstep, bit-exact with ``golden.softmax.softmax``.

    Each lane carries one row (one token's scores, or one token's gate logits); element ``j`` of
    every lane arrives in the same transfer, in increasing ``j``. Pass 1 keeps the running max and
    running sum per lane as ``golden.softmax.softmax_stats`` does (arrival order is element order)
    and stores the row in a row buffer; a sequential divider forms ``rcp = 2**RCP_BITS // S`` per
    lane; pass 2 streams the row again from the buffer and emits ``softmax_normalise``'s
    probabilities in the same order.

    Pass 1's recurrence through the running sum is one add when the element is not a new maximum
    (``S + 2**(u - m)``) and a registered product when it is (``S * 2**(m_old - m_new)``). An
    element therefore spends one cycle in the statistics stage, or two when it is a new maximum
    in any lane (strictly above the lane's running maximum, not the row's first element): the
    unit runs at the input's rate on the many elements that only add, and the product never sits
    inside a one-cycle loop. With ``fixed_period`` every element takes the two cycles, so the
    timing does not depend on the data (the router paces its input to that rate).

    Parameters
    ----------
    lanes : int
        Token lanes processed in parallel.
    max_len : int
        Longest row (``1 .. golden.softmax.MAX_ROW_LEN``); sizes the row buffer and the sum.
    out_frac : int
        Fractional bits of the output (attention uses 8, the gate 15); 1.0 is ``2**out_frac``.
    banks : int
        Rows the buffer holds. With 2, pass 1 of row ``k + 1`` overlaps pass 2 of row ``k``.
    fixed_period : bool
        Every element spends two cycles in pass 1's stage, new maximum or not.

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
        when the divider and pass 2 are free and ``o`` is ready, the last element not a new
        maximum: ``divider.latency + 9`` (35; 36 with ``fixed_period``; one more when the last
        element is a new maximum). Pass 1 adds 3 of them (input register with the running
        maximum, exp table and product, sum), the divider hand-offs 3, pass 2's
        distance-exp-multiply pipe 3.
    read_latency : int
        4: clock edges from pass 2 reading an element from the row buffer to its ``o`` transfer
        (``o`` ready).
    input_period : int
        Cycles per element of a row in which no element after the first is a new maximum: 1
        (2 with ``fixed_period``).

    Timing: ``i`` accepts one element per cycle, and stalls one cycle for each element that is a
    new maximum in some lane (with ``fixed_period``: one element per 2 cycles in steady state;
    the input register takes one more ahead). Beyond that it stalls only when a row starts while
    ``banks`` rows are held (in pass 1, awaiting or in the divider, or in pass 2), or while a
    row's last element finds the divider's input slot still occupied. Pass 2 issues one element
    per cycle while ``o`` is ready, and the next row's first element on the cycle after the
    previous row's last when its reciprocal is ready. A lone row group of ``n`` elements, none
    a new maximum after the first, with ``o`` always ready spans ``2 * n + latency - 1`` cycles
    from first input to last output. The divider, one per lane, takes ``divider_period`` (28)
    cycles per row. Steady state for such rows back to back with ``o`` always ready:
    ``steady_period(n)`` (``TwoPassTiming``).
    """

    def __init__(self, lanes, max_len, out_frac, banks=2, *, fixed_period=False):
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
        self.fixed_period = fixed_period
        # Each element adds at most 1.0 (rescaling never grows the sum), so S <= n * 2**EXP_FRAC.
        self.sum_width = (max_len << EXP_FRAC).bit_length()
        self.divider_period = _RCP_BITS_WIDTH + 2
        self.input_period = _RESCALE_CYCLES if fixed_period else 1
        self.latency = _RCP_BITS_WIDTH + 8 + self.input_period
        self.read_latency = 4
        self.input_register = 1
        super().__init__({
            "i": In(stream.Signature(lane_layout(lanes, signed(_IN_BITS), "u"))),
            "o": Out(stream.Signature(lane_layout(lanes, unsigned(out_frac + 1), "p"))),
        })

    def elaborate(self, platform):
        m = Module()
        lanes, x = self.lanes, signed(_IN_BITS)
        m.submodules.rows = bank = RowBank(
            lanes, ("u", x), self.max_len, self.banks,
            stats={"m": x, "s": unsigned(self.sum_width)}, tag={"m": x, "rcp": unsigned(_RCP_BITS_WIDTH)})
        m.submodules.exp_lut = exp_lut = memory.Memory(
            shape=unsigned(EXP_FRAC + 1), depth=len(EXP_LUT), init=[int(v) for v in EXP_LUT])
        # Pass 1 reads the table from a registered index, combinationally: the running maximum's
        # carry chain, the index select and the table's LUTs in one cycle made the board top's
        # deepest path (13 levels); they are a cycle each side of the input register.
        self._stats(m, bank, [exp_lut.read_port(domain="comb") for _ in range(lanes)])
        self._reciprocal(m, bank)
        self._normalise(m, bank, [exp_lut.read_port() for _ in range(lanes)])
        return m

    def _input(self, m, bank):
        """Pass 1's input register: the element, its lanes' running maximum, new-maximum flags and
        exp-table distance, a cycle ahead of the bank's stage. Returns the register's per-lane
        fields and ``slow``: the element is a new maximum in some lane."""
        p = self.i.payload
        valid_in, open_in, last_in, slow_in = Signal(), Signal(), Signal(), Signal()
        u_in = Signal.like(p.u)
        accept = Signal()
        m.d.comb += [
            self.i.ready.eq(~valid_in | bank.i.ready),
            accept.eq(self.i.valid & self.i.ready),
            bank.i.valid.eq(valid_in),
            bank.i.payload.u.eq(u_in),
            bank.i.payload.last.eq(last_in),
        ]
        with m.If(accept):
            m.d.sync += [valid_in.eq(1), u_in.eq(p.u), last_in.eq(p.last), open_in.eq(~p.last)]
        with m.Elif(bank.i.ready):
            m.d.sync += valid_in.eq(0)
        lanes, is_new = [], []
        for k in range(self.lanes):
            x = p.u[k]
            m_run = Signal(signed(_IN_BITS), name=f"m_run{k}")
            new = Signal(name=f"is_new{k}")
            dist = Signal(_DIST_BITS, name=f"dist{k}")
            # Both differences at once, the new-maximum test read off the sign of one of them:
            # one carry chain deep, not a comparison followed by a subtraction.
            up = Signal(signed(_DIST_BITS), name=f"up{k}")
            down = Signal(signed(_DIST_BITS), name=f"down{k}")
            m.d.comb += [
                up.eq(x - m_run),
                down.eq(m_run - x),
                new.eq(open_in & down[-1]),
                dist.eq(Mux(open_in, Mux(down[-1], up, down), 0)),
            ]
            is_new.append(new)
            lane = SimpleNamespace(
                newmax=Signal(name=f"newmax_in{k}"), index=Signal(EXP_IN_FRAC, name=f"index_in{k}"),
                # The shift's integer part goes on unclamped; the clamp is taken at the stage.
                dist_hi=Signal(_DIST_BITS - EXP_IN_FRAC, name=f"dist_hi_in{k}"),
                m=Signal(signed(_IN_BITS), name=f"m_in{k}"))
            with m.If(accept):
                m.d.sync += [
                    m_run.eq(Mux(open_in & ~new, m_run, x)),
                    lane.m.eq(Mux(open_in & ~new, m_run, x)),
                    lane.newmax.eq(new),
                    lane.dist_hi.eq(dist[EXP_IN_FRAC:]),
                    lane.index.eq(dist[:EXP_IN_FRAC]),
                ]
            lanes.append(lane)
        with m.If(accept):
            m.d.sync += slow_in.eq(Cat(*is_new).any())
        return lanes, slow_in

    def _stats(self, m, bank, luts):
        """Pass 1: the running max into an input register (``_input``), with the exp table's
        index; the table and its products as the element enters the bank's stage; the
        running-sum update there, one cycle for an add, two for a rescale (``S * t`` into a
        product register on the first, the rounded shift, add and select back into ``S`` on the
        second)."""
        stage = bank.stage
        inputs, slow_in = self._input(m, bank)
        # The element in the stage rescales in some lane (or every element takes two cycles):
        # it stays a second cycle, ``second``, while the product register fills.
        slow, second, hold = Signal(), Signal(), Signal()
        m.d.comb += [hold.eq(stage.valid & ~second & (slow | self.fixed_period)), bank.hold.eq(hold)]
        with m.If(stage.advance):
            m.d.sync += [second.eq(0), slow.eq(slow_in)]
        with m.Elif(hold):
            m.d.sync += second.eq(1)
        assert _MAX_Q > EXP_FRAC + 2      # the clamp of q' below is one compare
        for k, lane in enumerate(inputs):
            m.d.comb += luts[k].addr.eq(lane.index)
            t = luts[k].data
            # The stage's registers are written as an element enters it and stay for its cycles
            # there: the table entry t, the clamped shift q, the maximum, and 2t >> q' with q'
            # the shift clamped to 17 (t <= 2**EXP_FRAC, so 2t >> 17 is 0; 17 < _MAX_Q, so that
            # clamp is one compare of the distance). That shift is a product, t * 2**(17 - q')
            # >> 16 exactly, so the table feeds a DSP and no shifter: a shifter behind the
            # table, or in front of the add, made paths of 9 levels.
            t_s = Signal(EXP_FRAC + 1, name=f"t_s{k}")
            q_s = Signal(range(_MAX_Q + 1), name=f"q_s{k}")
            newmax_s = Signal(name=f"newmax_s{k}")
            m_s = Signal(signed(_IN_BITS), name=f"m_s{k}")
            pow_t = Signal(EXP_FRAC + 3, name=f"pow_t{k}")
            m.d.comb += pow_t.eq(Mux(lane.dist_hi > EXP_FRAC + 2, 1,
                                     Const(1, 1) << (EXP_FRAC + 2 - lane.dist_hi[:5]).as_unsigned()))
            t_scaled = Signal(2 * EXP_FRAC + 4, name=f"t_scaled{k}")
            with m.If(stage.advance):
                m.d.sync += [t_s.eq(t), q_s.eq(_clamp_q(lane.dist_hi)), newmax_s.eq(lane.newmax),
                             m_s.eq(lane.m), t_scaled.eq(t * pow_t)]
            # S * t, free-running so that it maps onto the DSP's pipeline register: both operands
            # are steady while the element is in the stage (S is written only by its update).
            s_run = Signal(self.sum_width, name=f"s_run{k}")
            prod = Signal(self.sum_width + EXP_FRAC + 1, name=f"prod{k}")
            m.d.sync += prod.eq(s_run * t_s)
            t_half = t_scaled[EXP_FRAC + 1:]
            # Both branches of golden's update, each rshift_round written as (twice the value,
            # shifted, + 1) >> 1 with the other term folded into that one add: one carry chain,
            # not two or three. A lane that only adds does so on the element's first cycle; a
            # rescaling lane on its second, from the product of the first.
            added = (Cat(Const(1, 1), s_run) + t_half) >> 1
            prod_half = ((prod << 1) >> EXP_FRAC) >> q_s
            rescaled = (prod_half + (1 + (1 << (EXP_FRAC + 1)))) >> 1
            s_new = Signal(self.sum_width, name=f"s_new{k}")
            m.d.comb += [
                s_new.eq(Mux(stage.first, 1 << EXP_FRAC,
                             Mux(second, Mux(newmax_s, rescaled, s_run), added))),
                bank.stats.s[k].eq(s_new),
                bank.stats.m[k].eq(m_s),
            ]
            with m.If(stage.update | hold & ~newmax_s):
                m.d.sync += s_run.eq(s_new)

    def _reciprocal(self, m, bank):
        """Once per row: ``rcp = 2**RCP_BITS // S`` in every lane, all dividers in lockstep."""
        rows, start = bank.rows, bank.start
        dividers = [SeqDivider(RCP_BITS + 1, self.sum_width, _RCP_BITS_WIDTH)
                    for _ in range(self.lanes)]
        for k, div in enumerate(dividers):
            m.submodules[f"divider{k}"] = div
            m.d.comb += [
                div.i.valid.eq(rows.valid),
                div.i.payload.dividend.eq(1 << RCP_BITS),
                div.i.payload.divisor.eq(rows.payload.stats.s[k]),
                start.payload.tag.rcp[k].eq(div.o.payload.quotient),
                div.o.ready.eq(start.valid & start.ready),
            ]
        m.d.comb += [rows.ready.eq(dividers[0].i.ready), start.valid.eq(dividers[0].o.valid)]
        # The row's length and maximum travel beside the divider.
        with m.If(rows.valid & rows.ready):
            m.d.sync += [start.payload.n.eq(rows.payload.n),
                         start.payload.tag.m.eq(rows.payload.stats.m)]

    def _normalise(self, m, bank, luts):
        """Pass 2: the distance to the max, exp, times rcp, round: 3 stages after the read."""
        r = bank.o
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), r.ready.eq(advance)]
        va, lasta, vb, lastb = Signal(), Signal(), Signal(), Signal()
        with m.If(advance):
            m.d.sync += [
                va.eq(r.valid), lasta.eq(r.payload.last),
                vb.eq(va), lastb.eq(lasta),
                self.o.valid.eq(vb), self.o.payload.last.eq(lastb),
            ]
        for k in range(self.lanes):
            # The distance is registered before the exp table: the row buffer's read, a carry
            # chain and the table's LUT tree in one cycle were the unit's deepest path.
            dist = Signal(_DIST_BITS, name=f"dist2_{k}")
            rcpa = Signal(_RCP_BITS_WIDTH, name=f"rcpa{k}")
            qb = Signal(range(_MAX_Q + 1), name=f"qb{k}")
            rcpb = Signal(_RCP_BITS_WIDTH, name=f"rcpb{k}")
            e = rshift_round(luts[k].data, qb)
            m.d.comb += [
                luts[k].addr.eq(dist[:EXP_IN_FRAC]),
                luts[k].en.eq(advance),
            ]
            with m.If(advance):
                m.d.sync += [
                    dist.eq(r.payload.tag.m[k] - r.payload.u[k]), rcpa.eq(r.payload.tag.rcp[k]),
                    qb.eq(_clamp_q(dist[EXP_IN_FRAC:])), rcpb.eq(rcpa),
                    self.o.payload.p[k].eq(rshift_round(e * rcpb, RCP_BITS - self.out_frac)),
                ]


def _clamp_q(hi):
    """A distance's integer part ``hi`` as an exp shift, clamped as ``golden.softmax._split``
    does."""
    return Mux(hi > _MAX_Q, _MAX_Q, hi)
