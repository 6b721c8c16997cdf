"""A first-in first-out queue between two streams of one shape."""

from amaranth import Module
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["StreamQueue"]


class StreamQueue(wiring.Component):
    """``depth`` payloads of ``shape`` in order, a typed ``SyncFIFOBuffered``.

    Parameters
    ----------
    shape : shape-castable
        The payload (a layout, an enum, a width).
    depth : int

    Attributes
    ----------
    i : In(stream.Signature(shape))
        Ready while fewer than ``depth`` payloads are held.
    o : Out(stream.Signature(shape))
        Latency: a payload is valid here the second cycle after its transfer into an empty queue
        (``SyncFIFOBuffered``'s output register). Throughput: one payload a cycle.
    """

    def __init__(self, shape, depth):
        self.depth = depth
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = q = fifo.SyncFIFOBuffered(width=len(self.i.payload.as_value()), depth=self.depth)
        m.d.comb += [q.w_data.eq(self.i.payload), q.w_en.eq(self.i.valid), self.i.ready.eq(q.w_rdy),
                     self.o.payload.eq(q.r_data), self.o.valid.eq(q.r_rdy), q.r_en.eq(self.o.ready)]
        return m
