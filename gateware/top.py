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

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
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
from .phase import AMode, Fetch, Sink, Tile, WMode
from .program import Capacity
from .records import ADDR_BITS, BEAT_BYTES, PARAM_BYTES, TileParams
from .reader import TileReader, clamp_rows
from .sequencer import Sequencer
from .stream_queue import StreamQueue
from .router import Router
from .softmax import Softmax
from .transpose import Transpose

__all__ = ["Accelerator"]

DATA_WIDTH = 8 * BEAT_BYTES


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

        m.submodules.seq = seq = Sequencer(cap, queues=queues.signature,
                                           ln_params=ln.signature.members["params"].signature)
        m.d.comb += [seq.start.eq(regs.start), seq.task.eq(regs.task), seq.weights_base.eq(regs.weights_base),
                     seq.image_base.eq(regs.image_base), seq.output_base.eq(regs.output_base),
                     regs.done.eq(seq.done), regs.busy.eq(seq.busy), regs.cycles.eq(seq.cycles),
                     regs.stalls.eq(seq.stalls)]
        wiring.connect(m, seq.experts, queues.experts)
        wiring.connect(m, seq.read, queues.read)
        wiring.connect(m, seq.queue, queues.queue)
        wiring.connect(m, seq.ln_params, ln.params)
        m.d.comb += [queues.clear.eq(seq.clear), q_wr.en.eq(seq.queue_write.valid),
                     q_wr.addr.eq(seq.queue_write.payload.addr), q_wr.data.token.eq(seq.queue_write.payload.token),
                     q_wr.data.weight.eq(seq.queue_write.payload.weight)]
        wiring.connect(m, seq.wr_cmd, dma.wr_cmd)
        wiring.connect(m, seq.wr_data, dma.wr_data)
        m.d.comb += seq.wr_busy.eq(dma.wr_busy)

        # --- descriptor queues (sequencer -> units)
        def tile_queue(name, shape=Tile):
            m.submodules[name] = q = StreamQueue(shape, depth=4)
            wiring.connect(m, getattr(seq, f"{name[0]}_tile" if shape is Tile else "fetch"), q.i)
            return q.o
        aq, wq, cq, rq, oq = (tile_queue(f"{unit}q") for unit in "awcro")
        fq = tile_queue("fq", Fetch)
        a_t, w_t, c_t, r_t, o_t, f_t = (q.payload for q in (aq, wq, cq, rq, oq, fq))
        m.d.comb += seq.a_busy.eq(aq.valid)

        # --- phase settings, written by the sequencer between barriers
        ph = seq.phase
        # A weight-tile half is full from the end of its fetch until the column stage has used its
        # parameters for the last time; the W reader may read it only until it has streamed the
        # half's last tile (``w_spent``), so it never takes a stale tile for the next one.
        tile_full, w_spent = Signal(2), Signal(2)
        release_half, fill_half, spend_half = Signal(2), Signal(2), Signal(2)
        m.d.sync += [tile_full.eq((tile_full | fill_half) & ~release_half),
                     w_spent.eq((w_spent | spend_half) & ~fill_half)]
        retire_c, retire_o = Signal(), Signal()       # the column stage's or the writer's
        m.d.comb += seq.retire.eq(retire_c | retire_o)
        probs_pending = Signal()
        m.d.comb += seq.probs_pending.eq(probs_pending)
        fin = seq.final

        # ------------------------------------------------------------------ A and W readers
        m.submodules.a_reader = ra = TileReader(N)
        m.submodules.w_reader = rw = TileReader(N, pack=words_per_beat, half_words=self.kmax)
        wiring.connect(m, aq, ra.tiles)
        wiring.connect(m, wq, rw.tiles)
        a_out, w_out = ra.o, rw.o
        m.d.comb += [act_a.en.eq(ra.mem_en), probs_rd.en.eq(ra.mem_en), act_a.addr.eq(ra.mem_addr),
                     probs_rd.addr.eq(ra.mem_addr), q_a.addr.eq(ra.list_addr), ra.list_token.eq(q_a.data.token)]
        m.d.comb += [act_w.en.eq(rw.mem_en), wbuf_rd.en.eq(rw.mem_en), act_w.addr.eq(rw.mem_addr),
                     wbuf_rd.addr.eq(rw.mem_addr)]
        _a_walk(m, ph, ra.walk)
        _w_walk(m, ph, rw.walk)
        with m.If(ph.a.mode == AMode.PROBS):
            m.d.comb += [ra.mem_data[i].eq(probs_rd.data[i]) for i in range(N)]
        with m.Else():
            m.d.comb += ra.mem_data.eq(act_a.data)
        with m.If(ph.w.mode == WMode.TILE):
            ready = tile_full.bit_select(w_t.half, 1) & ~w_spent.bit_select(w_t.half, 1)
            m.d.comb += [rw.go.eq(ready), seq.stall.eq(wq.valid & ~ready)]
            with m.If(wq.ready & w_t.release):
                m.d.comb += spend_half.eq(1 << w_t.half)
            for i in range(N):
                m.d.comb += rw.mem_data[i].eq(wbuf_rd.data.as_value().word_select(rw.sub * N + i, 8).as_signed()
                                              if words_per_beat > 1 else wbuf_rd.data[i])
        with m.Else():
            m.d.comb += [rw.go.eq(1), rw.mem_data.eq(act_w.data)]

        # ------------------------------------------------------------------ join -> MAC / LN
        # The MAC array wants its operands from registers; the transposers and read stages are.
        with m.If(ph.sink == Sink.LAYERNORM):
            m.d.comb += [ln.i.valid.eq(a_out.valid), a_out.ready.eq(ln.i.ready),
                         ln.i.payload.last.eq(a_out.payload.last)]
            m.d.comb += [ln.i.payload.x[i].eq(a_out.payload.data[i]) for i in range(N)]
        with m.Elif(ph.a.mode != AMode.WORDS):
            both = a_out.valid & w_out.valid
            m.d.comb += [mac.i.valid.eq(both), a_out.ready.eq(both & mac.i.ready),
                         w_out.ready.eq(both & mac.i.ready), mac.i.payload.last.eq(a_out.payload.last)]
            m.d.comb += [mac.i.payload.a[i].eq(a_out.payload.data[i]) for i in range(N)]
            m.d.comb += [mac.i.payload.w[i].eq(w_out.payload.data[i]) for i in range(N)]
        with m.Else():
            # STORE16: the sequencer takes the words to the DMA.
            m.d.comb += [seq.store.valid.eq(a_out.valid), seq.store.payload.eq(a_out.payload),
                         a_out.ready.eq(seq.store.ready)]

        # ------------------------------------------------------------------ residual reader
        r_r = Signal(range(N))
        u1_valid, u1_zero = Signal(), Signal()
        r_en = Signal()
        r_valid_rows = Signal(range(N + 1))
        m.d.comb += r_valid_rows.eq(clamp_rows(m, N, ph.d.rows, r_t.tb))
        m.d.comb += [r_en.eq(~u1_valid | tr.i.ready), act_r.en.eq(r_en | fin.active)]
        with m.If(fin.active):
            m.d.comb += act_r.addr.eq(ph.d.base + fin.addr)
        with m.Else():
            m.d.comb += act_r.addr.eq(ph.d.base + (r_t.tb * N + r_r + ph.d.offset) * ph.d.stride + ph.d.chunk0 + r_t.cb)
        with m.If(rq.valid & r_en & ~fin.active):
            m.d.sync += [u1_valid.eq(1), u1_zero.eq(r_r >= r_valid_rows), r_r.eq(r_r + 1)]
            with m.If(r_r == N - 1):
                m.d.sync += r_r.eq(0)
                m.d.comb += rq.ready.eq(1)
        with m.Elif(r_en):
            m.d.sync += u1_valid.eq(0)
        m.d.comb += [tr.i.valid.eq(u1_valid), tr.i.payload.data.eq(Mux(u1_zero, 0, act_r.data))]

        # ------------------------------------------------------------------ column stage
        col = Signal(range(N))
        cols_valid = Signal(range(N + 1))
        rem_cols = Signal(signed(18))
        m.d.comb += [rem_cols.eq(ph.n_cols - c_t.cb * N),
                     cols_valid.eq(Mux(rem_cols >= N, N, Mux(rem_cols < 0, 0, rem_cols)))]
        keep = col < cols_valid
        m.d.comb += pbuf_rd.addr.eq(c_t.half * param_beats + col // records_per_beat)
        record = TileParams(pbuf_rd.data.word_select(col % records_per_beat, TileParams.size))
        col_taken = Signal()
        with m.If(ph.sink == Sink.ROUTER):
            m.d.comb += [router.i.valid.eq(mac.o.valid & cq.valid & keep),
                         router.i.payload.last.eq((c_t.cb == ph.n_cb - 1) & (col == cols_valid - 1)),
                         router.i.payload.token_base.eq(c_t.tb * N),
                         router.i.payload.valid_lanes.eq(clamp_rows(m, N, ph.d.rows, c_t.tb)),
                         router.i.payload.final.eq(c_t.last),
                         mac.o.ready.eq(cq.valid & (router.i.ready | ~keep)),
                         col_taken.eq(mac.o.valid & cq.valid & (router.i.ready | ~keep))]
            m.d.comb += [router.i.payload.logits[i].eq(mac.o.payload.data[i]) for i in range(N)]
        with m.Elif(ph.sink != Sink.LAYERNORM):
            need_r = ph.sink == Sink.RESIDUAL
            ok = mac.o.valid & cq.valid & (~need_r | tr.o.valid)
            m.d.comb += [post.i.valid.eq(ok & keep),
                         post.i.payload.acc.eq(mac.o.payload.data),
                         post.i.payload.bias.eq(Mux(ph.fix_params, 0, record.bias)),
                         post.i.payload.mult.eq(Mux(ph.fix_params, ph.fix_mult, record.mult)),
                         post.i.payload.shift.eq(Mux(ph.fix_params, ph.fix_shift, record.shift)),
                         post.i.payload.add_residual.eq(need_r),
                         post.i.payload.narrow.eq(ph.narrow),
                         col_taken.eq(ok & (post.i.ready | ~keep)),
                         mac.o.ready.eq(col_taken),
                         tr.o.ready.eq(col_taken & need_r)]
            m.d.comb += [post.i.payload.residual[i].eq(tr.o.payload.data[i]) for i in range(N)]
        with m.If(col_taken):
            m.d.sync += col.eq(col + 1)
            with m.If(col == N - 1):
                m.d.sync += col.eq(0)
                m.d.comb += cq.ready.eq(1)
                with m.If(c_t.release):
                    m.d.comb += release_half.eq(1 << c_t.half)
                with m.If(ph.sink.as_value().matches(Sink.SOFTMAX, Sink.ROUTER)):
                    m.d.comb += retire_c.eq(1)

        # ------------------------------------------------------------------ post -> units
        key = Signal(16)
        prob_j = Signal(16)
        to_src_valid, to_src_data = Signal(), Signal(data.ArrayLayout(signed(16), N))
        to_src_ready = Signal()
        with m.Switch(ph.sink):
            with m.Case(Sink.GELU):
                m.d.comb += [gelu.i.valid.eq(post.o.valid), gelu.i.payload.eq(post.o.payload.data),
                             post.o.ready.eq(gelu.i.ready), gelu.mult.eq(ph.fix_mult), gelu.shift.eq(ph.fix_shift),
                             to_src_valid.eq(gelu.o.valid), gelu.o.ready.eq(to_src_ready)]
                m.d.comb += [to_src_data[i].eq(gelu.o.payload[i]) for i in range(N)]
            with m.Case(Sink.SOFTMAX):
                m.d.comb += [softmax.i.valid.eq(post.o.valid), softmax.i.payload.u.eq(post.o.payload.data),
                             softmax.i.payload.last.eq(key == ph.a.rows - 1), post.o.ready.eq(softmax.i.ready)]
                with m.If(softmax.i.valid & softmax.i.ready):
                    m.d.sync += key.eq(Mux(key == ph.a.rows - 1, 0, key + 1))
            with m.Case(Sink.LAYERNORM):
                m.d.comb += [to_src_valid.eq(ln.o.valid), ln.o.ready.eq(to_src_ready)]
                m.d.comb += [to_src_data[i].eq(ln.o.payload.y[i]) for i in range(N)]
            with m.Case(Sink.WRITE, Sink.RESIDUAL, Sink.COMBINE):
                m.d.comb += [to_src_valid.eq(post.o.valid), to_src_data.eq(post.o.payload.data),
                             post.o.ready.eq(to_src_ready)]
        m.d.comb += [ln.affine_shift.eq(ph.ln_shift), ln.eps_term.eq(ph.ln_eps)]
        # Softmax rows go straight into the probability buffer: word j is key j of every query.
        m.d.comb += [softmax.o.ready.eq(1), probs_wr.en.eq(softmax.o.valid), probs_wr.addr.eq(prob_j),
                     probs_wr.data.eq(softmax.o.payload.p)]
        with m.If(softmax.o.valid):
            m.d.sync += prob_j.eq(prob_j + 1)
            with m.If(softmax.o.payload.last):
                m.d.sync += [prob_j.eq(0), probs_pending.eq(0)]
        with m.If(seq.probs_arm):
            m.d.sync += probs_pending.eq(1)
        m.d.comb += [to.i.valid.eq(to_src_valid), to.i.payload.data.eq(to_src_data), to_src_ready.eq(to.i.ready)]

        # ------------------------------------------------------------------ writer / combine
        o_r, o_blk = Signal(range(N)), Signal(8)
        o_valid_rows = Signal(range(N + 1))
        m.d.comb += [o_valid_rows.eq(clamp_rows(m, N, ph.d.rows, o_t.tb)), q_o.addr.eq(o_t.tb * N + o_r)]
        comb_valid, comb_addr = Signal(), Signal(range(cap.max_tokens * cap.max_dim_chunks))
        comb_g, comb_o = Signal(16), Signal(data.ArrayLayout(signed(16), N))
        word_taken = to.o.valid & oq.valid
        m.d.comb += to.o.ready.eq(oq.valid)
        with m.If(word_taken):
            m.d.sync += o_r.eq(o_r + 1)
            with m.If(o_r == N - 1):
                m.d.sync += [o_r.eq(0), o_blk.eq(o_blk + 1)]
                with m.If(o_blk == ph.blocks_per_tile - 1):
                    m.d.sync += o_blk.eq(0)
                    m.d.comb += [oq.ready.eq(1), retire_o.eq(1)]
        with m.If(fin.active):
            # residual = sat16(residual + round(acc / 2**GATE_FRAC)); the accumulator restarts at 0
            m.d.comb += [acc_rd.en.eq(1), acc_rd.addr.eq(fin.addr)]
            m.d.comb += [acc_wr.en.eq(fin.valid), acc_wr.addr.eq(fin.word), act_wr.en.eq(fin.valid),
                         act_wr.addr.eq(ph.d.base + fin.word)]
            for i in range(N):
                s = Signal(signed(acc_bits + 1), name=f"fin_sum{i}")
                m.d.comb += s.eq(act_r.data[i] + ((acc_rd.data[i] + (1 << (GATE_FRAC - 1))) >> GATE_FRAC))
                m.d.comb += act_wr.data[i].eq(Mux(s > 32767, 32767, Mux(s < -32768, -32768, s)))
        with m.Elif(ph.sink == Sink.COMBINE):
            m.d.comb += [acc_rd.en.eq(1), acc_rd.addr.eq(q_o.data.token * ph.d.stride + ph.d.chunk0 + o_t.cb)]
            m.d.sync += [comb_valid.eq(word_taken & (o_r < o_valid_rows)), comb_addr.eq(acc_rd.addr),
                         comb_g.eq(q_o.data.weight), comb_o.eq(to.o.payload.data)]
            m.d.comb += [acc_wr.en.eq(comb_valid), acc_wr.addr.eq(comb_addr)]
            m.d.comb += [acc_wr.data[i].eq(acc_rd.data[i] + comb_g * comb_o[i]) for i in range(N)]
        with m.Else():
            m.d.comb += [act_wr.addr.eq(ph.d.base + (o_t.tb * N + o_r + ph.d.offset) * ph.d.stride + ph.d.chunk0 + o_t.cb + o_blk),
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
        m.d.comb += [f_busy.eq(f_pending.any()), seq.fetch_idle.eq(~fq.valid & ~f_busy)]
        m.d.sync += f_pending.eq((f_pending | f_issued) & ~f_received)
        m.d.comb += [seq.rd_cmd.ready.eq(dma.rd_cmd.ready & seq.dma_owner), seq.rd_data.valid.eq(
                     dma.rd_data.valid & seq.dma_owner), seq.rd_data.payload.eq(dma.rd_data.payload)]
        with m.If(seq.dma_owner):
            m.d.comb += [dma.rd_cmd.valid.eq(seq.rd_cmd.valid), dma.rd_cmd.payload.eq(seq.rd_cmd.payload),
                         dma.rd_data.ready.eq(seq.rd_data.ready)]
        with m.Else():
            free = ~(tile_full | f_pending).bit_select(f_t.half, 1)
            with m.If(fq.valid & free):
                m.d.comb += [dma.rd_cmd.valid.eq(1), dma.rd_cmd.payload.addr.eq(regs.weights_base + f_t.addr),
                             dma.rd_cmd.payload.beats.eq(f_t.beats)]
                with m.If(dma.rd_cmd.ready):
                    m.d.comb += [fq.ready.eq(1), f_issued.eq(1 << f_t.half)]
            m.d.comb += dma.rd_data.ready.eq(f_busy)
            with m.If(f_busy & dma.rd_data.valid):
                m.d.sync += f_beat.eq(f_beat + 1)
                with m.If(f_beat < param_beats):
                    m.d.comb += [pbuf_wr.en.eq(1), pbuf_wr.addr.eq(f_half * (N // 2) + f_beat),
                                 pbuf_wr.data.eq(dma.rd_data.payload.data)]
                    # The gate's requantisation is one (mult, shift) per task: every record holds it.
                    with m.If((f_beat == 0) & (ph.sink == Sink.ROUTER)):
                        first = TileParams(dma.rd_data.payload.data[:TileParams.size])
                        m.d.sync += [gate_mult.eq(first.mult), gate_shift.eq(first.shift)]
                with m.Else():
                    m.d.comb += [wbuf_wr.en.eq(1), wbuf_wr.addr.eq(f_half * kmax_beats + f_beat - param_beats),
                                 wbuf_wr.data.eq(dma.rd_data.payload.data)]
                with m.If(dma.rd_data.payload.last):
                    m.d.sync += [f_beat.eq(0), f_half.eq(~f_half)]
                    m.d.comb += [fill_half.eq(1 << f_half), f_received.eq(1 << f_half)]

        # LOAD16 and LOAD_PATCHES write the activation memory while no tile is in flight.
        with m.If(seq.act_write.valid):
            m.d.comb += [act_wr.en.eq(1), act_wr.addr.eq(seq.act_write.payload.addr),
                         act_wr.data.eq(seq.act_write.payload.data)]
        return m


def _a_walk(m, ph, walk):
    """The A reader's walk in each phase: activations (token rows or the expert's list), the
    probability buffer, or region words for the store."""
    a = ph.a
    with m.Switch(a.mode):
        with m.Case(AMode.ROWS, AMode.LIST):
            m.d.comb += [walk.transposed.eq(1), walk.list.eq(a.mode == AMode.LIST), walk.base.eq(a.base),
                         walk.stride.eq(a.stride), walk.chunk0.eq(a.chunk0), walk.chunks.eq(a.chunks),
                         walk.rows.eq(a.rows)]
        with m.Case(AMode.PROBS):
            m.d.comb += [walk.stride.eq(1), walk.count.eq(a.rows)]
        with m.Case(AMode.WORDS):
            m.d.comb += [walk.base.eq(a.base), walk.stride.eq(1), walk.count.eq(a.rows * a.chunks)]


def _w_walk(m, ph, walk):
    """The W reader's walk: the weight tile's half of the buffer, K transposed (its token
    block is the tile's channel block), or V one token per element."""
    w = ph.w
    with m.Switch(w.mode):
        with m.Case(WMode.TILE):
            m.d.comb += [walk.by_half.eq(1), walk.packed.eq(1), walk.stride.eq(1), walk.count.eq(w.len)]
        with m.Case(WMode.TRANS):
            m.d.comb += [walk.transposed.eq(1), walk.by_cb.eq(1), walk.base.eq(w.base), walk.stride.eq(w.stride),
                         walk.chunk0.eq(w.chunk0), walk.chunks.eq(ph.a.chunks), walk.rows.eq(w.rows)]
        with m.Case(WMode.DIRECT):
            m.d.comb += [walk.by_cb.eq(1), walk.base.eq(w.base), walk.stride.eq(w.stride),
                         walk.chunk0.eq(w.chunk0), walk.count.eq(w.len)]
