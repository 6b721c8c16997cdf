"""Sequential integer square root: one root bit per cycle."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .seq_divider import serial_steps

__all__ = ["SeqIsqrt"]


class SeqIsqrt(wiring.Component):
    """``math.isqrt(x)`` by the digit-by-digit (restoring) method, one root bit per cycle.

    Parameters
    ----------
    width : int
        Width of the radicand ``x``.

    Attributes
    ----------
    i : In(stream.Signature(unsigned(width)))
        One radicand per transfer.
    o : Out(stream.Signature(unsigned(ceil(width / 2))))
        ``floor(sqrt(x))``, held until taken.
    root_width : int
        ``ceil(width / 2)``: the number of iterations.
    latency : int
        ``root_width``: when ``i`` transfers on clock edge ``t``, ``o.valid`` is high from edge
        ``t + latency`` on.

    Throughput: one root every ``root_width + 2`` cycles when ``o`` is taken at once.
    """

    def __init__(self, width):
        self.width = width
        self.root_width = (width + 1) // 2
        self.latency = self.root_width
        super().__init__({
            "i": In(stream.Signature(unsigned(width))),
            "o": Out(stream.Signature(unsigned(self.root_width))),
        })

    def elaborate(self, platform):
        m = Module()
        k = self.root_width

        # Invariant: rem = x_hi - root**2 <= 2 * root, where x_hi is the radicand consumed so far,
        # so k + 2 bits hold it and the shifted-in trial needs k + 4.
        radicand = Signal(2 * k)
        rem = Signal(k + 2)
        root = Signal(k)
        start, busy = serial_steps(m, self.i, self.o, k)
        m.d.comb += self.o.payload.eq(root)
        with m.If(start):
            m.d.sync += [radicand.eq(self.i.payload), rem.eq(0), root.eq(0)]

        shifted = Cat(radicand[-2:], rem)
        trial = Cat(Const(1, 2), root)
        fits = shifted >= trial
        with m.If(busy):
            m.d.sync += [
                radicand.eq(radicand << 2),
                rem.eq(Mux(fits, shifted - trial, shifted)),
                root.eq(Cat(fits, root[:-1])),
            ]
        return m
