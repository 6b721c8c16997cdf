"""Online-normaliser softmax over token lanes, the twin of ``golden/softmax.py``."""

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
#: Cycles per element in pass 1: the running sum's rescale ``S * t`` is a registered product
#: (the DSP's pipeline register), so the recurrence through ``S`` spans two cycles.
_PASS1_PERIOD = 2


class Softmax(TwoPassTiming, wiring.Component):
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
        Rows the buffer holds. With 2, pass 1 of row ``k + 1`` overlaps pass 2 of row ``k``, and
        rows of 29 or more elements stream back to back at the input's rate; with 3, rows of 14
        or more (see ``steady_period``).

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
        when the divider and pass 2 are free and ``o`` is ready: ``divider.latency + 9`` (35).
        Pass 1 adds 3 of them (exp table read, product, sum), the divider hand-offs 3, pass 2's
        distance-exp-multiply pipe 3.
    read_latency : int
        4: clock edges from pass 2 reading an element from the row buffer to its ``o`` transfer
        (``o`` ready).
    input_period : int
        2: ``i`` accepts one element every other cycle (``ready`` is low on the cycle after each
        transfer), the time pass 1's running-sum update takes with its product registered.

    Timing: ``i`` accepts one element per ``input_period`` (2) cycles; beyond that it stalls only
    when a row starts while ``banks`` rows are held (in pass 1, awaiting or in the divider, or in
    pass 2), or while a row's last element finds the divider's input slot still occupied. Pass 2
    issues one element per cycle while ``o`` is ready, and the next row's first element on the
    cycle after the previous row's last when its reciprocal is ready. A lone row group of ``n``
    elements with ``o`` always ready thus spans ``3 * n + latency - 2`` cycles from first input
    to last output (its inputs span ``input_span(n) = 2 * n - 1`` cycles). The divider, one per lane,
    takes ``divider_period`` (28) cycles per row. Steady state with back-to-back rows and ``o``
    always ready: ``steady_period(n)`` (``TwoPassTiming``: ``2 * n`` for the input, 28 for the
    divider, or a bank's hold of ``3 * n + 29`` cycles over ``banks``).
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
        self.input_period = _PASS1_PERIOD
        self.latency = _RCP_BITS_WIDTH + 7 + _PASS1_PERIOD
        self.read_latency = 4
        super().__init__({
            "i": In(stream.Signature(lane_layout(lanes, signed(_IN_BITS), "u"))),
            "o": Out(stream.Signature(lane_layout(lanes, unsigned(out_frac + 1), "p"))),
        })

    def elaborate(self, platform):
        m = Module()
        lanes, x = self.lanes, signed(_IN_BITS)
        m.submodules.rows = bank = RowBank(
            lanes, ("u", x), self.max_len, self.banks,
            stats={"m": x, "s": unsigned(self.sum_width)}, tag={"m": x, "rcp": unsigned(_RCP_BITS_WIDTH)},
            period=_PASS1_PERIOD)
        m.submodules.exp_lut = exp_lut = memory.Memory(
            shape=unsigned(EXP_FRAC + 1), depth=len(EXP_LUT), init=[int(v) for v in EXP_LUT])
        # Pass 1 reads the table from a registered index, combinationally: the running maximum's
        # carry chain, the index select and the table's LUTs in one cycle made the board top's
        # deepest path (13 levels); now they are a cycle each side of the index register.
        self._stats(m, bank, [exp_lut.read_port(domain="comb") for _ in range(lanes)])
        self._reciprocal(m, bank)
        self._normalise(m, bank, [exp_lut.read_port() for _ in range(lanes)])
        return m

    def _stats(self, m, bank, luts):
        """Pass 1: running max at the input, exp table read, then the running-sum update over
        the element's two cycles in the bank's stage: ``S * t`` into a product register on the
        first, the rounded shift, add and select back into ``S`` on the second."""
        p, stage = self.i.payload, bank.stage
        wiring.connect(m, wiring.flipped(self.i), bank.i)
        assert _MAX_Q > EXP_FRAC + 2      # the clamp of q' below is one compare
        for k in range(self.lanes):
            x = p.u[k]
            m_run = Signal(signed(_IN_BITS), name=f"m_run{k}")
            is_new = Signal(name=f"is_new{k}")
            dist = Signal(_DIST_BITS, name=f"dist{k}")
            # Both differences at once, the new-maximum test read off the sign of one of them:
            # one carry chain deep, not a comparison followed by a subtraction.
            up = Signal(signed(_DIST_BITS), name=f"up{k}")
            down = Signal(signed(_DIST_BITS), name=f"down{k}")
            m.d.comb += [
                up.eq(x - m_run),
                down.eq(m_run - x),
                is_new.eq(bank.open & down[-1]),
                dist.eq(Mux(bank.open, Mux(down[-1], up, down), 0)),
            ]
            newmax1 = Signal(name=f"newmax1_{k}")
            # The table index, taken with the element as the sync read port's address was.
            index1 = Signal(EXP_IN_FRAC, name=f"index1_{k}")
            # The shift's integer part goes into the stage unclamped; the clamp is taken there.
            dist_hi1 = Signal(_DIST_BITS - EXP_IN_FRAC, name=f"dist_hi1_{k}")
            m1 = Signal(signed(_IN_BITS), name=f"m1_{k}")
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += [
                    m_run.eq(Mux(bank.open & ~is_new, m_run, x)),
                    m1.eq(Mux(bank.open & ~is_new, m_run, x)),
                    newmax1.eq(is_new),
                    dist_hi1.eq(dist[EXP_IN_FRAC:]),
                    index1.eq(dist[:EXP_IN_FRAC]),
                ]
            m.d.comb += luts[k].addr.eq(index1)
            s_run = Signal(self.sum_width, name=f"s_run{k}")
            t = luts[k].data
            # The stage's first cycle fills three registers, free-running (no enable) so that
            # the products map onto the DSPs' pipeline registers. Their operands are steady for
            # the element's two cycles in the stage (s_run is written only as an element
            # leaves, t and dist_hi1 only as one enters), so on the second cycle they hold
            # S * t, the clamped shift q, and 2t >> q' of this element, q' being q clamped to 17
            # (t <= 2**EXP_FRAC, so 2t >> 17 is 0; 17 < _MAX_Q, so that clamp is one compare of
            # the distance). That shift is a product too, t * 2**(17 - q') >> 16 exactly, so the
            # table feeds a DSP and no shifter: a shifter behind the table, or in front of the
            # second cycle's add, made paths of 9 levels.
            prod = Signal(self.sum_width + EXP_FRAC + 1, name=f"prod{k}")
            q1 = Signal(range(_MAX_Q + 1), name=f"q1_{k}")
            pow_t = Signal(EXP_FRAC + 3, name=f"pow_t{k}")
            m.d.comb += pow_t.eq(Mux(dist_hi1 > EXP_FRAC + 2, 1, Const(1, 1) << (EXP_FRAC + 2 - dist_hi1[:5]).as_unsigned()))
            t_scaled = Signal(2 * EXP_FRAC + 4, name=f"t_scaled1_{k}")
            m.d.sync += [prod.eq(s_run * t), q1.eq(_clamp_q(dist_hi1)), t_scaled.eq(t * pow_t)]
            t_half = t_scaled[EXP_FRAC + 1:]
            # Both branches of golden's update, then the same select on a new maximum. Each is
            # rshift_round written as (twice the value, shifted, + 1) >> 1 with the other term
            # folded into that one add: one carry chain, not two or three.
            added = (Cat(Const(1, 1), s_run) + t_half) >> 1
            prod_half = ((prod << 1) >> EXP_FRAC) >> q1
            rescaled = (prod_half + (1 + (1 << (EXP_FRAC + 1)))) >> 1
            s_new = Signal(self.sum_width, name=f"s_new{k}")
            m.d.comb += [
                s_new.eq(Mux(stage.first, 1 << EXP_FRAC, Mux(newmax1, rescaled, added))),
                bank.stats.s[k].eq(s_new),
                bank.stats.m[k].eq(m1),
            ]
            with m.If(stage.update):
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
