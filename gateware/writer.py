"""The writer: result words into the activation memory, or into the MoE accumulator."""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import RES_BITS
from golden.moe import GATE_FRAC

from .kv_buffers import kv_write_layout
from .phase import Dest, KVCopy, Tile
from .sequencer import Final, act_write_layout

__all__ = ["Writer"]


class Writer(wiring.Component):
    """Stores each tile's result words, or adds them into the MoE accumulator, and retires tiles.

    A tile's words come token by token (``lanes`` per column block, the tile's ``blocks`` column
    blocks): token ``t``'s word of block ``b`` goes to ``dest.base + (t + dest.offset) *
    dest.stride + dest.chunk0 + groups * cb + b``; tokens past ``dest.rows`` are dropped. With ``combine``, the token is
    the expert queue's entry ``t`` instead, and the word, times the entry's gate weight, is added
    into that token's accumulator word (``dest.stride`` words per token). The last pass
    (``final.active``, driven by the sequencer) rounds the accumulator into the residual stream:
    ``residual = sat16(residual + round(acc / 2**GATE_FRAC))``, and the accumulator restarts at 0.

    Parameters
    ----------
    cap : Capacity

    Attributes
    ----------
    tiles : In(stream.Signature(Tile))
    i : In(stream.Signature({"data": ArrayLayout(signed(16), lanes), "last": 1}))
        Result words, one token each (``last`` unused); taken while a descriptor is there.
    dest : In(Dest)
    combine : In(1)
    final : In(Final)
    residual : In(ArrayLayout(signed(16), lanes))
        The residual reader's memory data (word ``final.addr`` read the cycle before).
    list_addr : Out(16), list_token : In(16), list_weight : In(16)
        The expert queue, read combinationally.
    act_write : Out(stream.Signature(act_write_layout(lanes), always_ready=True))
    kv : In(KVCopy)
    kv_write : Out(stream.Signature(kv_write_layout(cap), always_ready=True))
        With ``kv.on`` (the QKV GEMM), each stored word of K or V again, for the attention
        buffers (``gateware.kv_buffers``), a cycle after its ``act_write``.
    retire : Out(1)
        Pulses with a tile's last word.

    Throughput: one word per cycle; the combine's read-add-write takes 2 cycles a word, pipelined.
    """

    def __init__(self, cap):
        self.cap, N = cap, cap.lanes
        self.groups = cap.groups
        word = data.ArrayLayout(signed(16), N)
        super().__init__({
            "tiles": In(stream.Signature(Tile)),
            "i": In(stream.Signature(data.StructLayout({"data": word, "last": 1}))),
            "dest": In(Dest), "combine": In(1), "final": In(Final), "residual": In(word),
            "list_addr": Out(16), "list_token": In(16), "list_weight": In(16),
            "act_write": Out(stream.Signature(act_write_layout(N), always_ready=True)),
            "kv": In(KVCopy), "kv_write": Out(stream.Signature(kv_write_layout(cap), always_ready=True)),
            "retire": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cap, N, d, t = self.cap, self.cap.lanes, self.dest, self.tiles.payload
        acc_bits = RES_BITS + GATE_FRAC + max(cap.top_k, 1).bit_length() + 2
        m.submodules.moe_acc = moe_acc = Memory(shape=data.ArrayLayout(signed(acc_bits), N),
                                                depth=cap.max_tokens * cap.max_dim_chunks, init=[])
        acc_rd, acc_wr = moe_acc.read_port(), moe_acc.write_port()
        r, blk = Signal(range(N)), Signal(8)
        m.d.comb += self.list_addr.eq(t.tb * N + r)
        word_taken = self.i.valid & self.tiles.valid
        # Row r of token block tb is a token of the phase while tb * N + r < rows: one compare,
        # where clamping the block's rows first put a subtraction and two compares before it.
        keep = word_taken & (self.list_addr < d.rows)
        m.d.comb += self.i.ready.eq(self.tiles.valid)
        with m.If(word_taken):
            m.d.sync += r.eq(r + 1)
            with m.If(r == N - 1):
                m.d.sync += [r.eq(0), blk.eq(blk + 1)]
                with m.If(blk == t.blocks - 1):
                    m.d.sync += blk.eq(0)
                    m.d.comb += [self.tiles.ready.eq(1), self.retire.eq(1)]
        out = self.act_write
        kv_word = Signal(data.StructLayout({"valid": 1, "word": 16, "tb": 12, "lane": range(N),
                                            "data": data.ArrayLayout(signed(16), N)}))
        m.d.sync += kv_word.valid.eq(0)
        with m.If(self.final.active):
            self._final(m, acc_rd, acc_wr, acc_bits)
        with m.Elif(self.combine):
            valid, addr = Signal(), Signal(range(cap.max_tokens * cap.max_dim_chunks))
            weight, value = Signal(16), Signal(data.ArrayLayout(signed(16), N))
            m.d.comb += [acc_rd.en.eq(1),
                         acc_rd.addr.eq(self.list_token * d.stride + d.chunk0 + t.cb * self.groups + blk)]
            m.d.sync += [valid.eq(keep), addr.eq(acc_rd.addr), weight.eq(self.list_weight),
                         value.eq(self.i.payload.data)]
            m.d.comb += [acc_wr.en.eq(valid), acc_wr.addr.eq(addr)]
            m.d.comb += [acc_wr.data[i].eq(acc_rd.data[i] + weight * value[i]) for i in range(N)]
        with m.Else():
            word = d.chunk0 + t.cb * self.groups + blk
            m.d.comb += [out.payload.addr.eq(d.base + (t.tb * N + r + d.offset) * d.stride + word),
                         out.payload.data.eq(self.i.payload.data), out.valid.eq(keep)]
            m.d.sync += [kv_word.valid.eq(keep & self.kv.on), kv_word.word.eq(word), kv_word.tb.eq(t.tb),
                         kv_word.lane.eq(r), kv_word.data.eq(self.i.payload.data)]
        # The copy into the attention buffers goes a cycle after the word's own write: its word
        # index is registered before the K/V tests and the chunk subtraction (in one cycle with
        # the index's addition they made a path of 9 levels on the board top). Nothing reads
        # the buffers before the next phase.
        kv, kv_out = self.kv, self.kv_write
        is_k = (kv_word.word >= kv.k_chunk) & (kv_word.word < kv.v_chunk)
        is_v = (kv_word.word >= kv.v_chunk) & (kv_word.word < 2 * kv.v_chunk - kv.k_chunk)
        m.d.comb += [kv_out.valid.eq(kv_word.valid & (is_k | is_v)), kv_out.payload.v.eq(is_v),
                     kv_out.payload.tb.eq(kv_word.tb), kv_out.payload.lane.eq(kv_word.lane),
                     kv_out.payload.chunk.eq(Mux(is_v, kv_word.word - kv.v_chunk, kv_word.word - kv.k_chunk)),
                     kv_out.payload.data.eq(kv_word.data)]
        return m

    def _final(self, m, acc_rd, acc_wr, acc_bits):
        fin, out = self.final, self.act_write
        m.d.comb += [acc_rd.en.eq(1), acc_rd.addr.eq(fin.addr),
                     acc_wr.en.eq(fin.valid), acc_wr.addr.eq(fin.word),
                     out.valid.eq(fin.valid), out.payload.addr.eq(self.dest.base + fin.word)]
        for i in range(self.cap.lanes):
            s = Signal(signed(acc_bits + 1), name=f"fin_sum{i}")
            m.d.comb += s.eq(self.residual[i] + ((acc_rd.data[i] + (1 << (GATE_FRAC - 1))) >> GATE_FRAC))
            m.d.comb += out.payload.data[i].eq(Mux(s > 32767, 32767, Mux(s < -32768, -32768, s)))
