"""Streaming n x n block transposer ("corner turner") between row words and column words."""

from amaranth.hdl import Array, Cat, Module, Mux, Shape, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .lanes import lane_layout

__all__ = ["Transpose"]


class Transpose(wiring.Component):
    """Transposes blocks of ``n`` words of ``n`` lanes: input rows come out as columns.

    Word ``r`` of an input block is row ``r``; output word ``c`` of the block carries
    ``data[r] = row r's data[c]`` for every ``r``. Activations stored as [token][chunk of ``n``
    channels] thus become ``n`` tokens of one channel per word (the MAC array's columns), and the
    MAC array's columns become rows again through a second instance.

    Two banks of ``n x n`` elements alternate: a whole input row is written into the filling
    bank per cycle while the other, full bank is emitted column by column. The banks are ``n``
    lane memories of ``2n`` entries (distributed RAM on the FPGA), skewed so that element
    ``(r, c)`` sits in memory ``(c + r) mod n``: a row is written as one word rotated by ``r``,
    a column read as one entry of every memory, each at its own address, rotated back by ``c``.
    The output comes from the memories' asynchronous reads at registered addresses through the
    rotation, combinational only from state, never from ``o.ready`` or ``i``. Registers with a
    ``2n``-way select per output bit (the design before) cost far more LUTs: the board build's W
    reader (four 16 x 16 transposers of 13-bit lanes) took 16,114 LUTs with them, 6,834 with these
    (Yosys, the reader alone).

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

        def lane(word, c):
            return word.as_value()[c * width:(c + 1) * width]

        # Element (r, c) of bank b is in memory (c + r) mod n at address b * n + r.
        mems = []
        for j in range(n):
            mem = Memory(shape=width, depth=2 * n, init=[])
            m.submodules[f"lane{j}"] = mem
            mems.append((mem.write_port(), mem.read_port(domain="comb")))
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

        row_in = _rotate([lane(self.i.payload.data, c) for c in range(n)], wrow, n, left=True)
        for j, (wr, rd) in enumerate(mems):
            m.d.comb += [wr.en.eq(accept), wr.addr.eq(Cat(wrow, wbank) if _pow2(n) else wbank * n + wrow),
                         wr.data.eq(row_in[j]), rd.addr.eq(_read_addr(j, rcol, rbank, n))]

        # The filling bank is never full and the emitting bank always is, so the set and the
        # clear below never hit the same bank on one edge.
        with m.If(accept):
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

        column = _rotate([rd.data for _, rd in mems], rcol, n, left=False)
        m.d.comb += [
            self.o.payload.data.as_value().eq(Cat(*column)),
            self.o.payload.last.eq(tag.bit_select(rbank, 1) & (rcol == n - 1)),
        ]
        return m


def _pow2(n):
    return n & (n - 1) == 0


def _rotate(words, amount, n, *, left):
    """``words`` (n values) rotated by ``amount`` places: ``out[j] = words[(j - amount) % n]``
    with ``left``, else ``out[j] = words[(j + amount) % n]``. A log shifter (a 4:1 LUT mux per
    two select bits) for a power-of-two ``n``, an n-way select otherwise."""
    if n == 1:
        return list(words)
    sign = -1 if left else 1
    if not _pow2(n):
        return [Array(words[(j + sign * k) % n] for k in range(n))[amount] for j in range(n)]
    out = list(words)
    for bit in range(len(amount)):
        step = 1 << bit
        out = [Mux(amount[bit], out[(j + sign * step) % n], out[j]) for j in range(n)]
    return out


def _read_addr(j, col, bank, n):
    """Memory ``j``'s address for column ``col`` of ``bank``: row ``(j - col) mod n``."""
    if n == 1:
        return bank
    if _pow2(n):
        return Cat((j - col)[:(n - 1).bit_length()], bank)
    return bank * n + Mux(col <= j, j - col, j - col + n)
