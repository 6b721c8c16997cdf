"""Per-expert token queues for expert-reordered MoE execution, the twin of
``golden/expert_queue.py``."""

import operator
from functools import reduce

from amaranth.hdl import Array, Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ExpertQueueBuilder"]


class ExpertQueueBuilder(wiring.Component):
    """``golden.expert_queue.build_expert_queues`` for one layer, then random-access reads.

    Every expert owns a queue memory of ``max_tokens`` (token, weight) entries and a fill count;
    a token's selection of expert ``e`` is written at ``count[e]`` and the count steps. A token
    selects ``k`` distinct experts (top-k guarantees it), so its ``k`` entries go to ``k``
    different memories and the whole token is written in one cycle. Tokens arrive in increasing
    order, so every queue is in token order, as golden's counting sort leaves it. Memory is
    ``num_experts * max_tokens`` entries, the worst case of every token choosing one expert.

    The unit has two phases. Building: ``i`` takes tokens until one marked ``last``. Reading:
    ``experts`` lists the experts with tokens, increasing, with their counts; ``read`` asks for
    any expert's queue (in any order, as often as wanted) and ``queue`` returns it. ``clear``
    empties every queue and returns to building.

    Parameters
    ----------
    num_experts : int
        Experts E.
    max_tokens : int
        Largest token id plus one (queue capacity).
    k : int
        Experts selected per token.
    weight_bits : int
        Width of an unsigned gate weight.

    Attributes
    ----------
    i : In(stream.Signature(StructLayout({"token": range(max_tokens), "expert": ArrayLayout(range(num_experts), k), "weight": ArrayLayout(unsigned(weight_bits), k), "last": 1})))
        One token's selections in rank order (the top-k unit's order) with their gate weights.
        Tokens in increasing order; ``last`` marks the layer's final token. Not ready while
        reading.
    experts : Out(stream.Signature(StructLayout({"expert": range(num_experts), "count": range(max_tokens + 1), "last": 1})))
        After the build, each expert with at least one token, in increasing order, once;
        ``last`` marks the final one.
    read : In(stream.Signature(range(num_experts)))
        A request for an expert's queue; taken once the build is done. An expert without
        tokens yields no transfer on ``queue``.
    read_count : Out(range(max_tokens + 1))
        The token count of the expert ``read.payload`` names, combinationally (one indexed
        select from a register: a reader of the expert it requests need not take ``count``
        from ``experts``, whose lowest-expert select is deeper).
    queue : Out(stream.Signature(StructLayout({"token": range(max_tokens), "weight": unsigned(weight_bits), "last": 1})))
        The requested queue's (token, weight) entries in order; ``last`` marks its final entry.
    clear : In(1)
        Pulse for one cycle, with no request in flight, to empty the queues for the next layer.
    read_latency : int
        2: when ``read`` transfers on clock edge ``t``, the queue's first entry is on ``queue``
        from edge ``t + read_latency`` on.

    Throughput: building takes one cycle per token (``k`` entries). Reading: ``experts`` gives
    one expert per cycle; ``queue`` one entry per cycle, and a request waiting while the
    previous queue's final address is read is taken at once, so back-to-back requests leave no
    gap between queues.
    """

    read_latency = 2

    def __init__(self, num_experts, max_tokens, k, weight_bits=16):
        if num_experts < 1 or max_tokens < 1:
            raise ValueError("num_experts and max_tokens must be positive")
        if not 1 <= k <= num_experts:
            raise ValueError(f"k must lie in 1..{num_experts}")
        self.num_experts, self.max_tokens, self.k = num_experts, max_tokens, k
        self.weight_bits = weight_bits
        token, expert = range(max_tokens), range(num_experts)
        self._entry = data.StructLayout({"token": token, "weight": unsigned(weight_bits)})
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "token": token,
                "expert": data.ArrayLayout(expert, k),
                "weight": data.ArrayLayout(unsigned(weight_bits), k),
                "last": 1,
            }))),
            "experts": Out(stream.Signature(data.StructLayout({
                "expert": expert,
                "count": range(max_tokens + 1),
                "last": 1,
            }))),
            "read": In(stream.Signature(expert)), "read_count": Out(range(max_tokens + 1)),
            "queue": Out(stream.Signature(data.StructLayout({
                "token": token,
                "weight": unsigned(weight_bits),
                "last": 1,
            }))),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        num_experts, k = self.num_experts, self.k
        p = self.i.payload

        built = Signal()
        counts = [Signal(range(self.max_tokens + 1), name=f"count{e}") for e in range(num_experts)]
        # Experts with tokens not yet listed on ``experts``.
        unlisted = Signal(num_experts)

        m.d.comb += self.i.ready.eq(~built)
        accept = self.i.valid & self.i.ready
        with m.If(accept & p.last):
            m.d.sync += built.eq(1)

        reads = []
        for e in range(num_experts):
            mem = memory.Memory(shape=self._entry, depth=self.max_tokens, init=[])
            m.submodules[f"queue{e}"] = mem
            wr = mem.write_port()
            hit = Cat(p.expert[j] == e for j in range(k))
            weight = p.weight[0]
            for j in range(1, k):
                weight = Mux(hit[j], p.weight[j], weight)
            m.d.comb += [
                wr.addr.eq(counts[e]),
                wr.data.token.eq(p.token),
                wr.data.weight.eq(weight),
                wr.en.eq(accept & hit.any()),
            ]
            with m.If(wr.en):
                m.d.sync += [counts[e].eq(counts[e] + 1), unlisted[e].eq(1)]
            reads.append(mem.read_port())

        # The active list: the lowest unlisted expert each transfer.
        lowest = Signal(num_experts)
        m.d.comb += lowest.eq(unlisted & ~(unlisted - 1))
        m.d.comb += [
            self.experts.valid.eq(built & unlisted.any()),
            self.experts.payload.last.eq((unlisted & (unlisted - 1)) == 0),
        ]
        # ``lowest`` is one-hot (or zero): its expert and count are an AND-OR over the experts,
        # two or three LUT levels, not an if per expert (a priority chain of 7 LUTs in front of
        # the sequencer's expert register on the board top).
        m.d.comb += [
            self.experts.payload.expert.eq(
                Cat(Cat(lowest[e] for e in range(num_experts) if e >> b & 1).any()
                    for b in range(len(self.experts.payload.expert)))),
            self.experts.payload.count.eq(
                reduce(operator.or_, (Mux(lowest[e], counts[e], 0) for e in range(num_experts)))),
        ]
        with m.If(self.experts.valid & self.experts.ready):
            m.d.sync += unlisted.eq(unlisted & ~lowest)

        remaining = self._reads(m, reads, counts, built)
        m.d.comb += self.read_count.eq(Array(counts)[self.read.payload])

        with m.If(self.clear):
            m.d.sync += [built.eq(0), unlisted.eq(0), remaining.eq(0)]
            m.d.sync += [c.eq(0) for c in counts]
        return m

    def _reads(self, m, reads, counts, built):
        """Queue reads: one address per cycle into every memory, the current expert's data kept.

        Returns the count of entries still to read (``clear`` zeroes it)."""
        num_experts = self.num_experts
        current = Signal(range(num_experts))
        pos = Signal(range(self.max_tokens))
        remaining = Signal(range(self.max_tokens + 1))
        selected = Signal(range(num_experts))
        advance = Signal()
        issue = Signal()
        m.d.comb += [
            advance.eq(~self.queue.valid | self.queue.ready),
            issue.eq(advance & (remaining != 0)),
            self.read.ready.eq(built & ((remaining == 0) | (issue & (remaining == 1)))),
        ]
        for rd in reads:
            m.d.comb += [rd.addr.eq(pos), rd.en.eq(advance)]
        for e, rd in enumerate(reads):
            with m.If(selected == e):
                m.d.comb += [self.queue.payload.token.eq(rd.data.token),
                             self.queue.payload.weight.eq(rd.data.weight)]
        with m.If(advance):
            m.d.sync += [self.queue.valid.eq(issue), selected.eq(current),
                         self.queue.payload.last.eq(remaining == 1)]
        with m.If(issue):
            m.d.sync += [pos.eq(pos + 1), remaining.eq(remaining - 1)]
        with m.If(self.read.valid & self.read.ready):
            # One indexed select (a mux tree), not an if per expert (a priority chain 14 LUTs
            # deep behind the sequencer's state in the board top).
            m.d.sync += [current.eq(self.read.payload), pos.eq(0), remaining.eq(Array(counts)[self.read.payload])]
        return remaining
