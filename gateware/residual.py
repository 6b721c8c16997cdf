"""The residual reader: the destination's old values, for the post-processor's residual add."""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .lanes import lane_layout
from .phase import Dest, Tile
from .sequencer import Final
from .transpose import Transpose

__all__ = ["ResidualReader"]


class ResidualReader(wiring.Component):
    """Streams, per tile, the destination words the tile's outputs will be added to.

    For each descriptor it reads the ``lanes`` tokens of the tile's token block at the tile's
    channel block of ``dest`` (tokens past ``dest.rows`` read as zero) and transposes them, so
    element ``j`` holds channel ``j`` of every token, in the order the MAC array's columns come.
    During the MoE combine's last pass (``final.active``) it only addresses word ``final.addr``
    of the destination for the writer, every cycle.

    With ``groups`` G > 1 a tile spans G words per token (channel block ``cb`` is words
    ``G * cb`` to ``G * cb + G - 1``), read word by word, each word's ``lanes`` tokens in turn.

    Parameters
    ----------
    lanes, groups : int

    Attributes
    ----------
    tiles : In(stream.Signature(Tile))
        Taken with the tile's last read.
    dest : In(Dest)
    final : In(Final)
    mem_addr, mem_en : Out(24), Out(1)
        The activation memory's read port; ``mem_data`` the cycle after an enabled read.
    o : Out(stream.Signature({"data": ArrayLayout(signed(16), lanes), "last": 1}))
        Latency: 2 cycles from a tile's last read to its first element (read, transposer).
        Throughput: one word read per cycle, ``lanes`` elements out per ``lanes`` cycles.
    """

    def __init__(self, lanes, groups=1):
        self.lanes, self.groups = lanes, groups
        word = data.ArrayLayout(signed(16), lanes)
        super().__init__({
            "tiles": In(stream.Signature(Tile)), "dest": In(Dest), "final": In(Final),
            "mem_addr": Out(24), "mem_en": Out(1), "mem_data": In(word),
            "o": Out(stream.Signature(lane_layout(lanes, signed(16)))),
        })

    def elaborate(self, platform):
        m = Module()
        N, G, d, t, fin = self.lanes, self.groups, self.dest, self.tiles.payload, self.final
        m.submodules.transpose = tp = Transpose(N, signed(16))
        wiring.connect(m, tp.o, wiring.flipped(self.o))
        r, grp = Signal(range(N)), Signal(range(G))
        valid, zero = Signal(), Signal()
        en = Signal()
        m.d.comb += [en.eq(~valid | tp.i.ready), self.mem_en.eq(en | fin.active)]
        with m.If(fin.active):
            m.d.comb += self.mem_addr.eq(d.base + fin.addr)
        with m.Else():
            m.d.comb += self.mem_addr.eq(d.base + (t.tb * N + r + d.offset) * d.stride + d.chunk0 + t.cb * G + grp)
        with m.If(self.tiles.valid & en & ~fin.active):
            m.d.sync += [valid.eq(1), zero.eq(Cat(r, t.tb) >= d.rows), r.eq(r + 1)]
            with m.If(r == N - 1):
                m.d.sync += [r.eq(0), grp.eq(grp + 1)]
                with m.If(grp == G - 1):
                    m.d.sync += grp.eq(0)
                    m.d.comb += self.tiles.ready.eq(1)
        with m.Elif(en):
            m.d.sync += valid.eq(0)
        m.d.comb += [tp.i.valid.eq(valid), tp.i.payload.data.eq(Mux(zero, 0, self.mem_data))]
        return m
