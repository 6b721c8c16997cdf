"""A one-payload skid buffer: a stream whose ``i.ready`` is a register."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """Cuts a stream's ready path: ``i.ready`` is a register, not ``o.ready`` through logic.

    While the buffer is empty, ``o`` is ``i`` (no latency). A payload offered on ``i`` in a
    cycle ``o`` does not take it is kept in the buffer; ``i.ready`` is low while it is held, and
    ``o`` shows it until taken. The consumer therefore sees payloads at the same cycles as it
    would without the buffer; only the producer's handshake comes a cycle early in a stall.

    Parameters
    ----------
    shape : shape-castable
        The payload.

    Attributes
    ----------
    i : In(stream.Signature(shape))
        Ready while the buffer is empty.
    o : Out(stream.Signature(shape))
        The held payload while there is one, else ``i``'s. Throughput: one payload a cycle.
    """

    def __init__(self, shape):
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        full = Signal()
        held = Signal.like(self.i.payload)
        m.d.comb += [self.i.ready.eq(~full), self.o.valid.eq(full | self.i.valid),
                     self.o.payload.eq(Mux(full, held, self.i.payload))]
        with m.If(self.o.ready):
            m.d.sync += full.eq(0)
        with m.Elif(self.i.valid & ~full):
            m.d.sync += [full.eq(1), held.eq(self.i.payload)]
        return m
