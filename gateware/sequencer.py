"""The sequencer: runs the frame's program, one phase of tiles at a time."""

from types import SimpleNamespace

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .dma import command_layout
from .kv_buffers import kv_strides
from .phase import SLOT_BITS, SLOTS, AMode, Fetch, Phase, Position, Sink, Tile, WMode
from .program import tile_bytes
from .records import (ADDR_BITS, BEAT_BYTES, INSTR_BYTES, PARAM_BYTES, PROGRAM_MAGIC, Header, Instr,
                      LNParams, Op, OutMode)

__all__ = ["Sequencer", "Final", "ceil_div"]

DATA_WIDTH = 8 * BEAT_BYTES

#: The MoE combine's last pass: while ``active``, word ``addr`` of the accumulator and the
#: residual is read, and (``valid``) word ``word`` is written back.
Final = data.StructLayout({"active": 1, "valid": 1, "addr": 24, "word": 24})


def ceil_div(value, divisor):
    """``ceil(value / divisor)`` for a power-of-two constant ``divisor``: a shift, no divider."""
    assert divisor & (divisor - 1) == 0, "the array's rows and columns are powers of two"
    return (value + divisor - 1) >> (divisor.bit_length() - 1)


def act_write_layout(lanes):
    """One activation-memory write: a word of ``lanes`` int16."""
    return data.StructLayout({"addr": 24, "data": data.ArrayLayout(signed(16), lanes)})


def queue_write_layout(cap):
    """One write of the current expert's queue: entry ``addr`` is ``token`` with gate ``weight``."""
    return data.StructLayout({"addr": range(cap.max_tokens + 1), "token": range(cap.max_tokens), "weight": 16})


class Sequencer(wiring.Component):
    """Fetches the program from DRAM and runs it, cutting each matrix product into tiles.

    Per phase it writes the settings (``phase``), then pushes one :data:`~gateware.phase.Tile`
    per tile onto the descriptor stream of every unit the phase uses (all in one cycle, when all
    of them are ready) and one :data:`~gateware.phase.Fetch` per weight tile; then it waits at a
    barrier until every tile has retired. Instructions that only move data (LOAD16,
    LOAD_PATCHES, STORE16, LayerNorm parameters, ROUTES) it runs itself over the DMA.

    Parameters
    ----------
    cap : Capacity

    Attributes
    ----------
    start : In(1)
        Starts a frame (from the control registers); ``task``, ``weights_base``,
        ``image_base``, ``output_base`` are read while it runs.
    busy, done : Out(1)
        ``busy`` from start to the END instruction; ``done`` pulses at the end.
    cycles, stalls : Out(64)
        Cycles of the frame, and cycles in which ``stall`` was high (the W reader waiting for
        a weight tile).
    phase : Out(Phase)
        The current phase's settings; they change only while no tile is in flight.
    a_tile, w_tile, c_tile, r_tile, o_tile : Out(stream.Signature(Tile))
        Tile descriptors for the A reader, W reader, column stage, residual reader and writer.
        ``valid`` of each waits for ``ready`` of all the phase uses (they move together).
    a_busy : In(1)
        The A reader holds a descriptor.
    retire : In(1)
        A tile has left the datapath (its last column or word stored).
    scores_pending : In(1), probs_arm : Out(1)
        ``probs_arm`` pulses when a phase starts filling the probability buffer;
        ``scores_pending`` stays high until the softmax has taken its row's last score (A.V
        may then start: its reads of the buffer wait for each word to be written).
    fetch : Out(stream.Signature(Fetch))
        Weight-tile fetches; ``fetch_idle`` says no fetch is queued or in flight.
    dma_owner : Out(1)
        The sequencer uses the DMA read channel (``rd_cmd``, ``rd_data``); else the fetcher does.
    rd_cmd, rd_data, wr_cmd, wr_data, wr_busy
        The DMA's channels, as ``gateware.dma.DMA`` names them, flipped.
    act_write : Out(stream.Signature(act_write_layout(lanes), always_ready=True))
        Activation-memory writes of LOAD16 and LOAD_PATCHES; they take the port from the writer.
    store : In(stream.Signature({"data": ArrayLayout(signed(16), lanes), "last": 1}))
        The A reader's words during STORE16.
    routes : In(stream.Signature(unsigned(8 * BEAT_BYTES)))
        The routing recorder's beats (``gateware.routing.RoutingRecorder``), taken during
        ROUTES: as many as the instruction's ``count``, to DRAM at ``output_base + dram0``.
    experts, read, read_count, queue, clear
        The expert queue builder's ports, flipped; ``queue_write`` copies the current expert's
        queue into the queue memory the A reader and the combine read.
    ln_params : Out(stream.Signature(...))
        LayerNorm parameters, one channel per transfer.
    final : Out(Final)
        The MoE combine's last pass, rounding the accumulator into the residual stream.
    position : Out(Position)
        The instruction and expert being run, for a simulation's timeline.

    Latency: an instruction takes 3 cycles from its fetch to its first tile; a barrier adds
    2 cycles after the last tile retires. Throughput: one tile per cycle.
    """

    def __init__(self, cap, *, queues, ln_params):
        # ``queues``: the expert queue builder's signature; ``ln_params``: LayerNorm's ``params``.
        self.cap = cap
        N = cap.lanes
        word = data.StructLayout({"data": data.ArrayLayout(signed(16), N), "last": 1})
        super().__init__({
            "start": In(1), "task": In(8),
            "weights_base": In(ADDR_BITS), "image_base": In(ADDR_BITS), "output_base": In(ADDR_BITS),
            "busy": Out(1), "done": Out(1), "cycles": Out(64), "stalls": Out(64), "stall": In(1),
            "phase": Out(Phase),
            **{f"{unit}_tile": Out(stream.Signature(Tile)) for unit in "awcro"},
            "a_busy": In(1), "retire": In(1), "scores_pending": In(1), "probs_arm": Out(1),
            "fetch": Out(stream.Signature(Fetch)), "fetch_idle": In(1),
            "dma_owner": Out(1),
            "rd_cmd": Out(stream.Signature(command_layout(ADDR_BITS))),
            "rd_data": In(stream.Signature(data.StructLayout({"data": unsigned(DATA_WIDTH), "last": 1}))),
            "wr_cmd": Out(stream.Signature(command_layout(ADDR_BITS))),
            "wr_data": Out(stream.Signature(unsigned(DATA_WIDTH))),
            "wr_busy": In(1),
            "act_write": Out(stream.Signature(act_write_layout(N), always_ready=True)),
            "store": In(stream.Signature(word)),
            "routes": In(stream.Signature(unsigned(DATA_WIDTH))),
            "experts": In(queues.members["experts"].signature),
            "read": Out(queues.members["read"].signature.flip()), "read_count": In(range(cap.max_tokens + 1)),
            "queue": In(queues.members["queue"].signature),
            "clear": Out(1),
            "queue_write": Out(stream.Signature(queue_write_layout(cap), always_ready=True)),
            "ln_params": Out(ln_params.flip()),
            "final": Out(Final),
            "position": Out(Position),
        })

    def elaborate(self, platform):
        m = Module()
        _Build(self, m).build()
        return m

#: Channel blocks of a phase: its channels, blocks of ``cols``, the last block's index, columns and
#: words of ``lanes``.
_ColumnCount = data.StructLayout({"n_cols": 16, "n_cb": 12, "last_cb": 12, "last_cols": 12, "last_words": 8})
#: Where a phase's channel count comes from: a field of the instruction, or the lanes (LayerNorm).
_COLUMN_SOURCES = {
    "rows": lambda ins, lanes: ins.rows,
    "n_out": lambda ins, lanes: ins.n_out,
    "count": lambda ins, lanes: ins.count * lanes,
    "k_chunks": lambda ins, lanes: ins.k_chunks * lanes,
    "lanes": lambda ins, lanes: Const(lanes, 16),
}


class _Settings:
    """Writing the phase settings, and DMA reads, from inside the sequencer's states."""

    def start_tiles(self, n_tb, outer=0):
        """The issue loop over token blocks ``0 .. n_tb - 1`` and the phase's channel blocks,
        channel blocks innermost with ``outer``. Its last block is a register and "at block 0" a
        flag, so the loop's tests compare registers and read flags, no subtraction in front."""
        r = self.r
        self.m.d.sync += [r.tb.eq(0), r.last_tb.eq(n_tb - 1), r.cb.eq(0), r.tb_outer.eq(outer), r.at_tb0.eq(1)]

    def set_a(self, mode, base, stride, chunk0, chunks, rows, ln=0):
        a = self.ph.a
        self.m.d.sync += [a.mode.eq(mode), a.ln.eq(ln), a.base.eq(base), a.stride.eq(stride),
                          a.chunk0.eq(chunk0), a.chunks.eq(chunks), a.rows.eq(rows)]

    def set_w(self, mode, base=0, stride=0, chunk0=0, length=0, rows=0):
        w = self.ph.w
        self.m.d.sync += [w.mode.eq(mode), self.r.w_tiles.eq(mode == WMode.TILE), w.base.eq(base), w.stride.eq(stride), w.chunk0.eq(chunk0),
                          w.len.eq(length), w.rows.eq(rows)]

    def set_d(self, base, stride, chunk0, rows, offset=0):
        d = self.ph.d
        self.m.d.sync += [d.base.eq(base), d.stride.eq(stride), d.chunk0.eq(chunk0), d.rows.eq(rows),
                          d.offset.eq(offset)]

    def set_sink(self, sink, w=1, c=1, r=0, o=1, blocks=None, kv=0):
        regs, ins = self.r, self.ins
        self.m.d.sync += [self.ph.sink.eq(sink), regs.use_w.eq(w), regs.use_c.eq(c), regs.use_r.eq(r),
                          regs.use_o.eq(o), self.ph.blocks_per_tile.eq(self.G if blocks is None else blocks),
                          self.ph.kv.on.eq(kv), self.ph.kv.k_chunk.eq(ins.aux_chunk),
                          self.ph.kv.v_chunk.eq(ins.v_chunk)]

    def set_tiles(self, k_chunks, dram):
        r, N, C = self.r, self.N, self.C
        bytes_ = tile_bytes(k_chunks * N, C)
        self.m.d.sync += [r.fetch_base.eq(dram), r.tile_bytes.eq(bytes_), r.fetch_beats.eq(bytes_ // BEAT_BYTES),
                          r.fetch_rows.eq(k_chunks * N)]

    def set_columns(self, source, narrow=None, fix_params=None, mult=None, shift=None):
        """The phase's output channels: the instruction's field ``source`` (a key of
        :data:`_COLUMN_SOURCES`), with the channel blocks reckoned from it at DECODE."""
        ph, cols = self.ph, self.columns[source]
        stmts = [ph.n_cols.eq(cols.n_cols), self.n_cb.eq(cols.n_cb), self.last_cb.eq(cols.last_cb),
                 self.last_cols.eq(cols.last_cols), self.last_words.eq(cols.last_words)]
        for field, value in (("narrow", narrow), ("fix_params", fix_params), ("fix_mult", mult),
                             ("fix_shift", shift)):
            if value is not None:
                stmts.append(ph[field].eq(value))
        self.m.d.sync += stmts

    def start_gemm(self):
        """A GEMM's phase settings and its issue loop, from the instruction."""
        m, seq, ins, N = self.m, self.seq, self.ins, self.N
        self.set_a(AMode.ROWS, ins.src_base, ins.src_stride, 0, ins.k_chunks, ins.rows, ln=ins.ln)
        self.set_w(WMode.TILE, length=ins.k_chunks * N)
        self.set_tiles(ins.k_chunks, ins.dram0)
        self.set_d(ins.dst_base, ins.dst_stride, 0, ins.rows, ins.row_offset)
        self.set_columns("n_out", ins.narrow, 0, ins.mult2, ins.shift2)
        m.d.sync += seq.dma_owner.eq(0)
        with m.Switch(ins.out_mode):
            with m.Case(OutMode.WRITE):
                self.set_sink(Sink.WRITE)
            with m.Case(OutMode.RESIDUAL):
                self.set_sink(Sink.RESIDUAL, r=1)
            with m.Case(OutMode.GELU):
                self.set_sink(Sink.GELU)
            with m.Case(OutMode.QKV):
                self.set_sink(Sink.WRITE, kv=1)
        self.start_tiles(self.n_blocks)

    def set_prefetch(self, next_cb, fc2=None):
        """An expert phase's prefetch at its barrier: as many of the next phase's ``next_cb``
        tiles as the slots allow, from ``fc2`` (this expert's fc2) or the next expert's fc1."""
        r = self.r
        self.m.d.sync += r.pre_limit.eq(Mux(next_cb >= SLOTS - 1, SLOTS - 1, next_cb))
        if fc2 is not None:
            self.m.d.sync += r.fetch_next.eq(fc2)

    def read_dram(self, addr, beats):
        seq = self.seq
        self.m.d.comb += [seq.rd_cmd.valid.eq(1), seq.rd_cmd.payload.addr.eq(addr), seq.rd_cmd.payload.beats.eq(beats)]
        return seq.rd_cmd.ready

    def gather(self, acc, beat, per_word, index):
        """Take DRAM beats into ``acc``, the newest at the top; every ``per_word`` beats a word
        is complete: returns the word and that condition, and steps ``index``."""
        m, seq = self.m, self.seq
        new, complete = Cat(acc[DATA_WIDTH:], seq.rd_data.payload.data), Signal()
        m.d.comb += seq.rd_data.ready.eq(1)
        with m.If(seq.rd_data.valid):
            m.d.sync += [acc.eq(new), beat.eq(beat + 1)]
            with m.If(beat == per_word - 1):
                m.d.sync += [beat.eq(0), index.eq(index + 1)]
                m.d.comb += complete.eq(1)
        return new, complete


class _PhaseStates(_Settings):
    """The states of ATTENTION and MOE between their tile phases."""

    def _attention(self):
        """Per head: the scores of every query block through the softmax into the probability
        buffer (a row group per block), then A.V. (One phase for all blocks, not one each: the
        softmax's rows follow each other, its pass 2 of one block under pass 1 of the next, and
        one pair of barriers serves the head.)"""
        m, seq, r, ins, N = self.m, self.seq, self.r, self.ins, self.N
        with m.State("ATT_QK"):
            self.set_a(AMode.ROWS, ins.src_base, ins.src_stride, ins.src_chunk, ins.k_chunks, ins.rows)
            self.set_w(WMode.TRANS, 0, self.kv_strides[0], ins.aux_chunk, rows=ins.rows)
            self.set_sink(Sink.SOFTMAX, o=0)
            self.set_columns("rows", 0, 1, ins.mult, ins.shift)
            m.d.comb += seq.probs_arm.eq(1)
            m.d.sync += seq.dma_owner.eq(0)
            self.start_tiles(self.n_blocks, outer=1)
            m.d.sync += self.ph.last_row_group.eq(self.last_block)
            m.next = "ISSUE"
        with m.State("ATT_AV"):
            self.set_a(AMode.PROBS, 0, 0, 0, 0, ins.rows)
            self.set_w(WMode.DIRECT, 0, self.kv_strides[1], ins.v_chunk, length=ins.rows)
            self.set_d(ins.dst_base, ins.dst_stride, ins.dst_chunk, ins.rows)
            self.set_sink(Sink.WRITE)
            self.set_columns("k_chunks", narrow=1, mult=ins.mult2, shift=ins.shift2)
            self.start_tiles(self.n_blocks)
            m.next = "ISSUE"

    def _moe(self):
        """Gate, then for each active expert: its queue, fc1 (+GELU), fc2 into the combine."""
        m, seq, r, ins, N = self.m, self.seq, self.r, self.ins, self.N
        with m.State("MOE_GATE"):
            self.set_a(AMode.ROWS, ins.src_base, ins.src_stride, 0, ins.k_chunks, ins.rows)
            self.set_w(WMode.TILE, length=ins.k_chunks * N)
            self.set_tiles(ins.k_chunks, ins.dram0 + seq.task * ins.stride0)
            self.set_d(ins.dst_base, ins.dst_stride, 0, ins.rows)
            self.set_sink(Sink.ROUTER, o=0)
            self.set_columns("n_out")
            m.d.sync += seq.dma_owner.eq(0)
            # With more experts than columns, each token block needs every gate tile in turn.
            self.start_tiles(self.n_blocks, outer=ins.n_out > self.C)
            m.next = "ISSUE"
        with m.State("MOE_EXPERT"):
            m.d.comb += seq.experts.ready.eq(1)
            with m.If(seq.experts.valid):
                p = seq.experts.payload
                m.d.sync += [r.expert.eq(p.expert), r.elast.eq(p.last), r.qpos.eq(0)]
                m.next = "MOE_QREAD"
        with m.State("MOE_QREAD"):
            # The expert's token count, by its index (the queue builder's ``read_count``).
            m.d.comb += [seq.read.valid.eq(1), seq.read.payload.eq(r.expert)]
            m.d.sync += r.ecount.eq(seq.read_count)
            with m.If(seq.read.ready):
                m.next = "MOE_QLOAD"
        with m.State("MOE_QLOAD"):
            m.d.comb += seq.queue.ready.eq(1)
            with m.If(seq.queue.valid):
                q = seq.queue_write
                m.d.comb += [q.valid.eq(1), q.payload.addr.eq(r.qpos), q.payload.token.eq(seq.queue.payload.token),
                             q.payload.weight.eq(seq.queue.payload.weight)]
                m.d.sync += r.qpos.eq(r.qpos + 1)
                with m.If(seq.queue.payload.last):
                    m.next = "MOE_FC1"
        eb = (r.ecount + N - 1) // N
        with m.State("MOE_FC1"):
            self.set_a(AMode.LIST, ins.src_base, ins.src_stride, 0, ins.k_chunks, r.ecount)
            self.set_w(WMode.TILE, length=ins.k_chunks * N)
            self.set_tiles(ins.k_chunks, ins.dram1 + r.expert * ins.stride1)
            self.set_d(ins.aux_base, ins.aux_stride, 0, r.ecount)
            self.set_sink(Sink.GELU)
            self.set_columns("count", 0, 0, ins.mult2, ins.shift2)
            self.start_tiles(eb)
            self.set_prefetch(self.columns["k_chunks"].n_cb, fc2=ins.dram1 + r.expert * ins.stride1 + ins.dram2)
            m.next = "ISSUE"
        with m.State("MOE_FC2"):
            self.set_a(AMode.ROWS, ins.aux_base, ins.aux_stride, 0, ins.count, r.ecount)
            self.set_w(WMode.TILE, length=ins.count * N)
            self.set_tiles(ins.count, ins.dram1 + r.expert * ins.stride1 + ins.dram2)
            self.set_d(0, ins.dst_stride, 0, r.ecount)
            self.set_sink(Sink.COMBINE)
            self.set_columns("k_chunks", narrow=0)
            self.start_tiles(eb)
            self.set_prefetch(self.columns["count"].n_cb)
            m.next = "ISSUE"
        with m.State("MOE_FINAL"):
            total = ins.rows * ins.k_chunks
            fin = seq.final
            m.d.sync += [fin.valid.eq(r.word < total), fin.word.eq(r.word)]
            with m.If(r.word < total):
                m.d.sync += [r.word.eq(r.word + 1), fin.addr.eq(r.word + 1)]
            with m.Elif(~fin.valid):
                m.d.sync += fin.active.eq(0)
                m.d.comb += seq.clear.eq(1)
                m.next = "NEXT"


class _DataStates(_Settings):
    """The instructions the sequencer runs itself over the DMA."""

    def _loads(self):
        """LOAD16 (DRAM int16 words) and LOAD_PATCHES (the image), into the activation memory."""
        m, seq, r, ins, N = self.m, self.seq, self.r, self.ins, self.N
        wpb, bpw = self.words_per_beat, self.beats_per_word16
        act = seq.act_write
        with m.State("LOAD16"):
            with m.If(self.read_dram(seq.weights_base + ins.dram0, ins.rows * ins.k_chunks * bpw)):
                m.next = "LOAD16_DATA"
        with m.State("LOAD16_DATA"):
            new, complete = self.gather(r.wdata, r.sub, bpw, r.word)
            with m.If(complete):
                m.d.comb += [act.valid.eq(1), act.payload.addr.eq(self.ph.d.base + r.word),
                             act.payload.data.eq(new[-N * 16:])]
            with m.If(seq.rd_data.valid & seq.rd_data.payload.last):
                m.next = "NEXT"
        with m.State("PATCH_CMD"):
            # One command per channel of a band of patches: its 16 image rows are contiguous in
            # DRAM (a row is the image's width), and each row's beats go to consecutive patches.
            # (A command per row waited out the DRAM's latency 16 times as often.)
            with m.If(self.read_dram(r.img_plane, ins.count << 4)):
                m.d.sync += [r.sub.eq(0), r.patch_x.eq(0), r.beat_addr.eq(r.dst_row)]
                m.next = "PATCH_DATA"
        with m.State("PATCH_DATA"):
            m.d.comb += seq.rd_data.ready.eq(r.sub == wpb - 1)
            with m.If(seq.rd_data.valid):
                m.d.comb += [act.valid.eq(1), act.payload.addr.eq(r.beat_addr + r.sub)]
                bytes_ = seq.rd_data.payload.data
                for i in range(N):
                    m.d.comb += act.payload.data[i].eq(bytes_.word_select(r.sub * N + i, 8).as_signed())
                m.d.sync += r.sub.eq(r.sub + 1)
                with m.If(r.sub == wpb - 1):
                    m.d.sync += [r.sub.eq(0), r.beat_addr.eq(r.beat_addr + ins.dst_stride), r.patch_x.eq(r.patch_x + 1)]
                    with m.If(r.patch_x == r.last_patch_x):
                        # A patch's words hold its rows channel by channel: the next image row
                        # is the next words_per_beat of every patch.
                        m.d.sync += [r.patch_x.eq(0), r.dst_row.eq(r.dst_row + wpb), r.beat_addr.eq(r.dst_row + wpb)]
                    with m.If(seq.rd_data.payload.last):
                        m.next = "PATCH_NEXT"
        with m.State("PATCH_NEXT"):
            # Channels, then the next band of patches.
            m.next = "PATCH_CMD"
            with m.If(r.ch != r.last_ch):
                m.d.sync += [r.ch.eq(r.ch + 1), r.img_plane.eq(r.img_plane + ins.stride1)]
            with m.Else():
                next_band = r.img_band + (ins.stride0 << 4)
                m.d.sync += [r.ch.eq(0), r.band_first.eq(r.band_first + ins.count),
                             r.img_band.eq(next_band), r.img_plane.eq(next_band),
                             r.dst_band.eq(r.dst_band + r.band_words), r.dst_row.eq(r.dst_band + r.band_words)]
                with m.If(r.band_first + ins.count >= ins.rows):
                    m.next = "NEXT"

    def _store_and_layernorm(self):
        """STORE16 (the A reader's words to DRAM) and LAYERNORM's parameters, then its tiles."""
        m, seq, r, ins, N = self.m, self.seq, self.r, self.ins, self.N
        bpw = self.beats_per_word16
        m.d.sync += self.store_beats.eq(ins.rows * ins.k_chunks * bpw)
        with m.State("STORE_CMD"):
            m.d.comb += [seq.wr_cmd.valid.eq(1), seq.wr_cmd.payload.addr.eq(seq.output_base),
                         seq.wr_cmd.payload.beats.eq(self.store_beats)]
            with m.If(seq.wr_cmd.ready):
                m.d.comb += seq.a_tile.valid.eq(1)
                m.d.sync += r.sub.eq(0)
                m.next = "STORE_DATA"
        with m.State("STORE_DATA"):
            store = seq.store
            m.d.comb += [seq.wr_data.valid.eq(store.valid),
                         seq.wr_data.payload.eq(store.payload.data.as_value().word_select(r.sub, DATA_WIDTH)),
                         store.ready.eq(seq.wr_data.ready & (r.sub == bpw - 1))]
            with m.If(seq.wr_data.valid & seq.wr_data.ready):
                m.d.sync += r.sub.eq(Mux(r.sub == bpw - 1, 0, r.sub + 1))
                with m.If(store.payload.last & (r.sub == bpw - 1)):
                    m.next = "STORE_WAIT"
        with m.State("STORE_WAIT"):
            with m.If(~seq.wr_busy):
                m.next = "NEXT"
        with m.State("LN_CMD"):
            # LayerNorm's parameters are at dram1, in a LAYERNORM as in a GEMM through LayerNorm
            # (whose dram0 is its weight tiles): one field, no select in front of the DMA's
            # command (a select by the opcode made the board top's paths 9 deep).
            with m.If(self.read_dram(seq.weights_base + ins.dram1, ins.k_chunks * N * PARAM_BYTES // BEAT_BYTES)):
                m.d.sync += [r.word.eq(0), r.sub.eq(0)]
                m.next = "LN_PARAMS"
        with m.State("LN_PARAMS"):
            # Two records per beat, one LayerNorm parameter write per cycle.
            rec = LNParams(seq.rd_data.payload.data.word_select(r.sub, LNParams.size))
            p = seq.ln_params
            m.d.comb += [seq.rd_data.ready.eq(r.sub == 1), p.valid.eq(seq.rd_data.valid),
                         p.payload.index.eq(r.word), p.payload.gamma.eq(rec.gamma), p.payload.beta.eq(rec.beta)]
            with m.If(seq.rd_data.valid):
                m.d.sync += [r.sub.eq(r.sub ^ 1), r.word.eq(r.word + 1)]
                with m.If(seq.rd_data.payload.last & (r.sub == 1)):
                    with m.If(ins.op == Op.GEMM):
                        self.start_gemm()
                    with m.Else():
                        self.set_a(AMode.ROWS, ins.src_base, ins.src_stride, 0, ins.k_chunks, ins.rows)
                        self.set_d(ins.dst_base, ins.dst_stride, 0, ins.rows)
                        self.set_sink(Sink.LAYERNORM, w=0, c=0, blocks=ins.k_chunks)
                        self.set_columns("lanes")      # one tile per token block
                        m.d.sync += seq.dma_owner.eq(0)
                        self.start_tiles(self.n_blocks)
                    m.next = "ISSUE"


class _TileStates(_Settings):
    """The tile issue loop every MAC and LayerNorm phase runs, its descriptors and its barrier."""

    def _descriptors(self):
        """The tile and fetch descriptors the ISSUE state pushes, and the MoE prefetch."""
        m, seq, r, ins, N, C = self.m, self.seq, self.r, self.ins, self.N, self.C
        m.d.comb += r.need_fetch.eq(r.use_w & r.w_tiles & (r.tb_outer | r.at_tb0))
        last_tb, last_cb = r.tb == r.last_tb, r.cb == self.last_cb
        m.d.comb += r.last_tile.eq(last_tb & last_cb)
        tile = Signal(Tile)
        m.d.comb += [tile.tb.eq(r.tb), tile.cb.eq(r.cb),
                     tile.slot.eq(Mux(r.need_fetch, Mux(r.prefetched, r.pre_slot, r.slot), r.cur_slot)),
                     tile.release.eq(r.tb_outer | last_tb), tile.last.eq(r.last_tile),
                     tile.blocks.eq(Mux(last_cb, self.last_blocks, self.ph.blocks_per_tile)),
                     tile.cols.eq(Mux(last_cb, self.last_cols, C))]
        for unit in "awcro":
            m.d.comb += getattr(seq, f"{unit}_tile").payload.eq(tile)
        m.d.comb += [seq.fetch.payload.addr.eq(r.fetch_base + r.cb * r.tile_bytes),
                     seq.fetch.payload.beats.eq(r.fetch_beats), seq.fetch.payload.rows.eq(r.fetch_rows),
                     seq.fetch.payload.slot.eq(r.slot)]
        prefetch = Signal(Fetch)
        # The next expert's first fc1 tile, registered from the head of the expert list (which
        # holds still from the gate's end until MOE_EXPERT takes it): the product behind it
        # then ends at a register, not in the fetch queue (10 levels on the board top).
        m.d.sync += [r.next_fc1.eq(ins.dram1 + seq.experts.payload.expert * ins.stride1),
                     r.next_fc1_ok.eq(seq.experts.valid)]
        with m.If(self.ph.sink == Sink.GELU):
            m.d.comb += [prefetch.addr.eq(Mux(r.prefetched, r.pre_addr, r.fetch_next)),
                         prefetch.beats.eq(tile_bytes(ins.count * N, C) // BEAT_BYTES),
                         prefetch.rows.eq(ins.count * N)]
        with m.Else():
            m.d.comb += [prefetch.addr.eq(Mux(r.prefetched, r.pre_addr, r.next_fc1)),
                         prefetch.beats.eq(tile_bytes(ins.k_chunks * N, C) // BEAT_BYTES),
                         prefetch.rows.eq(ins.k_chunks * N)]
        # The next phase's first tiles, one after another from its first channel block, as many
        # as it has (at most one slot short of all: the last tile of this phase holds one;
        # ``pre_limit``, set with the phase).
        m.d.comb += [prefetch.slot.eq(r.slot), r.prefetched.eq(r.pre_count != 0),
                     r.pre_room.eq(r.pre_count != r.pre_limit)]
        with m.If(r.prefetch):
            m.d.comb += [seq.fetch.payload.eq(prefetch), seq.fetch.valid.eq(1)]
            m.d.sync += [r.slot.eq(r.slot + 1), r.pre_count.eq(r.pre_count + 1),
                         r.pre_addr.eq(prefetch.addr + prefetch.beats * BEAT_BYTES)]
            with m.If(~r.prefetched):
                m.d.sync += r.pre_slot.eq(r.slot)

    def _tiles(self):
        """The tile issue loop shared by every MAC and LayerNorm phase, and its barrier."""
        m, seq, r = self.m, self.seq, self.r
        with m.State("ISSUE"):
            tiles_ready = (seq.a_tile.ready & (~r.use_w | seq.w_tile.ready) & (~r.use_c | seq.c_tile.ready)
                           & (~r.use_r | seq.r_tile.ready) & (~r.use_o | seq.o_tile.ready))
            can = tiles_ready & (~r.need_fetch | r.prefetched | seq.fetch.ready)
            with m.If(can):
                m.d.comb += [seq.a_tile.valid.eq(1), seq.w_tile.valid.eq(r.use_w), seq.c_tile.valid.eq(r.use_c),
                             seq.r_tile.valid.eq(r.use_r), seq.o_tile.valid.eq(r.use_o),
                             r.issue.eq(r.use_o | r.use_c), seq.fetch.valid.eq(r.need_fetch & ~r.prefetched)]
                with m.If(r.need_fetch & r.prefetched):
                    m.d.sync += [r.cur_slot.eq(r.pre_slot), r.pre_slot.eq(r.pre_slot + 1),
                                 r.pre_count.eq(r.pre_count - 1)]
                with m.Elif(r.need_fetch):
                    m.d.sync += [r.slot.eq(r.slot + 1), r.cur_slot.eq(r.slot)]
                with m.If(r.last_tile):
                    m.next = "BARRIER"
                with m.If(r.tb_outer):
                    with m.If(r.cb == self.last_cb):
                        m.d.sync += [r.cb.eq(0), r.tb.eq(r.tb + 1), r.at_tb0.eq(0)]
                    with m.Else():
                        m.d.sync += r.cb.eq(r.cb + 1)
                with m.Else():
                    with m.If(r.tb == r.last_tb):
                        m.d.sync += [r.tb.eq(0), r.cb.eq(r.cb + 1), r.at_tb0.eq(1)]
                    with m.Else():
                        m.d.sync += [r.tb.eq(r.tb + 1), r.at_tb0.eq(0)]
        with m.State("BARRIER"):
            # A prefetch may still be in flight; every other fetch has been used by a retired tile.
            sink = self.ph.sink
            fetched = r.prefetched | seq.fetch_idle
            m.d.comb += r.prefetch.eq((self.ins.op == Op.MOE) & r.pre_room & seq.fetch.ready
                                      & ((sink == Sink.GELU) | (sink == Sink.COMBINE) & ~r.elast
                                         & seq.experts.valid & r.next_fc1_ok))
            none_out = r.issued == r.retired
            quiet = (none_out & ~seq.scores_pending & ~seq.a_busy & fetched
                     & (sink != Sink.ROUTER) | none_out & (sink == Sink.ROUTER) & seq.experts.valid)
            with m.If(quiet):
                m.next = "AFTER"
        with m.State("AFTER"):
            self._after()

    def _after(self):
        """Where a phase's barrier leads: the next part of ATTENTION or MOE, or the next instruction."""
        m, r, ins = self.m, self.r, self.ins
        with m.Switch(ins.op):
            with m.Case(Op.ATTENTION):
                with m.If(self.ph.a.mode == AMode.PROBS):
                    m.next = "NEXT"
                with m.Else():
                    m.next = "ATT_AV"
            with m.Case(Op.MOE):
                with m.Switch(self.ph.sink):
                    with m.Case(Sink.ROUTER):
                        m.next = "MOE_EXPERT"
                    with m.Case(Sink.GELU):
                        m.next = "MOE_FC2"
                    with m.Default():
                        with m.If(r.elast):
                            fin = self.seq.final
                            m.d.sync += [r.word.eq(0), fin.active.eq(1), fin.addr.eq(0)]
                            self.set_d(ins.dst_base, ins.dst_stride, 0, ins.rows)
                            m.next = "MOE_FINAL"
                        with m.Else():
                            m.next = "MOE_EXPERT"
            with m.Default():
                m.next = "NEXT"


class _RouteStates(_Settings):
    """ROUTES: the routing recorder's beats to DRAM."""

    def _routes(self):
        """One write command of ``count`` beats at ``output_base + dram0``, the recorder's words
        as its data; then the write's end (STORE_WAIT), so that a frame's routing is in DRAM
        when the host sees done, whichever instruction comes last."""
        m, seq, r, ins = self.m, self.seq, self.r, self.ins
        with m.State("ROUTES_CMD"):
            m.d.comb += [seq.wr_cmd.valid.eq(1), seq.wr_cmd.payload.addr.eq(seq.output_base + ins.dram0),
                         seq.wr_cmd.payload.beats.eq(ins.count)]
            with m.If(seq.wr_cmd.ready):
                # Counted down to zero: a test of the count's last value would be a subtraction
                # in front of the state's next-state logic.
                m.d.sync += r.word.eq(ins.count - 1)
                m.next = "ROUTES_DATA"
        with m.State("ROUTES_DATA"):
            routes = seq.routes
            m.d.comb += [seq.wr_data.valid.eq(routes.valid), seq.wr_data.payload.eq(routes.payload),
                         routes.ready.eq(seq.wr_data.ready)]
            with m.If(routes.valid & seq.wr_data.ready):
                m.d.sync += r.word.eq(r.word - 1)
                # The beat count is the instruction's, so the DMA gets exactly the beats it was promised.
                with m.If(r.word == 0):
                    m.next = "STORE_WAIT"


class _Build(_PhaseStates, _DataStates, _TileStates, _RouteStates):
    """The sequencer's registers and its FSM, one method per group of states."""

    def __init__(self, seq, m):
        self.seq, self.m, self.cap, self.N = seq, m, seq.cap, seq.cap.lanes
        self.C, self.G = seq.cap.cols, seq.cap.groups
        self.kv_strides = kv_strides(seq.cap)
        self.words_per_beat = BEAT_BYTES // self.N         # int8 words (N lanes) per DRAM beat
        self.beats_per_word16 = 2 * self.N // BEAT_BYTES   # DRAM beats per int16 word
        cap = self.cap
        self.ins, self.ph = Signal(Instr), Signal(Phase)
        self.n_cb, self.last_cb, self.last_cols = Signal(12), Signal(12), Signal(12)
        self.last_words, self.last_blocks = Signal(8), Signal(8)
        self.r = SimpleNamespace(
            pc=Signal(16), n_instr=Signal(16), prog_off=Signal(ADDR_BITS), beat=Signal(24),
            acc=Signal(INSTR_BYTES * 8),
            tb=Signal(12), cb=Signal(12), last_tb=Signal(12),
            # tb is 0 now: the fetch test reads a flag, not a compare.
            at_tb0=Signal(), w_tiles=Signal(init=1),
            tb_outer=Signal(), fetch_base=Signal(ADDR_BITS), fetch_beats=Signal(16), tile_bytes=Signal(32),
            fetch_rows=Signal(16),
            use_w=Signal(), use_c=Signal(), use_r=Signal(), use_o=Signal(),
            slot=Signal(SLOT_BITS),           # the weight-buffer slot the next fetch fills
            cur_slot=Signal(SLOT_BITS),
            # MoE: the next phase's first tiles (this expert's fc2, or the next expert's fc1)
            # are fetched while the current phase drains, so experts follow each other without
            # waiting for DRAM: ``pre_count`` of them (at most ``pre_limit``) from slot
            # ``pre_slot`` on, not yet taken by the next phase's tiles (``prefetched``: any), the
            # next at ``pre_addr``; the first at ``fetch_next`` (fc2's) or ``next_fc1``.
            prefetched=Signal(), pre_slot=Signal(SLOT_BITS), prefetch=Signal(),
            pre_count=Signal(range(SLOTS)), pre_limit=Signal(range(SLOTS)), pre_room=Signal(),
            pre_addr=Signal(ADDR_BITS), fetch_next=Signal(ADDR_BITS), next_fc1=Signal(ADDR_BITS),
            next_fc1_ok=Signal(),
            expert=Signal(range(cap.num_experts)), ecount=Signal(range(cap.max_tokens + 1)), elast=Signal(),
            qpos=Signal(range(cap.max_tokens + 1)),
            word=Signal(24), sub=Signal(4),
            # LOAD_PATCHES walks the image a row of pixels at a time with running addresses (no
            # multiplier or divider between the instruction and the DRAM/activation addresses).
            ch=Signal(8), patch_x=Signal(16), last_ch=Signal(16), last_patch_x=Signal(16),
            img_plane=Signal(ADDR_BITS), img_band=Signal(ADDR_BITS),
            dst_row=Signal(24), dst_band=Signal(24), beat_addr=Signal(24),
            band_first=Signal(16), band_words=Signal(24),
            wdata=Signal(2 * self.N * 16),
            issued=Signal(16), retired=Signal(16), issue=Signal(), need_fetch=Signal(), last_tile=Signal(),
            running=Signal(),
        )
        m.submodules.prog = prog = Memory(shape=Instr, depth=cap.max_program, init=[])
        self.prog_rd, self.prog_wr = prog.read_port(), prog.write_port()
        # Token blocks of the instruction, and that count less one: registered at DECODE with the
        # instruction, so no add and shift sits in front of the tile loop or the FSM's tests.
        self.n_blocks, self.last_block = Signal(12), Signal(12)
        # Each channel count a phase may take from the instruction, with its channel blocks,
        # reckoned at DECODE: a phase's settings then copy registers, and no addition or shift
        # sits behind the FSM's select of the count (they made the board top's paths 10 deep).
        self.columns = {source: Signal(_ColumnCount, name=f"cols_{source}") for source in _COLUMN_SOURCES}
        # STORE16's beats, a product of instruction fields, registered from the instruction in
        # DISPATCH: the DMA tests the command's length against its burst bound when it takes it.
        self.store_beats = Signal(24)

    def build(self):
        m, seq, r, N = self.m, self.seq, self.r, self.N
        ph = self.ph
        m.d.comb += [seq.phase.eq(ph), seq.phase.n_cb.eq(self.n_cb),
                     # The last channel block's words: what is left of the channels after the others.
                     self.last_blocks.eq(Mux(ph.sink == Sink.LAYERNORM, ph.blocks_per_tile, self.last_words)),
                     seq.phase.last_blocks.eq(self.last_blocks)]
        # Tiles issued and retired are two counters, each advanced by its own pulse, and none is
        # in flight when they are equal: the issue and the retirement (the end of the column
        # handshake) reach a counter's enable, not one adder they would both feed (9 levels).
        with m.If(r.issue):
            m.d.sync += r.issued.eq(r.issued + 1)
        with m.If(seq.retire):
            m.d.sync += r.retired.eq(r.retired + 1)
        m.d.comb += [seq.position.running.eq(r.running), seq.position.pc.eq(r.pc), seq.position.expert.eq(r.expert)]
        with m.If(seq.busy):
            m.d.sync += seq.cycles.eq(seq.cycles + 1)
        with m.If(seq.stall & seq.busy):
            m.d.sync += seq.stalls.eq(seq.stalls + 1)
        self._descriptors()
        with m.FSM():
            self._program()
            self._dispatch()
            self._tiles()
            self._attention()
            self._moe()
            self._loads()
            self._store_and_layernorm()
            self._routes()

    def _program(self):
        """Start, the header and the program into the program memory, then each instruction."""
        m, seq, r, cap = self.m, self.seq, self.r, self.cap
        beats_per_instr = INSTR_BYTES // BEAT_BYTES
        with m.State("IDLE"):
            with m.If(seq.start):
                m.d.sync += [seq.busy.eq(1), seq.cycles.eq(0), seq.stalls.eq(0), seq.dma_owner.eq(1), r.pc.eq(0)]
                m.next = "HEADER"
        with m.State("HEADER"):
            with m.If(self.read_dram(seq.weights_base, 1)):
                m.next = "HEADER_DATA"
        with m.State("HEADER_DATA"):
            m.d.comb += seq.rd_data.ready.eq(1)
            with m.If(seq.rd_data.valid):
                h = Header(seq.rd_data.payload.data)
                m.d.sync += [r.n_instr.eq(h.count), r.prog_off.eq(h.program)]
                with m.If((h.magic != PROGRAM_MAGIC) | (h.count > cap.max_program) | (h.count == 0)):
                    m.next = "FAULT"
                with m.Else():
                    m.next = "PROGRAM"
        with m.State("PROGRAM"):
            with m.If(self.read_dram(seq.weights_base + r.prog_off, r.n_instr * beats_per_instr)):
                m.d.sync += [r.beat.eq(0), r.pc.eq(0)]
                m.next = "PROGRAM_DATA"
        with m.State("PROGRAM_DATA"):
            new, complete = self.gather(r.acc, r.beat, beats_per_instr, r.pc)
            with m.If(complete):
                m.d.comb += [self.prog_wr.en.eq(1), self.prog_wr.addr.eq(r.pc), self.prog_wr.data.eq(new)]
            with m.If(seq.rd_data.valid & seq.rd_data.payload.last):
                m.d.sync += [r.pc.eq(0), r.running.eq(1)]
                m.next = "FETCH"
        with m.State("FETCH"):
            m.d.comb += [self.prog_rd.addr.eq(r.pc), self.prog_rd.en.eq(1)]
            m.next = "DECODE"
        with m.State("DECODE"):
            fetched = self.prog_rd.data
            blocks = ceil_div(fetched.rows, self.N)
            m.d.sync += [self.ins.eq(fetched), self.ph.ln_shift.eq(fetched.shift), self.ph.ln_eps.eq(fetched.eps),
                         self.n_blocks.eq(blocks), self.last_block.eq(blocks - 1)]
            for source, cols in self.columns.items():
                n_cols = _COLUMN_SOURCES[source](fetched, self.N)
                n_cb = ceil_div(n_cols, self.C)[:12]
                m.d.sync += [cols.n_cols.eq(n_cols), cols.n_cb.eq(n_cb), cols.last_cb.eq(n_cb - 1),
                             cols.last_cols.eq(n_cols - (n_cb - 1) * self.C),
                             cols.last_words.eq(ceil_div(n_cols, self.N) - (n_cb - 1) * self.G)]
            m.next = "DISPATCH"
        with m.State("NEXT"):
            m.d.sync += [r.pc.eq(r.pc + 1), seq.dma_owner.eq(1)]
            m.next = "FETCH"
        with m.State("FINISH"):
            m.d.sync += [seq.busy.eq(0), r.running.eq(0)]
            m.d.comb += seq.done.eq(1)
            m.next = "IDLE"
        with m.State("FAULT"):
            # A program this hardware cannot run: stop, never report done.
            m.d.sync += [seq.busy.eq(0), r.running.eq(0)]

    def _dispatch(self):
        m, seq, r, ins, N = self.m, self.seq, self.r, self.ins, self.N
        with m.State("DISPATCH"):
            with m.Switch(ins.op):
                with m.Case(Op.END):
                    m.next = "FINISH"
                with m.Case(Op.LOAD16):
                    m.d.sync += [r.word.eq(0), r.sub.eq(0)]
                    self.set_d(ins.dst_base, ins.dst_stride, 0, ins.rows)
                    m.next = "LOAD16"
                with m.Case(Op.LOAD_PATCHES):
                    # The walk's last patch of a band and last channel, registered for its tests.
                    m.d.sync += [r.ch.eq(0), r.band_first.eq(0), r.last_patch_x.eq(ins.count - 1),
                                 r.last_ch.eq(ins.n_out - 1), r.img_plane.eq(seq.image_base),
                                 r.img_band.eq(seq.image_base), r.dst_row.eq(ins.dst_base),
                                 r.dst_band.eq(ins.dst_base), r.band_words.eq(ins.count * ins.dst_stride)]
                    m.next = "PATCH_CMD"
                with m.Case(Op.STORE16):
                    self.set_a(AMode.WORDS, ins.src_base, ins.src_stride, 0, ins.k_chunks, ins.rows)
                    self.set_sink(Sink.WRITE, w=0, c=0, o=0)
                    m.next = "STORE_CMD"
                with m.Case(Op.LAYERNORM):
                    m.d.sync += r.word.eq(0)
                    m.next = "LN_CMD"
                with m.Case(Op.GEMM):
                    # Through LayerNorm: its parameters first (LN_CMD), then the same start.
                    with m.If(ins.ln):
                        m.d.sync += r.word.eq(0)
                        m.next = "LN_CMD"
                    with m.Else():
                        self.start_gemm()
                        m.next = "ISSUE"
                with m.Case(Op.ATTENTION):
                    m.next = "ATT_QK"
                with m.Case(Op.MOE):
                    m.next = "MOE_GATE"
                with m.Case(Op.ROUTES):
                    m.next = "ROUTES_CMD"
                with m.Default():
                    m.next = "FAULT"
