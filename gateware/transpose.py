"""Streaming n x n block transposer ("corner turner") between row words and column words."""

from amaranth.hdl import Array, Cat, Module, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .lanes import lane_layout

__all__ = ["Transpose"]


class Transpose(wiring.Component):
    """Transposes blocks of ``n`` words of ``n`` lanes: input rows come out as columns.

    Word ``r`` of an input block is row ``r``; output word ``c`` of the block carries
    ``data[r] = row r's data[c]`` for every ``r``. Activations stored as [token][chunk of ``n``
    channels] thus become ``n`` tokens of one channel per word (the MAC array's columns), and the
    MAC array's columns become rows again through a second instance.

    Two banks of ``n x n`` registers alternate: a whole input row is written into the filling
    bank per cycle while the other, full bank is emitted column by column. The output is a
    ``2n``-way select (bank and column) straight from the registers, combinational only from
    state, never from ``o.ready`` or ``i``. A select mux was chosen over shifting the emitting
    bank: it touches ``n`` registers per cycle instead of ``n*n`` (smaller enables, faster
    pysim), and the mux is shallow (a 16:1 mux for ``n = 8`` is one LUT6/MUXF7/MUXF8 level
    on 7-series/UltraScale).

    Parameters
    ----------
    n : int
        Block size: lanes per word and words per block, ``n >= 1``.
    shape : ShapeCastable
        Shape of one lane, e.g. ``signed(16)`` or ``unsigned(11)``; lanes are moved as raw
        bits, so layouts and enums work as well.

    Attributes
    ----------
    i : In(stream.Signature(StructLayout({"data": ArrayLayout(shape, n), "last": 1})))
        Input rows, blocks of exactly ``n`` transfers. ``last`` may be set only on a block's
        ``n``-th transfer and tags the block; on other transfers it is ignored.
    o : Out(stream.Signature(StructLayout({"data": ArrayLayout(shape, n), "last": 1})))
        Output columns, ``n`` transfers per block in input order. ``last`` is set on the
        ``n``-th transfer of a block whose input was tagged ``last``.
    n : int
        The block size.
    shape : ShapeCastable
        The lane shape.
    latency : int
        1: when a block's final input word transfers on clock edge ``t``, its first column is
        on ``o`` right after that edge and transfers on edge ``t + latency`` if ``o`` is ready.

    Throughput: one word per cycle in and out, sustained, with no bubbles between blocks while
    ``o`` is always ready: a bank is emptied on the same edge the other one fills, so the next
    block's first row is accepted on the following edge. ``i.ready`` is low only while both
    banks hold blocks not yet (fully) emitted; correct under any stall pattern on both sides.
    """

    latency = 1

    def __init__(self, n, shape):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        self.n, self.shape = n, shape
        layout = lane_layout(n, shape)
        super().__init__({
            "i": In(stream.Signature(layout)),
            "o": Out(stream.Signature(layout)),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.n
        width = Shape.cast(self.shape).width
        row_layout = data.ArrayLayout(self.shape, n)

        def lane(word, c):
            return word.as_value()[c * width:(c + 1) * width]

        rows = [[Signal(row_layout, name=f"bank{b}_row{r}") for r in range(n)] for b in range(2)]
        full = Signal(2)
        tag = Signal(2)     # the block in that bank was tagged ``last``
        wbank = Signal()
        wrow = Signal(range(n))
        rbank = Signal()
        rcol = Signal(range(n))

        accept = Signal()
        emit = Signal()
        m.d.comb += [
            self.i.ready.eq(~full.bit_select(wbank, 1)),
            accept.eq(self.i.valid & self.i.ready),
            self.o.valid.eq(full.bit_select(rbank, 1)),
            emit.eq(self.o.valid & self.o.ready),
        ]

        # The filling bank is never full and the emitting bank always is, so the set and the
        # clear below never hit the same bank on one edge.
        with m.If(accept):
            for b in range(2):
                for r in range(n):
                    with m.If((wbank == b) & (wrow == r)):
                        m.d.sync += rows[b][r].eq(self.i.payload.data)
            with m.If(wrow == n - 1):
                m.d.sync += [
                    wrow.eq(0),
                    wbank.eq(~wbank),
                    full.bit_select(wbank, 1).eq(1),
                    tag.bit_select(wbank, 1).eq(self.i.payload.last),
                ]
            with m.Else():
                m.d.sync += wrow.eq(wrow + 1)

        with m.If(emit):
            with m.If(rcol == n - 1):
                m.d.sync += [
                    rcol.eq(0),
                    rbank.eq(~rbank),
                    full.bit_select(rbank, 1).eq(0),
                ]
            with m.Else():
                m.d.sync += rcol.eq(rcol + 1)

        column = [Array(Array(lane(rows[b][r], c) for c in range(n)) for b in range(2))[rbank][rcol]
                  for r in range(n)]
        m.d.comb += [
            self.o.payload.data.as_value().eq(Cat(*column)),
            self.o.payload.last.eq(tag.bit_select(rbank, 1) & (rcol == n - 1)),
        ]
        return m
