"""The column path: the MAC array's output columns to the router, or through the vector units."""

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.attention import PROB_FRAC
from golden.mac_array import ACC_BITS

from .gelu import GELU
from .lanes import lane_layout
from .phase import SLOTS, SLOT_BITS, Phase, Sink, Tile
from .postprocess import PostProcess
from .program import probs_stride
from .reader import clamp_rows
from .records import TileParams
from .softmax import Softmax
from .transpose import Transpose

__all__ = ["ColumnPath"]


class ColumnPath(wiring.Component):
    """Routes each tile's output columns by the phase's sink and turns results back into words.

    A column is one output channel of ``lanes`` tokens; a tile has ``cols`` of them. Columns
    past the tile's ``cols`` are dropped. For the router (gate logits) they go out on ``router`` with the tile's token block;
    otherwise through the post-processor (the tile's bias and requantisation, or the phase's
    fixed one; the residual's column added for ``RESIDUAL``), then GELU, the softmax (whose rows
    go into the probability buffer, ``probs_write``) or straight on. Results, and LayerNorm's
    output (``ln``), are transposed back into token words on ``o``.

    Parameters
    ----------
    lanes, max_tokens : int
    cols : int
        Columns of a tile (the MAC array's); ``None`` means ``lanes``.
    router, ln : wiring.Signature
        The router's ``i`` and LayerNorm's ``o`` stream signatures.

    Attributes
    ----------
    i : In(stream.Signature({"data": ArrayLayout(signed(ACC_BITS), lanes), "last": 1}))
        The MAC array's columns.
    skip_rest : Out(1)
        To the MAC array's: the column on ``i`` is past the phase's channels, and so are the
        tile's later ones.
    tiles : In(stream.Signature(Tile))
        Taken with a tile's ``cols``-th column.
    phase : In(Phase)
        Its sink is taken a cycle after it is set (registered): steady from the cycle before a
        tile's first column.
    param_slot, param_col : Out, param : In(TileParams)
        The weight buffer's record of the column's channel, read combinationally.
    residual : In(stream.Signature({"data": ArrayLayout(signed(16), lanes), "last": 1}))
    release : Out(SLOTS)
        Pulses, per weight-buffer slot, when a tile that releases it is done.
    retire : Out(1)
        Pulses with a tile's last column when nothing is written (softmax, router).
    probs_write : Out(stream.Signature({"addr": 16, "data": ..., "last": 1}, always_ready=True))
        ``last`` on a row's final word. The phase's rows (query blocks, up to
        ``phase.last_row_group``) go to row groups ``0, 1, ...``: key ``j`` of group ``g`` at
        ``g * probs_stride + j``.
    probs_arm : In(1), scores_pending : Out(1)
        ``scores_pending`` is set by ``probs_arm`` and cleared when the softmax has taken the
        phase's last row's last score: nothing more of the phase leaves the column path, and the
        softmax's probabilities follow into the buffer (``probs_write``), where A.V reads each
        once it is written.
    o : Out(stream.Signature({"data": ArrayLayout(signed(16), lanes), "last": 1}))

    Latency: ``PostProcess.latency`` (+ ``GELU``'s) + 1 cycles from a column to the
    transposer, which emits a tile's token words after its last column. Throughput: one column
    per cycle; into the softmax one per cycle, one more for each column that is a new maximum
    of some row (``Softmax``), which the MAC array's accumulation over the head dimension (16
    cycles or more per tile of ``lanes <= 8`` columns, 64 on edge-moe for 16) mostly hides.
    """

    def __init__(self, lanes, max_tokens, *, cols=None, router, ln):
        self.lanes, self.max_tokens, self.cols = lanes, max_tokens, cols or lanes
        self.probs_stride = probs_stride(max_tokens)     # a row group per query block
        word = lane_layout(lanes, signed(16))
        probs = data.StructLayout({"addr": 16,
                                   "data": data.ArrayLayout(unsigned(PROB_FRAC + 1), lanes), "last": 1})
        super().__init__({
            "i": In(stream.Signature(lane_layout(lanes, signed(ACC_BITS)))), "skip_rest": Out(1),
            "tiles": In(stream.Signature(Tile)), "phase": In(Phase),
            "param_slot": Out(SLOT_BITS), "param_col": Out(range(self.cols)), "param": In(TileParams),
            "residual": In(stream.Signature(word)),
            "release": Out(SLOTS), "retire": Out(1),
            "router": Out(router), "ln": In(ln),
            "probs_write": Out(stream.Signature(probs, always_ready=True)),
            "probs_arm": In(1), "scores_pending": Out(1),
            "o": Out(stream.Signature(word)),
        })

    def elaborate(self, platform):
        m = Module()
        N = self.lanes
        m.submodules.post = post = PostProcess(N)
        m.submodules.gelu = gelu = GELU(N)
        m.submodules.softmax = softmax = Softmax(N, self.max_tokens, PROB_FRAC)
        m.submodules.transpose = tp = Transpose(N, signed(16))
        wiring.connect(m, tp.o, wiring.flipped(self.o))
        # The sink as registered one-hot flags: the column handshake, and behind it the MAC
        # array's drain and input, the join and the readers, start at registers, not behind a
        # decode of the phase (the board top's deepest paths, 10-11 levels). The phase is set
        # long before a tile's first column comes out of the array.
        self.sink = {s: Signal(name=f"sink_{s.name.lower()}") for s in Sink}
        m.d.sync += [flag.eq(self.phase.sink == s) for s, flag in self.sink.items()]
        self._columns(m, post)
        self._units(m, post, gelu, softmax, tp)
        return m

    def _columns(self, m, post):
        """The MAC array's columns, one per cycle, to the router or the post-processor."""
        N, C = self.lanes, self.cols
        ph, t, mac, res = self.phase, self.tiles.payload, self.i, self.residual
        col = Signal(range(C))
        # col + 1 and the phase's last channel block, as registers: the router's last column
        # is then two equality tests, with no subtraction in front of them.
        col1, last_cb = Signal(range(C + 1), init=1), Signal.like(ph.n_cb)
        m.d.sync += last_cb.eq(ph.n_cb - 1)
        cols_valid = t.cols
        # Whether the column is one of the tile's (``col < cols``) and whether it is the array's
        # last, as registers reckoned as the previous column is taken: the handshake, the drain
        # and the tile queue then start at flops, not behind a compare of the tile's fields
        # (10 levels into the MAC array's drain). A tile's first column is always kept: the
        # sequencer gives every tile at least one channel.
        keep, col_end = Signal(init=1), Signal(init=int(C == 1))
        m.d.comb += [self.param_slot.eq(t.slot), self.param_col.eq(col)]
        record, router = self.param, self.router
        col_taken = Signal()
        sink = self.sink
        with m.If(sink[Sink.ROUTER]):
            m.d.comb += [router.valid.eq(mac.valid & self.tiles.valid & keep),
                         router.payload.last.eq((t.cb == last_cb) & (col1 == cols_valid)),
                         router.payload.token_base.eq(t.tb * N),
                         router.payload.valid_lanes.eq(clamp_rows(m, N, ph.d.rows, t.tb)),
                         router.payload.final.eq(t.last),
                         mac.ready.eq(self.tiles.valid & (router.ready | ~keep)),
                         col_taken.eq(mac.valid & self.tiles.valid & (router.ready | ~keep))]
            m.d.comb += [router.payload.logits[i].eq(mac.payload.data[i]) for i in range(N)]
        with m.Elif(~sink[Sink.LAYERNORM]):
            need_r = sink[Sink.RESIDUAL]
            ok = mac.valid & self.tiles.valid & (~need_r | res.valid)
            m.d.comb += [post.i.valid.eq(ok & keep),
                         post.i.payload.acc.eq(mac.payload.data),
                         post.i.payload.bias.eq(Mux(ph.fix_params, 0, record.bias)),
                         post.i.payload.mult.eq(Mux(ph.fix_params, ph.fix_mult, record.mult)),
                         post.i.payload.shift.eq(Mux(ph.fix_params, ph.fix_shift, record.shift)),
                         post.i.payload.add_residual.eq(need_r),
                         post.i.payload.narrow.eq(ph.narrow),
                         col_taken.eq(ok & (post.i.ready | ~keep)),
                         mac.ready.eq(col_taken),
                         res.ready.eq(col_taken & need_r)]
            m.d.comb += [post.i.payload.residual[i].eq(res.payload.data[i]) for i in range(N)]
        # The first column past the phase's channels ends the tile: the MAC array drops the rest
        # of its drain (a tile of 129 keys' scores on a 64-column array has 63 such in its last).
        m.d.comb += self.skip_rest.eq(~keep)
        with m.If(col_taken):
            m.d.sync += [col.eq(col + 1), col1.eq(col1 + 1), keep.eq(col1 < cols_valid), col_end.eq(col1 == C - 1)]
            with m.If(col_end | ~keep):
                m.d.sync += [col.eq(0), col1.eq(1), keep.eq(1), col_end.eq(C == 1)]
                m.d.comb += self.tiles.ready.eq(1)
                with m.If(t.release):
                    m.d.comb += self.release.eq(1 << t.slot)
                with m.If(sink[Sink.SOFTMAX] | sink[Sink.ROUTER]):
                    m.d.comb += self.retire.eq(1)

    def _units(self, m, post, gelu, softmax, tp):
        """Post-processed columns (or LayerNorm's rows) through GELU or the softmax, into words."""
        N, ph = self.lanes, self.phase
        key, prob_j = Signal(16), Signal(16)
        # The phase's rows (a query block's scores each): rows taken in, and the row group of
        # the probability buffer the softmax is writing.
        rows_in, group = Signal(12), Signal(12)
        # The row's last key, registered (the phase's rows are set long before its first score).
        last_key = Signal(16)
        m.d.sync += last_key.eq(ph.a.rows - 1)
        src_valid, src_data, src_ready = Signal(), Signal(data.ArrayLayout(signed(16), N)), Signal()
        # The units' payloads go to them whatever the sink; only the handshakes follow it, so no
        # sink decode sits in front of the data (it was 3 of the board top's deepest path's levels).
        m.d.comb += [gelu.i.payload.eq(post.o.payload.data), gelu.mult.eq(ph.fix_mult), gelu.shift.eq(ph.fix_shift),
                     softmax.i.payload.u.eq(post.o.payload.data), softmax.i.payload.last.eq(key == last_key)]
        sink = self.sink
        with m.If(sink[Sink.GELU]):
            m.d.comb += [gelu.i.valid.eq(post.o.valid), post.o.ready.eq(gelu.i.ready),
                         src_valid.eq(gelu.o.valid), gelu.o.ready.eq(src_ready)]
            m.d.comb += [src_data[i].eq(gelu.o.payload[i]) for i in range(N)]
        with m.Elif(sink[Sink.SOFTMAX]):
            m.d.comb += [softmax.i.valid.eq(post.o.valid), post.o.ready.eq(softmax.i.ready)]
            with m.If(softmax.i.valid & softmax.i.ready):
                m.d.sync += key.eq(Mux(key == last_key, 0, key + 1))
                with m.If(key == last_key):
                    m.d.sync += rows_in.eq(rows_in + 1)
                    with m.If(rows_in == ph.last_row_group):
                        m.d.sync += self.scores_pending.eq(0)
        with m.Elif(sink[Sink.LAYERNORM]):
            m.d.comb += [src_valid.eq(self.ln.valid), self.ln.ready.eq(src_ready)]
            m.d.comb += [src_data[i].eq(self.ln.payload.y[i]) for i in range(N)]
        with m.Elif(sink[Sink.WRITE] | sink[Sink.RESIDUAL] | sink[Sink.COMBINE]):
            m.d.comb += [src_valid.eq(post.o.valid), src_data.eq(post.o.payload.data),
                         post.o.ready.eq(src_ready)]
        # Softmax rows go straight into the probability buffer: word j is key j of every query.
        pw = self.probs_write
        m.d.comb += [softmax.o.ready.eq(1), pw.valid.eq(softmax.o.valid),
                     pw.payload.addr.eq(group * self.probs_stride + prob_j),
                     pw.payload.data.eq(softmax.o.payload.p), pw.payload.last.eq(softmax.o.payload.last)]
        with m.If(softmax.o.valid):
            m.d.sync += prob_j.eq(prob_j + 1)
            with m.If(softmax.o.payload.last):
                m.d.sync += [prob_j.eq(0), group.eq(group + 1)]
        with m.If(self.probs_arm):
            m.d.sync += [self.scores_pending.eq(1), rows_in.eq(0), group.eq(0)]
        m.d.comb += [tp.i.valid.eq(src_valid), tp.i.payload.data.eq(src_data), src_ready.eq(tp.i.ready)]
