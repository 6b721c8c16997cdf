"""A tile reader: walks one operand of a tile through a memory, into the MAC array's order."""

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .lanes import lane_layout
from .phase import Tile
from .transpose import Transpose

__all__ = ["Walk", "TileReader", "clamp_rows"]

#: How a reader walks a tile. A *transposed* walk reads, for each of ``chunks`` words from word
#: ``chunk0``, the ``lanes`` tokens of the tile's token block (its ``tb``, or its ``cb`` with
#: ``by_cb``; from the token list with ``list``) at ``base + token * stride``; tokens past
#: ``rows`` read as zero. A *plain* walk reads ``count`` elements ``c`` at ``base + c * stride
#: + chunk0`` (plus the tile's ``cb`` with ``by_cb``, plus ``slot * slot_words`` with
#: ``by_slot``, plus ``tb * slot_words`` with ``by_group``: the probability buffer's row group of
#: the tile's query block), as they are stored.
Walk = data.StructLayout({
    "transposed": 1, "list": 1, "by_cb": 1, "by_slot": 1, "by_group": 1, "packed": 1,
    "base": 24, "stride": 8, "chunk0": 8, "chunks": 8, "rows": 16, "count": 24,
})


def clamp_rows(m, lanes, total, block):
    """Valid rows of token block ``block`` out of ``total`` (0..lanes)."""
    rem = Signal(signed(18))
    m.d.comb += rem.eq(total - block * lanes)
    return Mux(rem >= lanes, lanes, Mux(rem < 0, 0, rem))


class TileReader(wiring.Component):
    """Streams one operand of each tile from a memory with one cycle of read latency.

    Each descriptor on ``tiles`` is one walk (:data:`Walk`, from ``walk``, which holds still
    while a tile is read). A transposed walk goes through a block transposer, so a word of
    ``lanes`` tokens' channel ``c`` comes out as ``lanes`` elements, one token each.

    With ``groups`` G > 1 the memory is G words wide (G banks read together) and so is an
    element (the W operand of a ``lanes`` x ``G * lanes`` array): a transposed walk feeds word
    ``g`` of each read to transposer ``g``, whose tokens are those of block ``G * block + g``
    (bank ``g`` of the attention K buffer holds every G-th token block); a plain walk reads whole
    elements. Either streams an element per cycle.

    Parameters
    ----------
    lanes : int
    groups : int
        Words per element, G.
    pack : int
        Elements per memory word in a ``packed`` walk (the weight buffer holds ``pack`` words of
        int8 per DRAM beat): the memory address is the element address ``// pack``, and
        ``sub`` says which one of the word's elements was read. A packed walk's ``base``,
        ``chunk0`` and slot offset are multiples of ``pack`` (``sub`` is taken from the element
        index alone, not from the whole address sum).
    slot_words : int
        Elements per slot of a multi-buffered memory (``by_slot``), or per row group
        (``by_group``); a power of two for ``by_group``.
    lane_bits : int
        Width of a lane (signed): 16 for the A operand (LayerNorm reads the 16-bit residual
        through it), ``ACT_BITS`` for the W operand, whose values (weights, K and V) are never
        wider, so that its transposers and output hold no bits that are only sign.

    Attributes
    ----------
    tiles : In(stream.Signature(Tile))
        Taken with the tile's last read.
    walk : In(Walk)
    go : In(1)
        The tile's data is there to read (the weight buffer's slot is full, or the probability
        buffer's next word is written); reads wait for it.
    position : Out(16)
        The index of the element the walk reads next (of the chunk, in a transposed walk).
    mem_addr, mem_en : Out(24), Out(1)
        The memory's read port; ``mem_data`` (``groups * lanes`` lanes of ``lane_bits``) is expected the cycle
        after an enabled read,
        with the element ``sub`` selected for a packed walk.
    list_addr : Out(16), list_token : In(16)
        The token list (the expert's queue): entry ``list_addr``, read combinationally.
    o : Out(stream.Signature({"data": ArrayLayout(signed(lane_bits), groups * lanes), "last": 1}))
        ``last`` on the tile's last element. Latency: 1 cycle from a read (2 through the
        transposer, which emits a block's first element after its last word). Throughput: one
        word per cycle, i.e. one element per cycle on a plain walk.
    """

    def __init__(self, lanes, *, groups=1, pack=1, slot_words=0, lane_bits=16):
        if pack > 1 and slot_words % pack:
            raise ValueError(f"slot_words ({slot_words}) must be a multiple of pack ({pack})")
        self.lanes, self.groups, self.pack, self.slot_words = lanes, groups, pack, slot_words
        self.lane_bits = lane_bits
        word = data.ArrayLayout(signed(lane_bits), groups * lanes)
        super().__init__({
            "tiles": In(stream.Signature(Tile)), "walk": In(Walk), "go": In(1, init=1), "position": Out(16),
            "mem_addr": Out(24), "mem_en": Out(1), "mem_data": In(word), "sub": Out(range(max(pack, 2))),
            "list_addr": Out(16), "list_token": In(16),
            "o": Out(stream.Signature(lane_layout(groups * lanes, signed(lane_bits)))),
        })

    def elaborate(self, platform):
        m = Module()
        N, G, w, t = self.lanes, self.groups, self.walk, self.tiles.payload
        tps = [Transpose(N, signed(self.lane_bits)) for _ in range(G)]
        B = self.lane_bits
        for g, tp in enumerate(tps):
            m.submodules[f"transpose{g}" if G > 1 else "transpose"] = tp
        c, r = Signal(16), Signal(range(N))
        # Whether c is the walk's last element (plain) or chunk (transposed) is reckoned a cycle
        # ahead from c's next value, so that no compare of c sits in front of the tile
        # handshake. The walk holds still from a cycle before its first tile (the phase's copy
        # comes 3 cycles ahead of its tiles), as this needs. The three candidates (c stayed,
        # moved on, or went back to 0 at a tile's end) are registered, and two registered bits
        # of the handshake pick one: the handshake and the tile's end reach no compare (Yosys
        # merged the compares into one behind them, 9-10 levels on the board top).
        c_last, c_last_stay, c_last_next, c_last_wrap = Signal(), Signal(), Signal(), Signal()
        moved, wrapped = Signal(), Signal()
        m.d.comb += c_last.eq(Mux(moved, Mux(wrapped, c_last_wrap, c_last_next), c_last_stay))
        limit = Mux(w.transposed, w.chunks, w.count)
        valid, zero_q, last_q = Signal(), Signal(G), Signal()     # beside the memory's read data
        dst_ready, en = Signal(), Signal()
        m.d.comb += [en.eq(~valid | dst_ready), self.mem_en.eq(en)]

        block = Mux(w.by_cb, t.cb, t.tb)
        m.d.comb += self.list_addr.eq(block * N + r)
        token = Mux(w.list, self.list_token, block * N + r)
        gen_zero, gen_last, addr = Signal(G), Signal(), Signal(24)
        with m.If(w.transposed):
            m.d.comb += [addr.eq(w.base + token * w.stride + w.chunk0 + c),
                         gen_last.eq(c_last & (r == N - 1))]
            # Row r of token block B is past the walk's rows when B * N + r >= rows (B * N + r
            # is a concatenation, lanes and groups being powers of two): one compare, not a
            # clamp of rows - B * N and a compare behind it.
            # The token index is compared in the 16 bits of ``rows`` (token blocks past them do
            # not exist): the block field's spare high bits made Yosys ripple the compare
            # through LUTs (10 levels on the board top).
            width = len(w.rows)
            m.d.comb += [gen_zero[g].eq(Cat(r, Const(g, range(G)), block)[:width] >= w.rows) if G > 1 else
                         gen_zero[g].eq(Cat(r, block)[:width] >= w.rows) for g in range(G)]
        with m.Else():
            m.d.comb += [addr.eq(w.base + c * w.stride + w.chunk0 + Mux(w.by_cb, t.cb, 0)
                                 + Mux(w.by_slot, t.slot * self.slot_words, 0)
                                 + Mux(w.by_group, t.tb * self.slot_words, 0)),
                         gen_last.eq(c_last)]
        m.d.comb += self.mem_addr.eq(Mux(w.packed, addr // self.pack, addr))

        read = self.tiles.valid & self.go & en
        m.d.comb += self.position.eq(c)
        c_moves = read & (~w.transposed | (r == N - 1))
        m.d.sync += [c_last_wrap.eq(limit == 1), c_last_next.eq(c + 2 == limit), c_last_stay.eq(c + 1 == limit),
                     moved.eq(c_moves), wrapped.eq(gen_last)]
        with m.If(read):
            m.d.sync += [valid.eq(1), zero_q.eq(gen_zero), last_q.eq(gen_last)]
            if self.pack > 1:
                m.d.sync += self.sub.eq(c % self.pack)
            # A transposed walk reads the N tokens of a chunk before the next chunk.
            with m.If(w.transposed):
                with m.If(r == N - 1):
                    m.d.sync += [r.eq(0), c.eq(c + 1)]
                with m.Else():
                    m.d.sync += r.eq(r + 1)
            with m.Else():
                m.d.sync += c.eq(c + 1)
            with m.If(gen_last):
                m.d.sync += [c.eq(0), r.eq(0)]
                m.d.comb += self.tiles.ready.eq(1)
        with m.Elif(en):
            m.d.sync += valid.eq(0)

        word = Signal.like(self.mem_data)
        for g in range(G):
            with m.If(~zero_q[g]):
                m.d.comb += word.as_value()[B * N * g:B * N * (g + 1)].eq(
                    self.mem_data.as_value()[B * N * g:B * N * (g + 1)])
        for g, tp in enumerate(tps):
            m.d.comb += [tp.i.payload.data.eq(word.as_value()[B * N * g:B * N * (g + 1)]),
                         tp.i.payload.last.eq(last_q), tp.i.valid.eq(valid & w.transposed)]
        with m.If(w.transposed):
            # The transposers run in lockstep: they take and give their words together.
            m.d.comb += [dst_ready.eq(tps[0].i.ready), self.o.valid.eq(tps[0].o.valid),
                         self.o.payload.data.eq(Cat(tp.o.payload.data for tp in tps)),
                         self.o.payload.last.eq(tps[0].o.payload.last)]
            m.d.comb += [tp.o.ready.eq(self.o.ready) for tp in tps]
        with m.Else():
            m.d.comb += [self.o.valid.eq(valid), self.o.payload.data.eq(word),
                         self.o.payload.last.eq(last_q), dst_ready.eq(self.o.ready)]
        return m
