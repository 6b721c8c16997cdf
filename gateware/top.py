"""The whole accelerator: sequencer, on-chip buffers, the MAC array and the vector units, DMA.

The sequencer runs the program of ``gateware/program.py`` (compiled from the config and the
quantised artifact) one instruction at a time. Matrix products are cut into *tiles*: a block of
``lanes`` tokens by a block of ``lanes`` output channels, over the whole inner dimension. For each
tile the sequencer pushes one descriptor into the queue of every unit the phase uses; the units
then run on their own, joined only by their streams:

- the A reader streams the tile's activations (``lanes`` tokens per element, through a
  transposer, from any token list: a range or an expert's queue) or, for A.V, the probabilities;
- the W reader streams the weights from a double-buffered tile buffer that the fetcher fills from
  DRAM (one tile ahead), or K/V from the activation memory for attention;
- the MAC array multiplies; its columns (one output channel each) go to the post-processor with
  per-channel bias/multiplier/shift and, for residual adds, the old value read back by the
  residual reader; then to GELU, the softmax (into the probability buffer), the router (gate
  logits to top-k and the expert queues), or the MoE combine;
- the writer turns columns back into token words and stores them.

A phase (an instruction, or one part of ATTENTION and MOE) ends at a barrier: the sequencer waits
until every tile it issued has retired before it changes the routing for the next phase.
MoE runs expert by expert over the queues built from the gate: the sequencer asks the queue
builder for the next active expert, loads its queue, and runs fc1 (with GELU) on the queued
tokens and fc2 into a wide accumulator; after the last expert, the accumulator is rounded into
the residual stream. Experts without tokens are never fetched.
"""

import dataclasses
import enum

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.attention import PROB_FRAC
from golden.fixedpoint import RES_BITS
from golden.moe import GATE_FRAC

from .axi import AXI4LiteSignature, AXI4Signature
from .control import ControlRegisters
from .dma import DMA
from .expert_queue import ExpertQueueBuilder
from .gelu import GELU
from .layernorm import LayerNorm
from .mac_array import MACArray
from .postprocess import PostProcess
from .program import Capacity
from .records import (ADDR_BITS, BEAT_BYTES, INSTR_BYTES, PARAM_BYTES, PROGRAM_MAGIC, Header, Instr,
                      LNParams, Op, OutMode, TileParams)
from .router import Router
from .softmax import Softmax
from .transpose import Transpose

__all__ = ["Accelerator"]

DATA_WIDTH = 8 * BEAT_BYTES


class AMode(enum.IntEnum):
    ROWS = 0      # tokens row0.. of a region, transposed
    LIST = 1      # tokens named by the current expert queue, transposed
    PROBS = 2     # the probability buffer, as stored
    WORDS = 3     # region words in address order (for the store)


class WMode(enum.IntEnum):
    TILE = 0      # the weight-tile buffer
    TRANS = 1     # tokens of a region, transposed (K for QK^T)
    DIRECT = 2    # one word per token (V for A.V)


class Sink(enum.IntEnum):
    """Where the MAC array's columns go in a phase."""
    WRITE = 0
    RESIDUAL = 1
    GELU = 2
    SOFTMAX = 3
    ROUTER = 4
    COMBINE = 5
    LAYERNORM = 6   # no MAC: the A reader feeds the LayerNorm unit


Tile = data.StructLayout({"tb": 12, "cb": 12, "half": 1, "release": 1, "last": 1})
Fetch = data.StructLayout({"addr": ADDR_BITS, "beats": 16, "half": 1})


class Accelerator(wiring.Component):
    """The M3ViT accelerator, AXI4 manager to DRAM and AXI4-Lite control.

    Parameters
    ----------
    cap : Capacity
        Sizes of the on-chip memories and the array (``gateware.program.Capacity``); the default
        holds the edge-moe config on a 16 x 16 array.

    Attributes
    ----------
    axi : Out(AXI4Signature(addr_width=40, data_width=128))
        Weights, program and image in; features out.
    ctrl : In(AXI4LiteSignature(addr_width=12, data_width=32))
        ``gateware.control.ControlRegisters``: start, busy/done, task, base addresses, cycle and
        stall counters. A stall cycle is one in which the MAC array waits for a weight tile that
        DRAM has not delivered yet.
    """

    def __init__(self, cap=None):
        self.cap = cap = cap or Capacity()
        self.lanes = cap.lanes
        self.kmax = cap.max_k_chunks * cap.lanes
        super().__init__({
            "axi": Out(AXI4Signature(addr_width=ADDR_BITS, data_width=DATA_WIDTH)),
            "ctrl": In(AXI4LiteSignature(addr_width=12, data_width=32)),
        })

    def elaborate(self, platform):
        m = Module()
        cap, N = self.cap, self.lanes
        words_per_beat = BEAT_BYTES // N          # int8 words (N lanes) per DRAM beat
        beats_per_word16 = 2 * N // BEAT_BYTES    # DRAM beats per int16 word
        kmax_beats = self.kmax * N // BEAT_BYTES
        records_per_beat = BEAT_BYTES // PARAM_BYTES
        param_beats = N // records_per_beat       # a tile's TileParams records

        m.submodules.regs = regs = ControlRegisters(addr_width=12, base_width=ADDR_BITS,
                                                    capacity=dataclasses.asdict(cap))
        wiring.connect(m, wiring.flipped(self.ctrl), regs.bus)
        m.submodules.dma = dma = DMA(addr_width=ADDR_BITS, data_width=DATA_WIDTH)
        wiring.connect(m, wiring.flipped(self.axi), dma.axi)

        m.submodules.mac = mac = MACArray(N, N)
        m.submodules.post = post = PostProcess(N)
        m.submodules.gelu = gelu = GELU(N)
        m.submodules.softmax = softmax = Softmax(N, cap.max_tokens, PROB_FRAC)
        m.submodules.layernorm = ln = LayerNorm(N, cap.max_dim_chunks * N)
        m.submodules.router = router = Router(N, cap.num_experts, cap.top_k, cap.max_tokens)
        gate_mult, gate_shift = Signal(16), Signal(6)
        m.d.comb += [router.gate_mult.eq(gate_mult), router.gate_shift.eq(gate_shift)]
        m.submodules.queues = queues = ExpertQueueBuilder(cap.num_experts, cap.max_tokens, cap.top_k)
        wiring.connect(m, router.o, queues.i)
        m.submodules.ta = ta = Transpose(N, signed(16))
        m.submodules.tw = tw = Transpose(N, signed(16))
        m.submodules.tr = tr = Transpose(N, signed(16))
        m.submodules.to = to = Transpose(N, signed(16))

        # --- memories
        # The activation memory is held once per reader, all copies written together: the three
        # readers each take a word every cycle, and a URAM288 has two ports (one goes to the write).
        # In URAM a 16 K-word copy is 4 x 4 blocks, so the board build's three take 48 of the 96.
        act_copies = []
        for reader in ("a", "w", "r"):
            m.submodules[f"act_{reader}"] = copy = Memory(shape=data.ArrayLayout(signed(16), N),
                                                          depth=cap.act_words, init=[],
                                                          attrs={"ram_style": "ultra"})
            act_copies.append(copy)
        act_a, act_w, act_r = (copy.read_port() for copy in act_copies)
        act_wr = act_copies[0].write_port()
        for copy in act_copies[1:]:
            write = copy.write_port()
            m.d.comb += [write.addr.eq(act_wr.addr), write.data.eq(act_wr.data), write.en.eq(act_wr.en)]
        m.submodules.wbuf = wbuf = Memory(shape=data.ArrayLayout(signed(8), BEAT_BYTES),
                                          depth=2 * kmax_beats, init=[])
        wbuf_rd, wbuf_wr = wbuf.read_port(), wbuf.write_port()
        m.submodules.pbuf = pbuf = Memory(shape=unsigned(DATA_WIDTH), depth=N, init=[])
        pbuf_rd, pbuf_wr = pbuf.read_port(domain="comb"), pbuf.write_port()
        prob_shape = data.ArrayLayout(unsigned(PROB_FRAC + 1), N)
        m.submodules.probs = probs = Memory(shape=prob_shape, depth=cap.max_tokens, init=[])
        probs_rd, probs_wr = probs.read_port(), probs.write_port()
        acc_bits = RES_BITS + GATE_FRAC + max(cap.top_k, 1).bit_length() + 2
        m.submodules.moe_acc = moe_acc = Memory(shape=data.ArrayLayout(signed(acc_bits), N),
                                                depth=cap.max_tokens * cap.max_dim_chunks, init=[])
        acc_rd, acc_wr = moe_acc.read_port(), moe_acc.write_port()
        queue_entry = data.StructLayout({"token": range(cap.max_tokens), "weight": 16})
        m.submodules.qmem = qmem = Memory(shape=queue_entry, depth=cap.max_tokens, init=[])
        q_a, q_o, q_wr = qmem.read_port(domain="comb"), qmem.read_port(domain="comb"), qmem.write_port()
        m.submodules.prog = prog = Memory(shape=Instr, depth=cap.max_program, init=[])
        prog_rd, prog_wr = prog.read_port(), prog.write_port()

        # --- descriptor queues (sequencer -> units)
        def tile_queue(name):
            q = fifo.SyncFIFOBuffered(width=Tile.size, depth=4)
            m.submodules[name] = q
            return q, Tile(q.r_data)
        aq, a_t = tile_queue("aq")
        wq, w_t = tile_queue("wq")
        cq, c_t = tile_queue("cq")
        rq, r_t = tile_queue("rq")
        oq, o_t = tile_queue("oq")
        m.submodules.fq = fq = fifo.SyncFIFOBuffered(width=Fetch.size, depth=4)
        f_t = Fetch(fq.r_data)

        # --- phase settings, written by the sequencer between barriers
        ins = Signal(Instr)
        sink = Signal(Sink)
        a_mode, a_base, a_stride, a_chunk0 = Signal(AMode), Signal(24), Signal(8), Signal(8)
        a_chunks, a_rows = Signal(8), Signal(16)
        w_mode, w_base, w_stride, w_chunk0 = Signal(WMode), Signal(24), Signal(8), Signal(8)
        w_len, w_rows = Signal(16), Signal(16)
        d_base, d_stride, d_chunk0, d_rows, d_offset = Signal(24), Signal(8), Signal(8), Signal(16), Signal(8)
        n_cols, n_cb = Signal(16), Signal(12)
        fix_params, fix_mult, fix_shift = Signal(), Signal(16), Signal(6)
        narrow, blocks_per_tile = Signal(), Signal(8)
        # A weight-tile half is full from the end of its fetch until the column stage has used its
        # parameters for the last time; the W reader may read it only until it has streamed the
        # half's last tile (``w_spent``), so it never takes a stale tile for the next one.
        tile_full, w_spent = Signal(2), Signal(2)
        release_half, fill_half, spend_half = Signal(2), Signal(2), Signal(2)
        m.d.sync += [tile_full.eq((tile_full | fill_half) & ~release_half),
                     w_spent.eq((w_spent | spend_half) & ~fill_half)]
        outstanding = Signal(16)
        issue, retire = Signal(), Signal()
        m.d.sync += outstanding.eq(outstanding + issue - retire)
        probs_pending = Signal()
        stalls, cycles, busy = Signal(64), Signal(64), Signal()
        m.d.comb += [regs.cycles.eq(cycles), regs.stalls.eq(stalls), regs.busy.eq(busy)]
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)

        def clamp_rows(total, block):
            """Valid rows of token block ``block`` out of ``total`` (0..N)."""
            rem = Signal(signed(18))
            m.d.comb += rem.eq(total - block * N)
            return Mux(rem >= N, N, Mux(rem < 0, 0, rem))

        # ------------------------------------------------------------------ A reader
        a_c, a_r = Signal(16), Signal(range(N))
        a_valid_rows = Signal(range(N + 1))
        s1_valid, s1_zero, s1_last = Signal(), Signal(), Signal()
        a_out = stream.Signature(data.StructLayout({"data": data.ArrayLayout(signed(16), N), "last": 1})).create()
        a_dst_ready = Signal()
        a_en = Signal()
        m.d.comb += a_en.eq(~s1_valid | a_dst_ready)
        m.d.comb += [act_a.en.eq(a_en), probs_rd.en.eq(a_en)]
        a_gen, a_gen_last, a_gen_zero, a_addr = Signal(), Signal(), Signal(), Signal(24)
        a_row = Signal(16)
        m.d.comb += [a_valid_rows.eq(clamp_rows(a_rows, a_t.tb)), q_a.addr.eq(a_t.tb * N + a_r)]
        m.d.comb += a_row.eq(Mux(a_mode == AMode.LIST, q_a.data.token, a_t.tb * N + a_r))
        with m.Switch(a_mode):
            with m.Case(AMode.ROWS, AMode.LIST):
                m.d.comb += [a_gen.eq(aq.r_rdy),
                             a_addr.eq(a_base + a_row * a_stride + a_chunk0 + a_c),
                             a_gen_zero.eq(a_r >= a_valid_rows),
                             a_gen_last.eq((a_c == a_chunks - 1) & (a_r == N - 1))]
            with m.Case(AMode.PROBS):
                m.d.comb += [a_gen.eq(aq.r_rdy), a_addr.eq(a_c), a_gen_last.eq(a_c == a_rows - 1)]
            with m.Case(AMode.WORDS):
                m.d.comb += [a_gen.eq(aq.r_rdy), a_addr.eq(a_base + a_c),
                             a_gen_last.eq(a_c == a_rows * a_chunks - 1)]
        m.d.comb += [act_a.addr.eq(a_addr), probs_rd.addr.eq(a_addr)]
        _advance_read(m, N, (a_c, a_r), (s1_valid, s1_zero, s1_last), a_gen & a_en, a_en,
                      a_gen_zero, a_gen_last, a_mode.matches(AMode.ROWS, AMode.LIST), aq.r_en)
        a_word = Signal(data.ArrayLayout(signed(16), N))
        with m.If(a_mode == AMode.PROBS):
            m.d.comb += [a_word[i].eq(probs_rd.data[i]) for i in range(N)]
        with m.Elif(~s1_zero):
            m.d.comb += a_word.eq(act_a.data)
        transposed_a = a_mode.matches(AMode.ROWS, AMode.LIST)
        m.d.comb += [ta.i.payload.data.eq(a_word), ta.i.payload.last.eq(s1_last),
                     ta.i.valid.eq(s1_valid & transposed_a)]
        # a_out: the A stream, transposed or as read
        with m.If(transposed_a):
            m.d.comb += [a_dst_ready.eq(ta.i.ready), a_out.valid.eq(ta.o.valid),
                         a_out.payload.eq(ta.o.payload), ta.o.ready.eq(a_out.ready)]
        with m.Else():
            m.d.comb += [a_out.valid.eq(s1_valid), a_out.payload.data.eq(a_word),
                         a_out.payload.last.eq(s1_last), a_dst_ready.eq(a_out.ready)]

        # ------------------------------------------------------------------ W reader
        w_c, w_r = Signal(16), Signal(range(N))
        t1_valid, t1_zero, t1_last, t1_sub = Signal(), Signal(), Signal(), Signal(range(max(words_per_beat, 2)))
        w_out = stream.Signature(data.StructLayout({"data": data.ArrayLayout(signed(16), N), "last": 1})).create()
        w_dst_ready, w_en = Signal(), Signal()
        m.d.comb += [w_en.eq(~t1_valid | w_dst_ready), act_w.en.eq(w_en), wbuf_rd.en.eq(w_en)]
        w_gen, w_gen_last, w_gen_zero, w_addr = Signal(), Signal(), Signal(), Signal(24)
        w_valid_rows = Signal(range(N + 1))
        m.d.comb += w_valid_rows.eq(clamp_rows(w_rows, w_t.cb))
        with m.Switch(w_mode):
            with m.Case(WMode.TILE):
                ready = tile_full.bit_select(w_t.half, 1) & ~w_spent.bit_select(w_t.half, 1)
                m.d.comb += [w_gen.eq(wq.r_rdy & ready),
                             wbuf_rd.addr.eq(w_t.half * kmax_beats + w_c // words_per_beat),
                             w_gen_last.eq(w_c == w_len - 1)]
                with m.If(wq.r_rdy & ~ready & busy):
                    m.d.sync += stalls.eq(stalls + 1)
            with m.Case(WMode.TRANS):
                m.d.comb += [w_gen.eq(wq.r_rdy),
                             w_addr.eq(w_base + (w_t.cb * N + w_r) * w_stride + w_chunk0 + w_c),
                             w_gen_zero.eq(w_r >= w_valid_rows),
                             w_gen_last.eq((w_c == a_chunks - 1) & (w_r == N - 1))]
            with m.Case(WMode.DIRECT):
                m.d.comb += [w_gen.eq(wq.r_rdy), w_addr.eq(w_base + w_c * w_stride + w_chunk0 + w_t.cb),
                             w_gen_last.eq(w_c == w_len - 1)]
        m.d.comb += act_w.addr.eq(w_addr)
        _advance_read(m, N, (w_c, w_r), (t1_valid, t1_zero, t1_last), w_gen & w_en, w_en,
                      w_gen_zero, w_gen_last, w_mode == WMode.TRANS, wq.r_en)
        with m.If(w_gen & w_en):
            m.d.sync += t1_sub.eq(w_c % words_per_beat if words_per_beat > 1 else 0)
            with m.If(w_gen_last & (w_mode == WMode.TILE) & w_t.release):
                m.d.comb += spend_half.eq(1 << w_t.half)
        w_word = Signal(data.ArrayLayout(signed(16), N))
        with m.If(w_mode == WMode.TILE):
            for i in range(N):
                if words_per_beat > 1:
                    m.d.comb += w_word[i].eq(wbuf_rd.data.as_value().word_select(t1_sub * N + i, 8).as_signed())
                else:
                    m.d.comb += w_word[i].eq(wbuf_rd.data[i])
        with m.Elif(~t1_zero):
            m.d.comb += w_word.eq(act_w.data)
        m.d.comb += [tw.i.payload.data.eq(w_word), tw.i.payload.last.eq(t1_last),
                     tw.i.valid.eq(t1_valid & (w_mode == WMode.TRANS))]
        with m.If(w_mode == WMode.TRANS):
            m.d.comb += [w_dst_ready.eq(tw.i.ready), w_out.valid.eq(tw.o.valid),
                         w_out.payload.eq(tw.o.payload), tw.o.ready.eq(w_out.ready)]
        with m.Else():
            m.d.comb += [w_out.valid.eq(t1_valid), w_out.payload.data.eq(w_word),
                         w_out.payload.last.eq(t1_last), w_dst_ready.eq(w_out.ready)]

        # ------------------------------------------------------------------ join -> MAC / LN
        # The MAC array wants its operands from registers; the transposers and read stages are.
        with m.If(sink == Sink.LAYERNORM):
            m.d.comb += [ln.i.valid.eq(a_out.valid), a_out.ready.eq(ln.i.ready),
                         ln.i.payload.last.eq(a_out.payload.last)]
            m.d.comb += [ln.i.payload.x[i].eq(a_out.payload.data[i]) for i in range(N)]
        with m.Elif(a_mode != AMode.WORDS):
            both = a_out.valid & w_out.valid
            m.d.comb += [mac.i.valid.eq(both), a_out.ready.eq(both & mac.i.ready),
                         w_out.ready.eq(both & mac.i.ready), mac.i.payload.last.eq(a_out.payload.last)]
            m.d.comb += [mac.i.payload.a[i].eq(a_out.payload.data[i]) for i in range(N)]
            m.d.comb += [mac.i.payload.w[i].eq(w_out.payload.data[i]) for i in range(N)]

        # ------------------------------------------------------------------ residual reader
        r_r = Signal(range(N))
        u1_valid, u1_zero = Signal(), Signal()
        r_en = Signal()
        r_valid_rows = Signal(range(N + 1))
        m.d.comb += r_valid_rows.eq(clamp_rows(d_rows, r_t.tb))
        m.d.comb += [r_en.eq(~u1_valid | tr.i.ready), act_r.en.eq(r_en)]
        fin_active = Signal()
        fin_addr = Signal(24)
        with m.If(fin_active):
            m.d.comb += act_r.addr.eq(d_base + fin_addr)
        with m.Else():
            m.d.comb += act_r.addr.eq(d_base + (r_t.tb * N + r_r + d_offset) * d_stride + d_chunk0 + r_t.cb)
        with m.If(rq.r_rdy & r_en & ~fin_active):
            m.d.sync += [u1_valid.eq(1), u1_zero.eq(r_r >= r_valid_rows), r_r.eq(r_r + 1)]
            with m.If(r_r == N - 1):
                m.d.sync += r_r.eq(0)
                m.d.comb += rq.r_en.eq(1)
        with m.Elif(r_en):
            m.d.sync += u1_valid.eq(0)
        m.d.comb += [tr.i.valid.eq(u1_valid), tr.i.payload.data.eq(Mux(u1_zero, 0, act_r.data))]

        # ------------------------------------------------------------------ column stage
        col = Signal(range(N))
        cols_valid = Signal(range(N + 1))
        rem_cols = Signal(signed(18))
        m.d.comb += [rem_cols.eq(n_cols - c_t.cb * N),
                     cols_valid.eq(Mux(rem_cols >= N, N, Mux(rem_cols < 0, 0, rem_cols)))]
        keep = col < cols_valid
        m.d.comb += pbuf_rd.addr.eq(c_t.half * param_beats + col // records_per_beat)
        record = TileParams(pbuf_rd.data.word_select(col % records_per_beat, TileParams.size))
        col_taken = Signal()
        with m.If(sink == Sink.ROUTER):
            m.d.comb += [router.i.valid.eq(mac.o.valid & cq.r_rdy & keep),
                         router.i.payload.last.eq((c_t.cb == n_cb - 1) & (col == cols_valid - 1)),
                         router.i.payload.token_base.eq(c_t.tb * N),
                         router.i.payload.valid_lanes.eq(clamp_rows(d_rows, c_t.tb)),
                         router.i.payload.final.eq(c_t.last),
                         mac.o.ready.eq(cq.r_rdy & (router.i.ready | ~keep)),
                         col_taken.eq(mac.o.valid & cq.r_rdy & (router.i.ready | ~keep))]
            m.d.comb += [router.i.payload.logits[i].eq(mac.o.payload.data[i]) for i in range(N)]
        with m.Elif(sink != Sink.LAYERNORM):
            need_r = sink == Sink.RESIDUAL
            ok = mac.o.valid & cq.r_rdy & (~need_r | tr.o.valid)
            m.d.comb += [post.i.valid.eq(ok & keep),
                         post.i.payload.acc.eq(mac.o.payload.data),
                         post.i.payload.bias.eq(Mux(fix_params, 0, record.bias)),
                         post.i.payload.mult.eq(Mux(fix_params, fix_mult, record.mult)),
                         post.i.payload.shift.eq(Mux(fix_params, fix_shift, record.shift)),
                         post.i.payload.add_residual.eq(need_r),
                         post.i.payload.narrow.eq(narrow),
                         col_taken.eq(ok & (post.i.ready | ~keep)),
                         mac.o.ready.eq(col_taken),
                         tr.o.ready.eq(col_taken & need_r)]
            m.d.comb += [post.i.payload.residual[i].eq(tr.o.payload.data[i]) for i in range(N)]
        with m.If(col_taken):
            m.d.sync += col.eq(col + 1)
            with m.If(col == N - 1):
                m.d.sync += col.eq(0)
                m.d.comb += cq.r_en.eq(1)
                with m.If(c_t.release):
                    m.d.comb += release_half.eq(1 << c_t.half)
                with m.If(sink.matches(Sink.SOFTMAX, Sink.ROUTER)):
                    m.d.comb += retire.eq(1)

        # ------------------------------------------------------------------ post -> units
        key = Signal(16)
        prob_j = Signal(16)
        to_src_valid, to_src_data = Signal(), Signal(data.ArrayLayout(signed(16), N))
        to_src_ready = Signal()
        with m.Switch(sink):
            with m.Case(Sink.GELU):
                m.d.comb += [gelu.i.valid.eq(post.o.valid), gelu.i.payload.eq(post.o.payload.data),
                             post.o.ready.eq(gelu.i.ready), gelu.mult.eq(fix_mult), gelu.shift.eq(fix_shift),
                             to_src_valid.eq(gelu.o.valid), gelu.o.ready.eq(to_src_ready)]
                m.d.comb += [to_src_data[i].eq(gelu.o.payload[i]) for i in range(N)]
            with m.Case(Sink.SOFTMAX):
                m.d.comb += [softmax.i.valid.eq(post.o.valid), softmax.i.payload.u.eq(post.o.payload.data),
                             softmax.i.payload.last.eq(key == a_rows - 1), post.o.ready.eq(softmax.i.ready)]
                with m.If(softmax.i.valid & softmax.i.ready):
                    m.d.sync += key.eq(Mux(key == a_rows - 1, 0, key + 1))
            with m.Case(Sink.LAYERNORM):
                m.d.comb += [to_src_valid.eq(ln.o.valid), ln.o.ready.eq(to_src_ready)]
                m.d.comb += [to_src_data[i].eq(ln.o.payload.y[i]) for i in range(N)]
            with m.Case(Sink.WRITE, Sink.RESIDUAL, Sink.COMBINE):
                m.d.comb += [to_src_valid.eq(post.o.valid), to_src_data.eq(post.o.payload.data),
                             post.o.ready.eq(to_src_ready)]
        m.d.comb += [ln.affine_shift.eq(ins.shift), ln.eps_term.eq(ins.eps)]
        # Softmax rows go straight into the probability buffer: word j is key j of every query.
        m.d.comb += [softmax.o.ready.eq(1), probs_wr.en.eq(softmax.o.valid), probs_wr.addr.eq(prob_j),
                     probs_wr.data.eq(softmax.o.payload.p)]
        with m.If(softmax.o.valid):
            m.d.sync += prob_j.eq(prob_j + 1)
            with m.If(softmax.o.payload.last):
                m.d.sync += [prob_j.eq(0), probs_pending.eq(0)]
        m.d.comb += [to.i.valid.eq(to_src_valid), to.i.payload.data.eq(to_src_data), to_src_ready.eq(to.i.ready)]

        # ------------------------------------------------------------------ writer / combine
        o_r, o_blk = Signal(range(N)), Signal(8)
        o_valid_rows = Signal(range(N + 1))
        m.d.comb += [o_valid_rows.eq(clamp_rows(d_rows, o_t.tb)), q_o.addr.eq(o_t.tb * N + o_r)]
        comb_valid, comb_addr = Signal(), Signal(range(cap.max_tokens * cap.max_dim_chunks))
        comb_g, comb_o = Signal(16), Signal(data.ArrayLayout(signed(16), N))
        fin_valid, fin_word = Signal(), Signal(24)
        word_taken = to.o.valid & oq.r_rdy
        m.d.comb += to.o.ready.eq(oq.r_rdy)
        with m.If(word_taken):
            m.d.sync += o_r.eq(o_r + 1)
            with m.If(o_r == N - 1):
                m.d.sync += [o_r.eq(0), o_blk.eq(o_blk + 1)]
                with m.If(o_blk == blocks_per_tile - 1):
                    m.d.sync += o_blk.eq(0)
                    m.d.comb += [oq.r_en.eq(1), retire.eq(1)]
        with m.If(fin_active):
            # residual = sat16(residual + round(acc / 2**GATE_FRAC)); the accumulator restarts at 0
            m.d.comb += [acc_rd.en.eq(1), acc_rd.addr.eq(fin_addr)]
            m.d.comb += [acc_wr.en.eq(fin_valid), acc_wr.addr.eq(fin_word), act_wr.en.eq(fin_valid),
                         act_wr.addr.eq(d_base + fin_word)]
            for i in range(N):
                s = Signal(signed(acc_bits + 1), name=f"fin_sum{i}")
                m.d.comb += s.eq(act_r.data[i] + ((acc_rd.data[i] + (1 << (GATE_FRAC - 1))) >> GATE_FRAC))
                m.d.comb += act_wr.data[i].eq(Mux(s > 32767, 32767, Mux(s < -32768, -32768, s)))
        with m.Elif(sink == Sink.COMBINE):
            m.d.comb += [acc_rd.en.eq(1), acc_rd.addr.eq(q_o.data.token * d_stride + d_chunk0 + o_t.cb)]
            m.d.sync += [comb_valid.eq(word_taken & (o_r < o_valid_rows)), comb_addr.eq(acc_rd.addr),
                         comb_g.eq(q_o.data.weight), comb_o.eq(to.o.payload.data)]
            m.d.comb += [acc_wr.en.eq(comb_valid), acc_wr.addr.eq(comb_addr)]
            m.d.comb += [acc_wr.data[i].eq(acc_rd.data[i] + comb_g * comb_o[i]) for i in range(N)]
        with m.Else():
            m.d.comb += [act_wr.addr.eq(d_base + (o_t.tb * N + o_r + d_offset) * d_stride + d_chunk0 + o_t.cb + o_blk),
                         act_wr.data.eq(to.o.payload.data),
                         act_wr.en.eq(word_taken & (o_r < o_valid_rows))]

        # ------------------------------------------------------------------ fetcher
        # A tile's read command goes out as soon as its half is free, while the other half's data
        # may still be arriving: the DRAM latency then overlaps the previous transfer instead of
        # adding to every tile. Fetches alternate halves (the sequencer flips ``half`` on each),
        # and DRAM answers in order, so the half being received flips after each tile.
        f_beat, f_half = Signal(16), Signal()
        f_pending = Signal(2)     # per half: a read command issued, its last beat not yet received
        f_busy = Signal()
        f_issued, f_received = Signal(2), Signal(2)
        m.d.comb += f_busy.eq(f_pending.any())
        m.d.sync += f_pending.eq((f_pending | f_issued) & ~f_received)
        seq_dma = Signal()        # the sequencer owns the DMA read channel (no tiles in flight)
        seq_rd_cmd_valid, seq_rd_addr, seq_rd_beats = Signal(), Signal(ADDR_BITS), Signal(24)
        seq_rd_ready = Signal()
        with m.If(seq_dma):
            m.d.comb += [dma.rd_cmd.valid.eq(seq_rd_cmd_valid), dma.rd_cmd.payload.addr.eq(seq_rd_addr),
                         dma.rd_cmd.payload.beats.eq(seq_rd_beats), dma.rd_data.ready.eq(seq_rd_ready)]
        with m.Else():
            free = ~(tile_full | f_pending).bit_select(f_t.half, 1)
            with m.If(fq.r_rdy & free):
                m.d.comb += [dma.rd_cmd.valid.eq(1), dma.rd_cmd.payload.addr.eq(regs.weights_base + f_t.addr),
                             dma.rd_cmd.payload.beats.eq(f_t.beats)]
                with m.If(dma.rd_cmd.ready):
                    m.d.comb += [fq.r_en.eq(1), f_issued.eq(1 << f_t.half)]
            m.d.comb += dma.rd_data.ready.eq(f_busy)
            with m.If(f_busy & dma.rd_data.valid):
                m.d.sync += f_beat.eq(f_beat + 1)
                with m.If(f_beat < param_beats):
                    m.d.comb += [pbuf_wr.en.eq(1), pbuf_wr.addr.eq(f_half * (N // 2) + f_beat),
                                 pbuf_wr.data.eq(dma.rd_data.payload.data)]
                    # The gate's requantisation is one (mult, shift) per task: every record holds it.
                    with m.If((f_beat == 0) & (sink == Sink.ROUTER)):
                        first = TileParams(dma.rd_data.payload.data[:TileParams.size])
                        m.d.sync += [gate_mult.eq(first.mult), gate_shift.eq(first.shift)]
                with m.Else():
                    m.d.comb += [wbuf_wr.en.eq(1), wbuf_wr.addr.eq(f_half * kmax_beats + f_beat - param_beats),
                                 wbuf_wr.data.eq(dma.rd_data.payload.data)]
                with m.If(dma.rd_data.payload.last):
                    m.d.sync += [f_beat.eq(0), f_half.eq(~f_half)]
                    m.d.comb += [fill_half.eq(1 << f_half), f_received.eq(1 << f_half)]

        # ------------------------------------------------------------------ sequencer
        # The datapath's signals by name: the sequencer drives them, and debugging testbenches
        # may watch them.
        self.probe = dict(locals())
        self._sequencer(m, self.probe)
        return m

    def _sequencer(self, m, u):
        """The instruction loop; ``u`` holds the datapath's signals by name."""
        cap, N = self.cap, self.lanes
        g = type("U", (), u)
        regs, dma, ins = g.regs, g.dma, g.ins
        prog_rd, prog_wr = g.prog_rd, g.prog_wr
        beats_per_instr = INSTR_BYTES // BEAT_BYTES
        words_per_beat, beats_per_word16 = g.words_per_beat, g.beats_per_word16

        pc, n_instr, prog_off = Signal(16), Signal(16), Signal(ADDR_BITS)
        beat, acc = Signal(24), Signal(INSTR_BYTES * 8)
        tb, cb, tb_end, n_tb = Signal(12), Signal(12), Signal(12), Signal(12)
        tb_outer, fetch_base, fetch_beats = Signal(), Signal(ADDR_BITS), Signal(16)
        tile_bytes = Signal(32)
        use_w, use_c, use_r, use_o = Signal(), Signal(), Signal(), Signal()
        half = Signal()              # the half the next fetch fills
        cur_half = Signal()
        # MoE: the next phase's first tile (this expert's fc2, or the next expert's fc1) is fetched
        # while the current phase drains, so experts follow each other without waiting for DRAM.
        prefetched, pre_half = Signal(), Signal()
        att_tb = Signal(12)
        expert, ecount, elast = Signal(range(cap.num_experts)), Signal(range(cap.max_tokens + 1)), Signal()
        qpos = Signal(range(cap.max_tokens + 1))
        word, sub = Signal(24), Signal(4)
        # LOAD_PATCHES walks the image a row of pixels at a time with running addresses (no
        # multiplier or divider between the instruction and the DRAM/activation addresses).
        ch, yy = Signal(8), Signal(5)
        img_row, img_plane, img_band = Signal(ADDR_BITS), Signal(ADDR_BITS), Signal(ADDR_BITS)
        dst_row, dst_band, beat_addr = Signal(24), Signal(24), Signal(24)
        band_first, band_words = Signal(16), Signal(24)
        wdata = Signal(2 * N * 16)
        done = Signal()
        m.d.comb += [regs.done.eq(done)]
        m.d.comb += [g.n_cb.eq((g.n_cols + N - 1) // N)]

        tiles_ready = (g.aq.w_rdy & (~use_w | g.wq.w_rdy) & (~use_c | g.cq.w_rdy) & (~use_r | g.rq.w_rdy)
                       & (~use_o | g.oq.w_rdy))
        first_tb = tb == 0
        need_fetch = Signal()
        m.d.comb += need_fetch.eq(use_w & (g.w_mode == WMode.TILE) & (tb_outer | first_tb))
        last_tile = Signal()
        m.d.comb += last_tile.eq(Mux(tb_outer, (tb == tb_end - 1) & (cb == g.n_cb - 1),
                                     (cb == g.n_cb - 1) & (tb == tb_end - 1)))
        tile_payload = Signal(Tile)
        m.d.comb += [tile_payload.tb.eq(tb), tile_payload.cb.eq(cb),
                     tile_payload.half.eq(Mux(need_fetch, Mux(prefetched, pre_half, half), cur_half)),
                     tile_payload.release.eq(tb_outer | (tb == tb_end - 1)), tile_payload.last.eq(last_tile)]
        for q in (g.aq, g.wq, g.cq, g.rq, g.oq):
            m.d.comb += q.w_data.eq(tile_payload)
        fetch_payload = Signal(Fetch)
        m.d.comb += [fetch_payload.addr.eq(fetch_base + cb * tile_bytes), fetch_payload.beats.eq(fetch_beats),
                     fetch_payload.half.eq(half), g.fq.w_data.eq(fetch_payload)]
        prefetch, prefetch_payload = Signal(), Signal(Fetch)
        next_expert = g.queues.experts.payload.expert
        with m.If(g.sink == Sink.GELU):
            m.d.comb += [prefetch_payload.addr.eq(ins.dram1 + expert * ins.stride1 + ins.dram2),
                         prefetch_payload.beats.eq((PARAM_BYTES * N + ins.count * N * N) // BEAT_BYTES)]
        with m.Else():
            m.d.comb += [prefetch_payload.addr.eq(ins.dram1 + next_expert * ins.stride1),
                         prefetch_payload.beats.eq((PARAM_BYTES * N + ins.k_chunks * N * N) // BEAT_BYTES)]
        m.d.comb += prefetch_payload.half.eq(half)
        with m.If(prefetch):
            m.d.comb += [g.fq.w_data.eq(prefetch_payload), g.fq.w_en.eq(1)]
            m.d.sync += [half.eq(~half), pre_half.eq(half), prefetched.eq(1)]

        def start_tiles(tb0, tb1, outer=0):
            m.d.sync += [tb.eq(tb0), tb_end.eq(tb1), n_tb.eq(tb1), cb.eq(0), tb_outer.eq(outer)]

        def set_a(mode, base, stride, chunk0, chunks, rows):
            m.d.sync += [g.a_mode.eq(mode), g.a_base.eq(base), g.a_stride.eq(stride), g.a_chunk0.eq(chunk0),
                         g.a_chunks.eq(chunks), g.a_rows.eq(rows)]

        def set_w(mode, base=0, stride=0, chunk0=0, length=0, rows=0):
            m.d.sync += [g.w_mode.eq(mode), g.w_base.eq(base), g.w_stride.eq(stride), g.w_chunk0.eq(chunk0),
                         g.w_len.eq(length), g.w_rows.eq(rows)]

        def set_d(base, stride, chunk0, rows, offset=0):
            m.d.sync += [g.d_base.eq(base), g.d_stride.eq(stride), g.d_chunk0.eq(chunk0), g.d_rows.eq(rows),
                         g.d_offset.eq(offset)]

        def set_sink(sink, w=1, c=1, r=0, o=1, blocks=1):
            m.d.sync += [g.sink.eq(sink), use_w.eq(w), use_c.eq(c), use_r.eq(r), use_o.eq(o),
                         g.blocks_per_tile.eq(blocks)]

        def set_tiles(k_chunks, dram):
            bytes_ = PARAM_BYTES * N + k_chunks * N * N
            m.d.sync += [fetch_base.eq(dram), tile_bytes.eq(bytes_), fetch_beats.eq(bytes_ // BEAT_BYTES)]

        n_blocks = (ins.rows + N - 1) // N

        with m.FSM():
            with m.State("IDLE"):
                with m.If(regs.start):
                    m.d.sync += [g.busy.eq(1), g.cycles.eq(0), g.stalls.eq(0), g.seq_dma.eq(1), pc.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [g.seq_rd_cmd_valid.eq(1), g.seq_rd_addr.eq(regs.weights_base), g.seq_rd_beats.eq(1)]
                with m.If(dma.rd_cmd.ready):
                    m.next = "HEADER_DATA"
            with m.State("HEADER_DATA"):
                m.d.comb += g.seq_rd_ready.eq(1)
                with m.If(dma.rd_data.valid):
                    h = Header(dma.rd_data.payload.data)
                    m.d.sync += [n_instr.eq(h.count), prog_off.eq(h.program)]
                    with m.If((h.magic != PROGRAM_MAGIC) | (h.count > cap.max_program) | (h.count == 0)):
                        m.next = "FAULT"
                    with m.Else():
                        m.next = "PROGRAM"
            with m.State("PROGRAM"):
                m.d.comb += [g.seq_rd_cmd_valid.eq(1), g.seq_rd_addr.eq(regs.weights_base + prog_off),
                             g.seq_rd_beats.eq(n_instr * beats_per_instr)]
                with m.If(dma.rd_cmd.ready):
                    m.d.sync += [beat.eq(0), pc.eq(0)]
                    m.next = "PROGRAM_DATA"
            with m.State("PROGRAM_DATA"):
                m.d.comb += g.seq_rd_ready.eq(1)
                with m.If(dma.rd_data.valid):
                    new = Cat(acc[DATA_WIDTH:], dma.rd_data.payload.data)
                    m.d.sync += [acc.eq(new), beat.eq(beat + 1)]
                    with m.If(beat == beats_per_instr - 1):
                        m.d.sync += [beat.eq(0), pc.eq(pc + 1)]
                        m.d.comb += [prog_wr.en.eq(1), prog_wr.addr.eq(pc), prog_wr.data.eq(new)]
                    with m.If(dma.rd_data.payload.last):
                        m.d.sync += pc.eq(0)
                        m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += [prog_rd.addr.eq(pc), prog_rd.en.eq(1)]
                m.next = "DECODE"
            with m.State("DECODE"):
                m.d.sync += ins.eq(prog_rd.data)
                m.next = "DISPATCH"
            with m.State("DISPATCH"):
                with m.Switch(ins.op):
                    with m.Case(Op.END):
                        m.next = "FINISH"
                    with m.Case(Op.LOAD16):
                        m.d.sync += [word.eq(0), sub.eq(0)]
                        set_d(ins.dst_base, ins.dst_stride, 0, ins.rows)
                        m.next = "LOAD16"
                    with m.Case(Op.LOAD_PATCHES):
                        m.d.sync += [ch.eq(0), yy.eq(0), band_first.eq(0),
                                     img_row.eq(regs.image_base), img_plane.eq(regs.image_base),
                                     img_band.eq(regs.image_base), dst_row.eq(ins.dst_base),
                                     dst_band.eq(ins.dst_base), band_words.eq(ins.count * ins.dst_stride)]
                        m.next = "PATCH_CMD"
                    with m.Case(Op.STORE16):
                        set_a(AMode.WORDS, ins.src_base, ins.src_stride, 0, ins.k_chunks, ins.rows)
                        set_sink(Sink.WRITE, w=0, c=0, o=0)
                        m.next = "STORE_CMD"
                    with m.Case(Op.LAYERNORM):
                        m.d.sync += word.eq(0)
                        m.next = "LN_CMD"
                    with m.Case(Op.GEMM):
                        set_a(AMode.ROWS, ins.src_base, ins.src_stride, 0, ins.k_chunks, ins.rows)
                        set_w(WMode.TILE, length=ins.k_chunks * N)
                        set_tiles(ins.k_chunks, ins.dram0)
                        set_d(ins.dst_base, ins.dst_stride, 0, ins.rows, ins.row_offset)
                        m.d.sync += [g.n_cols.eq(ins.n_out), g.narrow.eq(ins.narrow), g.fix_params.eq(0),
                                     g.fix_mult.eq(ins.mult2), g.fix_shift.eq(ins.shift2), g.seq_dma.eq(0)]
                        with m.Switch(ins.out_mode):
                            with m.Case(OutMode.WRITE):
                                set_sink(Sink.WRITE)
                            with m.Case(OutMode.RESIDUAL):
                                set_sink(Sink.RESIDUAL, r=1)
                            with m.Case(OutMode.GELU):
                                set_sink(Sink.GELU)
                        start_tiles(0, n_blocks)
                        m.next = "ISSUE"
                    with m.Case(Op.ATTENTION):
                        m.d.sync += att_tb.eq(0)
                        m.next = "ATT_QK"
                    with m.Case(Op.MOE):
                        m.next = "MOE_GATE"
                    with m.Default():
                        m.next = "FAULT"

            # --- tile issue loop shared by every MAC and LayerNorm phase
            with m.State("ISSUE"):
                can = tiles_ready & (~need_fetch | prefetched | g.fq.w_rdy)
                with m.If(can):
                    m.d.comb += [g.aq.w_en.eq(1), g.wq.w_en.eq(use_w), g.cq.w_en.eq(use_c), g.rq.w_en.eq(use_r),
                                 g.oq.w_en.eq(use_o), g.issue.eq(use_o | use_c), g.fq.w_en.eq(need_fetch & ~prefetched)]
                    with m.If(need_fetch & prefetched):
                        m.d.sync += [cur_half.eq(pre_half), prefetched.eq(0)]
                    with m.Elif(need_fetch):
                        m.d.sync += [half.eq(~half), cur_half.eq(half)]
                    with m.If(last_tile):
                        m.next = "BARRIER"
                    with m.If(tb_outer):
                        with m.If(cb == g.n_cb - 1):
                            m.d.sync += [cb.eq(0), tb.eq(tb + 1)]
                        with m.Else():
                            m.d.sync += cb.eq(cb + 1)
                    with m.Else():
                        with m.If(tb == tb_end - 1):
                            m.d.sync += [tb.eq(tb_end - n_tb), cb.eq(cb + 1)]
                        with m.Else():
                            m.d.sync += tb.eq(tb + 1)
            with m.State("BARRIER"):
                # A prefetch may still be in flight; every other fetch has been used by a retired tile.
                fetched = prefetched | ~g.fq.r_rdy & ~g.f_busy
                m.d.comb += prefetch.eq((ins.op == Op.MOE) & ~prefetched & g.fq.w_rdy
                                        & ((g.sink == Sink.GELU) | (g.sink == Sink.COMBINE) & ~elast
                                           & g.queues.experts.valid))
                quiet = ((g.outstanding == 0) & ~g.probs_pending & ~g.aq.r_rdy & fetched
                         & (g.sink != Sink.ROUTER) | (g.outstanding == 0) & (g.sink == Sink.ROUTER)
                         & g.queues.experts.valid)
                with m.If(quiet):
                    m.next = "AFTER"
            with m.State("AFTER"):
                with m.Switch(ins.op):
                    with m.Case(Op.ATTENTION):
                        with m.If(g.a_mode == AMode.PROBS):
                            m.d.sync += att_tb.eq(att_tb + 1)
                            with m.If(att_tb == n_blocks - 1):
                                m.next = "NEXT"
                            with m.Else():
                                m.next = "ATT_QK"
                        with m.Else():
                            m.next = "ATT_AV"
                    with m.Case(Op.MOE):
                        with m.Switch(g.sink):
                            with m.Case(Sink.ROUTER):
                                m.next = "MOE_EXPERT"
                            with m.Case(Sink.GELU):
                                m.next = "MOE_FC2"
                            with m.Default():
                                with m.If(elast):
                                    m.d.sync += [word.eq(0), g.fin_active.eq(1), g.fin_addr.eq(0)]
                                    set_d(ins.dst_base, ins.dst_stride, 0, ins.rows)
                                    m.next = "MOE_FINAL"
                                with m.Else():
                                    m.next = "MOE_EXPERT"
                    with m.Default():
                        m.next = "NEXT"
            with m.State("NEXT"):
                m.d.sync += [pc.eq(pc + 1), g.seq_dma.eq(1)]
                m.next = "FETCH"

            # --- attention: per query block, scores + softmax, then A.V
            with m.State("ATT_QK"):
                hd = ins.k_chunks
                set_a(AMode.ROWS, ins.src_base, ins.src_stride, ins.src_chunk, hd, ins.rows)
                set_w(WMode.TRANS, ins.src_base, ins.src_stride, ins.aux_chunk, rows=ins.rows)
                set_sink(Sink.SOFTMAX, o=0)
                m.d.sync += [g.n_cols.eq(ins.rows), g.narrow.eq(0), g.fix_params.eq(1), g.fix_mult.eq(ins.mult),
                             g.fix_shift.eq(ins.shift), g.probs_pending.eq(1), g.seq_dma.eq(0)]
                start_tiles(att_tb, att_tb + 1, outer=1)
                m.d.sync += n_tb.eq(1)
                m.next = "ISSUE"
            with m.State("ATT_AV"):
                set_a(AMode.PROBS, 0, 0, 0, 0, ins.rows)
                set_w(WMode.DIRECT, ins.src_base, ins.src_stride, ins.v_chunk, length=ins.rows)
                set_d(ins.dst_base, ins.dst_stride, ins.dst_chunk, ins.rows)
                set_sink(Sink.WRITE)
                m.d.sync += [g.n_cols.eq(ins.k_chunks * N), g.narrow.eq(1), g.fix_mult.eq(ins.mult2),
                             g.fix_shift.eq(ins.shift2)]
                start_tiles(att_tb, att_tb + 1)
                m.d.sync += n_tb.eq(1)
                m.next = "ISSUE"

            # --- mixture of experts
            with m.State("MOE_GATE"):
                set_a(AMode.ROWS, ins.src_base, ins.src_stride, 0, ins.k_chunks, ins.rows)
                set_w(WMode.TILE, length=ins.k_chunks * N)
                set_tiles(ins.k_chunks, ins.dram0 + regs.task * ins.stride0)
                set_d(ins.dst_base, ins.dst_stride, 0, ins.rows)
                set_sink(Sink.ROUTER, o=0)
                m.d.sync += [g.n_cols.eq(ins.n_out), g.seq_dma.eq(0)]
                # With more experts than lanes, each token block needs every gate tile in turn.
                start_tiles(0, n_blocks, outer=ins.n_out > N)
                m.next = "ISSUE"
            with m.State("MOE_EXPERT"):
                m.d.comb += g.queues.experts.ready.eq(1)
                with m.If(g.queues.experts.valid):
                    p = g.queues.experts.payload
                    m.d.sync += [expert.eq(p.expert), ecount.eq(p.count), elast.eq(p.last), qpos.eq(0)]
                    m.next = "MOE_QREAD"
            with m.State("MOE_QREAD"):
                m.d.comb += [g.queues.read.valid.eq(1), g.queues.read.payload.eq(expert)]
                with m.If(g.queues.read.ready):
                    m.next = "MOE_QLOAD"
            with m.State("MOE_QLOAD"):
                m.d.comb += g.queues.queue.ready.eq(1)
                with m.If(g.queues.queue.valid):
                    m.d.comb += [g.q_wr.en.eq(1), g.q_wr.addr.eq(qpos),
                                 g.q_wr.data.token.eq(g.queues.queue.payload.token),
                                 g.q_wr.data.weight.eq(g.queues.queue.payload.weight)]
                    m.d.sync += qpos.eq(qpos + 1)
                    with m.If(g.queues.queue.payload.last):
                        m.next = "MOE_FC1"
            with m.State("MOE_FC1"):
                eb = (ecount + N - 1) // N
                set_a(AMode.LIST, ins.src_base, ins.src_stride, 0, ins.k_chunks, ecount)
                set_w(WMode.TILE, length=ins.k_chunks * N)
                set_tiles(ins.k_chunks, ins.dram1 + expert * ins.stride1)
                set_d(ins.aux_base, ins.aux_stride, 0, ecount)
                set_sink(Sink.GELU)
                m.d.sync += [g.n_cols.eq(ins.count * N), g.narrow.eq(0), g.fix_params.eq(0),
                             g.fix_mult.eq(ins.mult2), g.fix_shift.eq(ins.shift2)]
                start_tiles(0, eb)
                m.next = "ISSUE"
            with m.State("MOE_FC2"):
                eb = (ecount + N - 1) // N
                set_a(AMode.ROWS, ins.aux_base, ins.aux_stride, 0, ins.count, ecount)
                set_w(WMode.TILE, length=ins.count * N)
                set_tiles(ins.count, ins.dram1 + expert * ins.stride1 + ins.dram2)
                set_d(0, ins.dst_stride, 0, ecount)
                set_sink(Sink.COMBINE)
                m.d.sync += [g.n_cols.eq(ins.k_chunks * N), g.narrow.eq(0)]
                start_tiles(0, eb)
                m.next = "ISSUE"
            with m.State("MOE_FINAL"):
                total = ins.rows * ins.k_chunks
                m.d.comb += [g.act_r.en.eq(1)]
                m.d.sync += [g.fin_valid.eq(word < total), g.fin_word.eq(word)]
                with m.If(word < total):
                    m.d.sync += [word.eq(word + 1), g.fin_addr.eq(word + 1)]
                with m.Elif(~g.fin_valid):
                    m.d.sync += g.fin_active.eq(0)
                    m.d.comb += g.queues.clear.eq(1)
                    m.next = "NEXT"

            # --- DMA-fed instructions
            with m.State("LOAD16"):
                m.d.comb += [g.seq_rd_cmd_valid.eq(1), g.seq_rd_addr.eq(regs.weights_base + ins.dram0),
                             g.seq_rd_beats.eq(ins.rows * ins.k_chunks * beats_per_word16)]
                with m.If(dma.rd_cmd.ready):
                    m.next = "LOAD16_DATA"
            with m.State("LOAD16_DATA"):
                m.d.comb += g.seq_rd_ready.eq(1)
                with m.If(dma.rd_data.valid):
                    new = Cat(wdata[DATA_WIDTH:], dma.rd_data.payload.data)
                    m.d.sync += [wdata.eq(new), sub.eq(sub + 1)]
                    with m.If(sub == beats_per_word16 - 1):
                        m.d.sync += [sub.eq(0), word.eq(word + 1)]
                        m.d.comb += [g.act_wr.en.eq(1), g.act_wr.addr.eq(g.d_base + word),
                                     g.act_wr.data.eq(new[-N * 16:])]
                    with m.If(dma.rd_data.payload.last):
                        m.next = "NEXT"
            with m.State("PATCH_CMD"):
                # One command per image row of a band of patches: its beats go to consecutive patches.
                m.d.comb += [g.seq_rd_cmd_valid.eq(1), g.seq_rd_addr.eq(img_row), g.seq_rd_beats.eq(ins.count)]
                with m.If(dma.rd_cmd.ready):
                    m.d.sync += [sub.eq(0), beat_addr.eq(dst_row)]
                    m.next = "PATCH_DATA"
            with m.State("PATCH_DATA"):
                m.d.comb += g.seq_rd_ready.eq(sub == words_per_beat - 1)
                with m.If(dma.rd_data.valid):
                    m.d.comb += [g.act_wr.en.eq(1), g.act_wr.addr.eq(beat_addr + sub)]
                    bytes_ = dma.rd_data.payload.data
                    for i in range(N):
                        m.d.comb += g.act_wr.data[i].eq(bytes_.word_select(sub * N + i, 8).as_signed())
                    m.d.sync += sub.eq(sub + 1)
                    with m.If(sub == words_per_beat - 1):
                        m.d.sync += [sub.eq(0), beat_addr.eq(beat_addr + ins.dst_stride)]
                        with m.If(dma.rd_data.payload.last):
                            m.next = "PATCH_NEXT"
            with m.State("PATCH_NEXT"):
                # Rows of a channel, then channels, then the next band of patches; a patch's words
                # hold its rows channel by channel, so each image row is the next words_per_beat.
                m.next = "PATCH_CMD"
                m.d.sync += dst_row.eq(dst_row + words_per_beat)
                with m.If(yy != 15):
                    m.d.sync += [yy.eq(yy + 1), img_row.eq(img_row + ins.stride0)]
                with m.Elif(ch != ins.n_out - 1):
                    m.d.sync += [yy.eq(0), ch.eq(ch + 1), img_plane.eq(img_plane + ins.stride1),
                                 img_row.eq(img_plane + ins.stride1)]
                with m.Else():
                    next_band = img_band + (ins.stride0 << 4)
                    m.d.sync += [yy.eq(0), ch.eq(0), band_first.eq(band_first + ins.count),
                                 img_band.eq(next_band), img_plane.eq(next_band), img_row.eq(next_band),
                                 dst_band.eq(dst_band + band_words), dst_row.eq(dst_band + band_words)]
                    with m.If(band_first + ins.count >= ins.rows):
                        m.next = "NEXT"
            with m.State("STORE_CMD"):
                m.d.comb += [dma.wr_cmd.valid.eq(1), dma.wr_cmd.payload.addr.eq(regs.output_base),
                             dma.wr_cmd.payload.beats.eq(ins.rows * ins.k_chunks * beats_per_word16)]
                with m.If(dma.wr_cmd.ready):
                    m.d.comb += g.aq.w_en.eq(1)
                    m.d.sync += sub.eq(0)
                    m.next = "STORE_DATA"
            with m.State("STORE_DATA"):
                a_out = g.a_out
                m.d.comb += [dma.wr_data.valid.eq(a_out.valid),
                             dma.wr_data.payload.eq(a_out.payload.data.as_value().word_select(sub, DATA_WIDTH)),
                             a_out.ready.eq(dma.wr_data.ready & (sub == beats_per_word16 - 1))]
                with m.If(dma.wr_data.valid & dma.wr_data.ready):
                    m.d.sync += sub.eq(Mux(sub == beats_per_word16 - 1, 0, sub + 1))
                    with m.If(a_out.payload.last & (sub == beats_per_word16 - 1)):
                        m.next = "STORE_WAIT"
            with m.State("STORE_WAIT"):
                with m.If(~dma.wr_busy):
                    m.next = "NEXT"
            with m.State("LN_CMD"):
                m.d.comb += [g.seq_rd_cmd_valid.eq(1), g.seq_rd_addr.eq(regs.weights_base + ins.dram0),
                             g.seq_rd_beats.eq(ins.k_chunks * N * PARAM_BYTES // BEAT_BYTES)]
                with m.If(dma.rd_cmd.ready):
                    m.d.sync += [word.eq(0), sub.eq(0)]
                    m.next = "LN_PARAMS"
            with m.State("LN_PARAMS"):
                # Two records per beat, one LayerNorm parameter write per cycle.
                rec = LNParams(dma.rd_data.payload.data.word_select(sub, LNParams.size))
                m.d.comb += [g.seq_rd_ready.eq(sub == 1), g.ln.params.valid.eq(dma.rd_data.valid),
                             g.ln.params.payload.index.eq(word), g.ln.params.payload.gamma.eq(rec.gamma),
                             g.ln.params.payload.beta.eq(rec.beta)]
                with m.If(dma.rd_data.valid):
                    m.d.sync += [sub.eq(sub ^ 1), word.eq(word + 1)]
                    with m.If(dma.rd_data.payload.last & (sub == 1)):
                        set_a(AMode.ROWS, ins.src_base, ins.src_stride, 0, ins.k_chunks, ins.rows)
                        set_d(ins.dst_base, ins.dst_stride, 0, ins.rows)
                        set_sink(Sink.LAYERNORM, w=0, c=0, blocks=ins.k_chunks)
                        m.d.sync += [g.seq_dma.eq(0), g.n_cols.eq(N)]      # one tile per token block
                        start_tiles(0, n_blocks)
                        m.next = "ISSUE"
            with m.State("FINISH"):
                m.d.sync += [g.busy.eq(0)]
                m.d.comb += done.eq(1)
                m.next = "IDLE"
            with m.State("FAULT"):
                # A program this hardware cannot run: stop, never report done.
                m.d.sync += g.busy.eq(0)


def _advance_read(m, n, walk, stage, read, enable, zero, last, transposed, pop):
    """Step a reader's walk over a tile by one memory read and register that read's flags.

    ``walk`` is ``(chunk, row)``: a transposed walk reads the ``n`` tokens of a chunk before the
    next chunk (the transposer turns them into one element per cycle); a plain walk steps the
    chunk only. ``stage`` is the ``(valid, zero, last)`` registers beside the memory's read data;
    they hold while ``enable`` is low (the consumer is not ready). ``pop`` pulses with the tile's
    last read, taking its descriptor off the queue.
    """
    chunk, row = walk
    valid, zero_q, last_q = stage
    with m.If(read):
        m.d.sync += [valid.eq(1), zero_q.eq(zero), last_q.eq(last)]
        with m.If(transposed):
            with m.If(row == n - 1):
                m.d.sync += [row.eq(0), chunk.eq(chunk + 1)]
            with m.Else():
                m.d.sync += row.eq(row + 1)
        with m.Else():
            m.d.sync += chunk.eq(chunk + 1)
        with m.If(last):
            m.d.sync += [chunk.eq(0), row.eq(0)]
            m.d.comb += pop.eq(1)
    with m.Elif(enable):
        m.d.sync += valid.eq(0)
