"""A first-in first-out queue between two streams of one shape, registered on both sides."""

from amaranth import Module, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["StreamQueue"]


class StreamQueue(wiring.Component):
    """Payloads of ``shape`` in order, a typed ``SyncFIFOBuffered`` behind an input register.

    Everything either side sees comes from a register: ``i.ready`` is reckoned a cycle ahead
    from the queue's level, and a payload taken on ``i`` waits a cycle in a register before it
    enters the FIFO. The producer's handshake therefore reaches no FIFO level and the
    consumer's none of the producer's logic (the sequencer's issue into the descriptor queues'
    levels made paths of 9 levels on the board top, through a skid buffer's pass-through).

    Parameters
    ----------
    shape : shape-castable
        The payload (a layout, an enum, a width).
    depth : int
        Payloads held, at least 3; ``i`` takes at least ``depth - 2`` before it waits.

    Attributes
    ----------
    i : In(stream.Signature(shape))
        Ready (a register) while the FIFO held fewer than ``depth - 2`` payloads the cycle
        before, so that the payload taken and the one in the input register both find room.
    o : Out(stream.Signature(shape))
        Latency: a payload is valid here the third cycle after its transfer into an empty
        queue (the input register, then ``SyncFIFOBuffered``'s output register). Throughput:
        one payload a cycle.
    """

    def __init__(self, shape, depth):
        if depth < 3:
            raise ValueError(f"depth must be at least 3, not {depth!r}")
        self.depth = depth
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        width = len(self.i.payload.as_value())
        m.submodules.fifo = q = fifo.SyncFIFOBuffered(width=width, depth=self.depth)
        staged, stage, room = Signal(), Signal(width), Signal()
        take = self.i.valid & room
        m.d.sync += [staged.eq(take), room.eq(q.level < self.depth - 2)]
        with m.If(take):
            m.d.sync += stage.eq(self.i.payload)
        m.d.comb += [self.i.ready.eq(room), q.w_en.eq(staged), q.w_data.eq(stage),
                     self.o.payload.eq(q.r_data), self.o.valid.eq(q.r_rdy), q.r_en.eq(self.o.ready)]
        return m
