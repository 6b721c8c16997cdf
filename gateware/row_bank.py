"""The row buffer of a two-pass row unit, shared by softmax and LayerNorm."""

from fractions import Fraction

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .lanes import lane_layout

__all__ = ["RowBank", "TwoPassTiming"]


class RowBank(wiring.Component):
    """Holds each row between a unit's pass 1 (statistics) and its pass 2 (the row again).

    A two-pass unit (``Softmax``, ``LayerNorm``) connects its input to ``i``. Every element is
    written to the row's bank, a row per bank, ``banks`` banks used in turn. One cycle after its
    transfer the element is in the unit's *stage* (``stage``) for ``period`` cycles, where the
    unit folds it into the row's running statistics; as the row's last element leaves the
    stage, the unit's ``stats`` are latched with the row's length into a one-row slot, offered
    on ``rows`` (to the unit's per-row divider). Pass 2: the unit hands each row's length and its per-row values (``tag``)
    to ``start``, rows in the order they came; the row is read back in element order, one
    element per cycle while ``o.ready``, each with the row's ``n`` and ``tag``. ``o.ready`` is
    the unit's pass-2 pipeline enable: it also enables the memory's read port.

    Parameters
    ----------
    lanes : int
        Rows side by side (token lanes); an element transfer holds one element of each.
    field : str, shape-castable
        The name and shape of one lane's element, as in the unit's input (``"x", signed(16)``).
    max_len : int
        Longest row; each bank holds ``max_len`` elements.
    banks : int
        Rows held at once (a row is held from its first input until its last is read back).
    stats : dict of str to shape-castable
        What pass 1 hands on per row, each field one value per lane.
    tag : dict of str to shape-castable
        What pass 2 carries with every element of a row, each field one value per lane.
    period : int
        Cycles each element spends in the stage (1 by default), so ``i`` takes at most one
        element per ``period`` cycles: a unit whose statistics update needs a registered
        operation (a pipelined multiply) inside its recurrence spreads it over ``period`` cycles.
        ``hold`` lengthens an element's stay where only some elements need that time.

    Attributes
    ----------
    i : In(stream.Signature(StructLayout({field: ArrayLayout(shape, lanes), "last": 1})))
        The row's elements, ``last`` on its final one (at most ``max_len``). Stalls while the
        first element of a row finds ``banks`` rows held, while the stage holds an element in
        its first ``period - 1`` cycles there, and while the stage holds a row's last element
        that the slot cannot take yet.
    open : Out(1)
        A row is open: the element on ``i`` is not its row's first.
    stage : Out(StructLayout({"valid": 1, "advance": 1, "update": 1, "first": 1, "last": 1}))
        The unit's statistics stage. ``valid``: it holds an element. ``advance``: it takes the
        element transferred on ``i`` this cycle (or a bubble); ``update``: the element in it
        leaves this cycle, folded into the row's statistics (its ``period``-th cycle there, or
        later while ``hold`` is high or the slot is full); ``first``/``last``: that element
        starts/ends its row.
    hold : In(1)
        The element in the stage stays there at least one more cycle (the unit's update of
        this element is not finished); low by default.
    stats : In(StructLayout({name: ArrayLayout(shape, lanes) for name, shape in stats}))
        The row's statistics including the element in the stage; latched as its last leaves.
    rows : Out(stream.Signature(StructLayout({"n": range(max_len + 1), "stats": stats})))
        One transfer per row, valid from the edge its last element leaves the stage
        (``period + 1`` edges after its ``i`` transfer when nothing stalls).
    start : In(stream.Signature(StructLayout({"n": range(max_len + 1), "tag": tag})))
        Pass 2 of the oldest row not yet started. Ready while no row is being read, or on the
        cycle the last element of the row being read is read.
    index : Out(range(max_len))
        The element pass 2 reads this cycle (to address the unit's per-element parameters
        with the same enable).
    o : Out(stream.Signature(StructLayout({field: ArrayLayout(shape, lanes), "last": 1,
        "n": range(max_len + 1), "tag": tag})))
        Latency: when ``start`` transfers on edge ``t``, the row's first element is valid from
        edge ``t + 1`` on (``o.ready`` high); then one element per cycle while ``o.ready``.
    """

    def __init__(self, lanes, field, max_len, banks, *, stats, tag, period=1):
        if lanes < 1 or max_len < 1 or banks < 1 or period < 1:
            raise ValueError("lanes, max_len, banks and period must be positive")
        self.field, self.max_len, self.banks, self.period = field[0], max_len, banks, period
        self.shape = data.ArrayLayout(field[1], lanes)
        length = range(max_len + 1)

        def per_lane(fields):
            return data.StructLayout({name: data.ArrayLayout(shape, lanes)
                                      for name, shape in fields.items()})
        stats, tag = per_lane(stats), per_lane(tag)
        super().__init__({
            "i": In(stream.Signature(lane_layout(lanes, field[1], self.field))),
            "open": Out(1),
            "stage": Out(data.StructLayout({"valid": 1, "advance": 1, "update": 1, "first": 1,
                                             "last": 1})),
            "hold": In(1),
            "stats": In(stats),
            "rows": Out(stream.Signature(data.StructLayout({"n": length, "stats": stats}))),
            "start": In(stream.Signature(data.StructLayout({"n": length, "tag": tag}))),
            "index": Out(range(max_len)),
            "o": Out(stream.Signature(data.StructLayout({
                self.field: self.shape, "last": 1, "n": length, "tag": tag}))),
        })

    def elaborate(self, platform):
        m = Module()
        depth = self.banks * self.max_len
        m.submodules.mem = mem = memory.Memory(shape=self.shape, depth=depth, init=[])
        # Rows held: counted from a row's first input to pass 2 reading its last.
        held = Signal(range(self.banks + 1))
        held_inc, held_dec = Signal(), Signal()
        m.d.sync += held.eq(held + held_inc - held_dec)
        self._write(m, mem.write_port(), held, held_inc)
        self._read(m, mem.read_port(), held_dec)
        return m

    def _next_bank(self, base):
        return Mux(base == (self.banks - 1) * self.max_len, 0, base + self.max_len)

    def _write(self, m, wr, held, held_inc):
        idx = Signal(range(self.max_len))
        base = Signal(range(self.banks * self.max_len))
        v1, first1, last1 = Signal(), Signal(), Signal()
        n1 = Signal(range(self.max_len + 1))
        slot_valid = Signal()
        p = self.i.payload

        # The element's cycles in the stage; it may leave on its period-th (``done``).
        phase = Signal(range(self.period))
        done = (phase == self.period - 1) & ~self.hold
        with m.If(self.stage.advance):
            m.d.sync += phase.eq(0)
        with m.Elif(v1 & ~done):
            m.d.sync += phase.eq(phase + 1)

        accept = Signal()
        m.d.comb += [
            self.stage.advance.eq(~v1 | (done & ~(last1 & slot_valid))),
            self.i.ready.eq(self.stage.advance & (self.open | (held < self.banks))),
            accept.eq(self.i.valid & self.i.ready),
            held_inc.eq(accept & ~self.open),
            wr.addr.eq(base + idx),
            wr.data.eq(p[self.field]),
            wr.en.eq(accept),
            self.stage.valid.eq(v1),
            self.stage.update.eq(v1 & self.stage.advance),
            self.stage.first.eq(first1),
            self.stage.last.eq(last1),
            self.rows.valid.eq(slot_valid),
        ]
        with m.If(self.stage.advance):
            m.d.sync += v1.eq(accept)
        with m.If(accept):
            m.d.sync += [
                first1.eq(~self.open),
                last1.eq(p.last),
                n1.eq(idx + 1),
                self.open.eq(~p.last),
                idx.eq(Mux(p.last, 0, idx + 1)),
            ]
            with m.If(p.last):
                m.d.sync += base.eq(self._next_bank(base))
        with m.If(self.stage.update & last1):
            m.d.sync += [slot_valid.eq(1), self.rows.payload.n.eq(n1),
                         self.rows.payload.stats.eq(self.stats)]
        with m.If(self.rows.valid & self.rows.ready):
            m.d.sync += slot_valid.eq(0)

    def _read(self, m, rd, held_dec):
        active = Signal()
        n = Signal(range(self.max_len + 1))
        # The row's last index, kept beside n so that "last element" is an equality test on j,
        # not a subtraction feeding a comparison (the read control's deepest path).
        j_last = Signal(range(self.max_len))
        tag = Signal(self.start.payload.tag.shape())
        base = Signal(range(self.banks * self.max_len))
        j = self.index

        issue, issue_last = Signal(), Signal()
        m.d.comb += [
            issue.eq(active & self.o.ready),
            issue_last.eq(issue & (j == j_last)),
            self.start.ready.eq(~active | issue_last),
            held_dec.eq(issue_last),
            rd.addr.eq(base + j),
            rd.en.eq(self.o.ready),
            self.o.payload[self.field].eq(rd.data),
        ]
        with m.If(issue):
            m.d.sync += j.eq(j + 1)
        with m.If(issue_last):
            m.d.sync += [active.eq(0), j.eq(0), base.eq(self._next_bank(base))]
        with m.If(self.start.valid & self.start.ready):
            m.d.sync += [active.eq(1), j.eq(0), n.eq(self.start.payload.n),
                         j_last.eq(self.start.payload.n - 1), tag.eq(self.start.payload.tag)]
        # The row's values travel with each element: the next row may start while the last
        # elements of the previous one are still in the unit's pipeline.
        with m.If(self.o.ready):
            m.d.sync += [
                self.o.valid.eq(issue),
                self.o.payload.last.eq(j == j_last),
                self.o.payload.n.eq(n),
                self.o.payload.tag.eq(tag),
            ]


class TwoPassTiming:
    """The row rate of a two-pass unit built on a :class:`RowBank` (``Softmax``, ``LayerNorm``),
    from its ``banks``, ``latency``, ``read_latency``, ``divider_period`` and ``input_period``
    (the RowBank's ``period``: cycles per input element, 1 unless the unit sets it) and
    ``input_register`` (1 where an input register before the bank holds a row's first element
    while the bank's are all held, so the bank is held from one edge after the input takes it)."""

    input_period = 1
    input_register = 0

    def input_span(self, n):
        """Cycles from a row's first input transfer to its last, inclusive, at full rate."""
        return self.input_period * (n - 1) + 1

    def steady_period(self, n):
        """Average cycles per row group for back-to-back rows of ``n`` elements, ``o`` ready.

        The largest of three limits: the input (``input_period * n``), the per-row divider
        (``divider_period``), and the row buffer: a bank is held from a row's first input until
        pass 2 has read its last element, ``input_span(n) + n + latency - read_latency - 1
        - input_register`` cycles, so ``banks`` banks hold at most ``banks`` rows per that time.
        Exact (as the sum of any ``banks`` consecutive row periods) when one limit dominates.
        """
        held = self.input_span(n) + n + self.latency - self.read_latency - 1 - self.input_register
        return max(Fraction(self.input_period * n), Fraction(self.divider_period),
                   Fraction(held, self.banks))
