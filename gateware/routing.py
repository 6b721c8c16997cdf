"""The routing recorder: one MoE layer's expert choices, kept as DRAM beats for the host to read."""

from amaranth import Cat, Const, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from runtime.layout import RoutingLayout

__all__ = ["RoutingRecorder"]


class RoutingRecorder(wiring.Component):
    """Records each token's top-k experts as the router hands them to the expert queues.

    The records are laid out as ``runtime.layout.RoutingLayout`` says for one layer: token ``t``
    at byte ``t * record_bytes`` (``k`` expert ids, a byte each, in rank order, then zero
    padding up to a power of two bytes), in a memory of ``beat_bytes``-wide words, so that a
    layer leaves as whole DRAM beats. Writes use byte enables: a token's record goes into its
    word in one cycle, whatever the order of tokens.

    A token marked ``last`` completes the layer: from then on ``o`` streams the memory's words
    from word 0, one per transfer, as long as the consumer takes them (the sequencer's ROUTES
    instruction takes the layer's beats). Any token on ``i`` stops that stream and restarts it
    at word 0 after the next ``last``: the memory holds one layer, overwritten by the next.
    Words past the layer's last token hold what earlier layers left there (zero after
    configuration, for a fixed token count).

    Its twin is ``runtime.layout.RoutingLayout.encode`` (the layout the host decodes, in numpy;
    the layout is the whole specification, so it has no separate file in ``golden/``), and the
    expert ids are golden's ``route`` indices (``golden/moe.py``) in the top-k unit's order.

    Parameters
    ----------
    max_tokens : int
        Largest token id plus one.
    num_experts : int
        Experts; at most 256, so that an id fits a byte.
    k : int
        Experts per token, 1..``beat_bytes``.
    beat_bytes : int
        Bytes of a memory word and a DRAM beat.

    Attributes
    ----------
    i : In(stream.Signature(StructLayout({"token": range(max_tokens), "expert": ArrayLayout(range(num_experts), k), "last": 1})))
        The router's output as the expert queues take it (``valid`` is a transfer there): one
        token's experts in rank order, ``last`` on the layer's final token. Always ready (it
        is a tap; ``ready`` is a port rather than ``always_ready`` so the unit synthesises alone).
    o : Out(stream.Signature(unsigned(8 * beat_bytes)))
        The completed layer's words from word 0; byte ``j`` of a word is bits ``8j..8j+7``
        (little-endian, as DRAM stores a beat).

    Latency: ``o`` is valid from the second cycle after the ``last`` token's transfer on ``i``
    (``i`` is registered, then the memory read). Throughput: a token per cycle on ``i``; a
    word per cycle on ``o``.
    """

    def __init__(self, max_tokens, num_experts, k, beat_bytes=16):
        if not 1 <= num_experts <= 256:
            raise ValueError(f"expert ids are recorded as bytes: num_experts must lie in 1..256, not {num_experts}")
        if not 1 <= k <= min(num_experts, beat_bytes):
            raise ValueError(f"k must lie in 1..{min(num_experts, beat_bytes)}, not {k}")
        self.max_tokens, self.num_experts, self.k, self.beat_bytes = max_tokens, num_experts, k, beat_bytes
        self.record_bytes = RoutingLayout(1, max_tokens, k).record_bytes
        self.per_word = beat_bytes // self.record_bytes
        self.depth = -(-max_tokens // self.per_word)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "token": range(max_tokens),
                "expert": data.ArrayLayout(range(num_experts), k),
                "last": 1,
            }))),
            "o": Out(stream.Signature(unsigned(8 * beat_bytes))),
        })

    def elaborate(self, platform):
        m = Module()
        rec, per_word = self.record_bytes, self.per_word
        m.submodules.mem = mem = Memory(shape=unsigned(8 * self.beat_bytes), depth=self.depth, init=[])
        wr, rd = mem.write_port(granularity=8), mem.read_port()

        # The tap is registered: the router-to-queue handshake stays the only logic on its path.
        tap = Signal.like(self.i.payload)
        tap_valid = Signal()
        m.d.sync += [tap.eq(self.i.payload), tap_valid.eq(self.i.valid)]
        m.d.comb += self.i.ready.eq(1)

        lane_bits = (per_word - 1).bit_length()
        token = Value.cast(tap.token)
        lane = token[:lane_bits]
        ids = [Signal(8, name=f"id{j}") for j in range(self.k)]     # zero-extended to a byte each
        m.d.comb += [ids[j].eq(tap.expert[j]) for j in range(self.k)]
        record = Cat(*ids, Const(0, 8 * (rec - self.k)))
        m.d.comb += [wr.addr.eq(token[lane_bits:]), wr.data.eq(Cat(*[record] * per_word))]
        for j in range(per_word):
            hit = tap_valid & (lane == j) if lane_bits else tap_valid
            m.d.comb += [wr.en[j * rec + b].eq(hit) for b in range(rec)]

        # Reading: words from 0 on while a complete layer is held, the read port's register as
        # the stream's output register.
        held = Signal()
        pos = Signal(range(self.depth))
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), rd.addr.eq(pos), rd.en.eq(advance),
                     self.o.payload.eq(rd.data)]
        with m.If(tap_valid):
            m.d.sync += [held.eq(tap.last), pos.eq(0), self.o.valid.eq(0)]
        with m.Elif(advance):
            m.d.sync += self.o.valid.eq(held)
            with m.If(held):
                m.d.sync += pos.eq(Mux(pos == self.depth - 1, 0, pos + 1))
        return m
