"""The attention buffers: K and V as the W reader of a wide MAC array takes them, G words at a time."""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import ACT_BITS

__all__ = ["KVBuffers", "kv_write_layout", "kv_strides"]


def kv_strides(cap):
    """Words between tokens in a bank of K and of V (see :class:`KVBuffers`)."""
    return cap.max_dim_chunks, -(-cap.max_dim_chunks // cap.groups)


def kv_write_layout(cap):
    """One word into the buffers: token ``tb * lanes + lane``'s word ``chunk`` of K (or of V)."""
    return data.StructLayout({"v": 1, "tb": 12, "lane": range(cap.lanes), "chunk": 8,
                              "data": data.ArrayLayout(signed(16), cap.lanes)})


class KVBuffers(wiring.Component):
    """K and V of the current layer, each in ``groups`` banks read together.

    On an array of ``cols = G * lanes`` columns, QK^T wants per inner index the K values of G
    token blocks (a tile's G * lanes keys) and A.V the V values of G words of one token (a tile's
    G * lanes channels). The activation memory gives one word per cycle, so the QKV GEMM's
    writer also copies K and V here (one word per cycle, into one bank), laid out so that one
    address reads what a cycle needs from every bank:

    - K: token block ``tb`` lives in bank ``tb % G``; token ``tb * lanes + lane``'s word ``c``
      is at ``((tb // G) * lanes + lane) * k_stride + c``. The W reader's transposed walk over
      tile ``cb`` reads ``(cb * lanes + lane) * k_stride + c`` and gets, in bank ``g``, token
      block ``cb * G + g``.
    - V: a token's words ``c`` in rows of G, word ``c`` in bank ``c % G`` at
      ``token * v_stride + c // G``. A.V's tile ``cb`` of a head starting at word ``h`` (a
      multiple of G) reads ``token * v_stride + h // G + cb``.

    Values are stored in ``ACT_BITS`` (K and V are saturated activations).

    Parameters
    ----------
    cap : Capacity
        ``lanes``, ``groups``, ``max_tokens`` and ``max_dim_chunks`` (words of K, or of V, per
        token) size the banks.

    Attributes
    ----------
    write : In(stream.Signature(kv_write_layout(cap), always_ready=True))
        Stored on the second clock edge after it is valid.
    read_addr, read_en : In(24), In(1)
    read_v : In(1)
        Read V, else K; ``read_data`` (``G * lanes`` lanes of ``ACT_BITS``) the cycle after an
        enabled read.
    k_stride, v_stride : int
        Words between tokens in a bank's addresses, for the W reader's walks.
    """

    def __init__(self, cap):
        self.cap = cap
        G, N = cap.groups, cap.lanes
        self.k_stride, self.v_stride = kv_strides(cap)
        self.k_depth = -(-cap.max_tokens // (N * G)) * N * self.k_stride
        self.v_depth = cap.max_tokens * self.v_stride
        super().__init__({
            "write": In(stream.Signature(kv_write_layout(cap), always_ready=True)),
            "read_addr": In(24), "read_en": In(1), "read_v": In(1),
            "read_data": Out(data.ArrayLayout(signed(ACT_BITS), G * N)),
        })

    def elaborate(self, platform):
        m = Module()
        cap = self.cap
        G, N = cap.groups, cap.lanes
        # Writes are registered before their addresses are formed: the writer's word arithmetic
        # and the buffer's address arithmetic would otherwise make one deep path. Nothing reads
        # K or V until the next phase, after a barrier, so the cycle costs nothing.
        w, w_valid = Signal(kv_write_layout(cap)), Signal()
        m.d.sync += [w.eq(self.write.payload), w_valid.eq(self.write.valid)]
        log_g = G.bit_length() - 1
        k_addr = ((w.tb >> log_g) * N + w.lane) * self.k_stride + w.chunk
        k_bank = w.tb[:log_g] if G > 1 else 0
        v_addr = (w.tb * N + w.lane) * self.v_stride + (w.chunk >> log_g)
        v_bank = w.chunk[:log_g] if G > 1 else 0
        read_v = Signal()
        m.d.sync += read_v.eq(self.read_v)
        word = data.ArrayLayout(signed(ACT_BITS), N)
        for g in range(G):
            banks = []
            for name, depth, addr, bank, is_v in (("k", self.k_depth, k_addr, k_bank, 0),
                                                  ("v", self.v_depth, v_addr, v_bank, 1)):
                m.submodules[f"{name}{g}"] = mem = Memory(shape=word, depth=depth, init=[])
                rd, wr = mem.read_port(), mem.write_port()
                m.d.comb += [rd.addr.eq(self.read_addr), rd.en.eq(self.read_en & (self.read_v == is_v)),
                             wr.addr.eq(addr), wr.en.eq(w_valid & (w.v == is_v) & (bank == g))]
                m.d.comb += [wr.data[i].eq(w.data[i]) for i in range(N)]
                banks.append(rd.data)
            k_data, v_data = banks
            m.d.comb += [self.read_data[g * N + i].eq(Mux(read_v, v_data[i], k_data[i])) for i in range(N)]
        return m
