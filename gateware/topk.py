"""Streaming top-k selection per token lane, the twin of ``golden/topk.py``."""

from amaranth.hdl import Module, Mux, Shape, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.mac_array import ACC_BITS

__all__ = ["TopK"]


class TopK(wiring.Component):
    """``golden.topk.topk`` on ``lanes`` rows (tokens) at once, one expert's logits per transfer.

    Each lane keeps a list of its ``k`` best (value, index) pairs sorted by rank. A new logit is
    inserted before the first entry it strictly exceeds (empty entries rank below anything), the
    entries from there on shift down one and the last falls off. Logits arrive in increasing
    index order, so an equal logit lands after the earlier ones: ties keep the lower index, as
    golden's stable sort does. That is ``k`` comparators per lane and one logit per cycle.

    A finished list moves to the output register while the next row's logits already insert
    into a fresh list.

    Parameters
    ----------
    lanes : int
        Rows (tokens) processed in lockstep.
    num_experts : int
        Logits per row E (sets the index width).
    k : int
        Selections per row, ``1 <= k <= num_experts``.
    logit_bits : int
        Signed width of a logit; golden's ``ACC_BITS`` (the MAC array's output) by default.

    Attributes
    ----------
    i : In(stream.Signature(StructLayout({"logits": ArrayLayout(signed(logit_bits), lanes), "last": 1})))
        Logit ``e`` of every lane's row; transfer ``e`` of a row is expert ``e``. ``last`` marks
        expert ``num_experts - 1``; a row has exactly ``num_experts`` transfers.
    o : Out(stream.Signature(StructLayout({"index": ArrayLayout(ArrayLayout(range(num_experts), k), lanes), "value": ArrayLayout(ArrayLayout(signed(logit_bits), k), lanes)})))
        One transfer per row: ``index[lane][r]`` and ``value[lane][r]`` are lane ``lane``'s
        rank-``r`` selection (rank 0 is the largest).
    latency : int
        2: when a row's ``last`` transfers on clock edge ``t`` and the output register is free,
        the row's selections are on ``o`` from edge ``t + latency`` on.

    Throughput: one logit per lane per cycle, so ``num_experts`` cycles per row, rows back to back
    while ``o`` is ready at least once per row. Input stalls only when a finished list waits for
    the output register (``i.ready = ~full | ~o.valid | o.ready``).
    """

    latency = 2

    def __init__(self, lanes, num_experts, k, *, logit_bits=ACC_BITS):
        if lanes < 1:
            raise ValueError("lanes must be positive")
        if not 1 <= k <= num_experts:
            raise ValueError(f"top-k needs 1 <= k <= num_experts, got k={k}, "
                             f"num_experts={num_experts}")
        self.lanes, self.num_experts, self.k, self.logit_bits = lanes, num_experts, k, logit_bits
        index = Shape.cast(range(num_experts))
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "logits": data.ArrayLayout(signed(logit_bits), lanes),
                "last": 1,
            }))),
            "o": Out(stream.Signature(data.StructLayout({
                "index": data.ArrayLayout(data.ArrayLayout(index, k), lanes),
                "value": data.ArrayLayout(data.ArrayLayout(signed(logit_bits), k), lanes),
            }))),
        })

    def elaborate(self, platform):
        m = Module()
        k = self.k

        expert = Signal(range(self.num_experts))
        full = Signal()   # the working lists hold a finished row
        o_free = Signal()
        accept = Signal()
        m.d.comb += [
            o_free.eq(~self.o.valid | self.o.ready),
            self.i.ready.eq(~full | o_free),
            accept.eq(self.i.valid & self.i.ready),
        ]

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(full & o_free):
            m.d.sync += [self.o.valid.eq(1), full.eq(0)]
        with m.If(accept):
            m.d.sync += [
                expert.eq(Mux(self.i.payload.last, 0, expert + 1)),
                full.eq(self.i.payload.last),
            ]

        for lane in range(self.lanes):
            value = [Signal(signed(self.logit_bits), name=f"value{lane}_{r}") for r in range(k)]
            index = [Signal(range(self.num_experts), name=f"index{lane}_{r}") for r in range(k)]
            used = [Signal(name=f"used{lane}_{r}") for r in range(k)]
            with m.If(full & o_free):
                m.d.sync += [self.o.payload.value[lane][r].eq(value[r]) for r in range(k)]
                m.d.sync += [self.o.payload.index[lane][r].eq(index[r]) for r in range(k)]

            x = self.i.payload.logits[lane]
            # A finished row is leaving (or waits, and then nothing is accepted): the new logit
            # starts an empty list.
            beats = [Signal(name=f"beats{lane}_{r}") for r in range(k)]
            for r in range(k):
                m.d.comb += beats[r].eq(full | ~used[r] | (x > value[r]))
            with m.If(accept):
                # Sorted lists make ``beats`` monotonic: a slot whose predecessor is beaten
                # takes the predecessor's entry; the first slot beaten takes x.
                with m.If(beats[0]):
                    m.d.sync += [value[0].eq(x), index[0].eq(expert), used[0].eq(1)]
                for r in range(1, k):
                    with m.If(beats[r - 1]):
                        m.d.sync += [value[r].eq(value[r - 1]), index[r].eq(index[r - 1]),
                                     used[r].eq(used[r - 1] & ~full)]
                    with m.Elif(beats[r]):
                        m.d.sync += [value[r].eq(x), index[r].eq(expert), used[r].eq(1)]
            with m.Elif(full & o_free):
                m.d.sync += [u.eq(0) for u in used]
        return m
