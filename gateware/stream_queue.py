"""A first-in first-out queue between two streams of one shape, registered on both sides."""

from amaranth import Module, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["StreamQueue"]


class StreamQueue(wiring.Component):
    """Payloads of ``shape`` in order: an input register, a memory, an output register.

    Everything either side sees comes from a register, and neither side's handshake reaches
    an adder: ``i.ready`` is reckoned a cycle ahead from the memory's fill, a payload taken on
    ``i`` waits a cycle in a register before it is written, and ``o`` is a register refilled
    from the memory. The fill is the difference of two pointers that each handshake only
    advances, not a level that both handshakes add into (``SyncFIFO``'s level behind the
    sequencer's issue and behind the units' tile handshakes made paths of 9 levels on the
    board top).

    This is written here, not taken from ``amaranth.lib.fifo``, because its FIFOs keep such a
    level and take ``w_en`` into it combinationally.

    Parameters
    ----------
    shape : shape-castable
        The payload (a layout, an enum, a width).
    depth : int
        Entries of the memory, a power of two, at least 4. The queue holds up to ``depth + 1``
        payloads (``depth - 1`` in the memory, the input register, ``o``); ``i`` takes at
        least ``depth - 1`` into an empty queue before it waits.

    Attributes
    ----------
    i : In(stream.Signature(shape))
        Ready (a register) while the memory held at most ``depth - 3`` payloads the cycle
        before, so that the payload taken and the one in the input register both find room.
    o : Out(stream.Signature(shape))
        Latency: a payload is valid here the third cycle after its transfer into an empty
        queue. Throughput: one payload a cycle.
    """

    def __init__(self, shape, depth):
        if depth < 4 or depth & (depth - 1):
            raise ValueError(f"depth must be a power of two, at least 4, not {depth!r}")
        self.depth = depth
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        width, bits = len(Value.cast(self.i.payload)), self.depth.bit_length() - 1
        m.submodules.mem = mem = Memory(shape=width, depth=self.depth, init=[])
        wr, rd = mem.write_port(), mem.read_port(domain="comb")
        # Pointers one bit wider than an address, so that full and empty differ.
        w_ptr, r_ptr = Signal(bits + 1), Signal(bits + 1)
        fill = Signal(bits + 1)
        m.d.comb += fill.eq(w_ptr - r_ptr)

        # Empty after reset, so ready from the first cycle.
        staged, stage, room = Signal(), Signal(width), Signal(init=1)
        take = self.i.valid & room
        m.d.sync += [staged.eq(take), room.eq(fill <= self.depth - 3)]
        with m.If(take):
            m.d.sync += stage.eq(self.i.payload)
        m.d.comb += [self.i.ready.eq(room), wr.en.eq(staged), wr.addr.eq(w_ptr[:bits]), wr.data.eq(stage)]
        with m.If(staged):
            m.d.sync += w_ptr.eq(w_ptr + 1)

        refill = Signal()
        m.d.comb += [rd.addr.eq(r_ptr[:bits]), refill.eq((w_ptr != r_ptr) & (~self.o.valid | self.o.ready))]
        with m.If(refill):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(rd.data), r_ptr.eq(r_ptr + 1)]
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        return m
