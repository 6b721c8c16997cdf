"""Sequential restoring divider: one quotient bit per cycle."""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SeqDivider", "serial_steps"]


class SeqDivider(wiring.Component):
    """Unsigned integer division ``dividend // divisor``, one quotient bit per cycle.

    Parameters
    ----------
    dividend_width : int
        Width of the dividend.
    divisor_width : int
        Width of the divisor.
    quotient_width : int, optional
        Width of the quotient, and the number of iterations. Defaults to ``dividend_width``.
        A narrower quotient is a promise by the caller: ``dividend < divisor * 2**quotient_width``
        (softmax's ``2**40 // S`` with ``S >= 2**15`` needs 26 bits, not 41).

    Attributes
    ----------
    i : In(stream.Signature(StructLayout({"dividend", "divisor"})))
        One division per transfer. ``divisor`` must be non-zero.
    o : Out(stream.Signature(StructLayout({"quotient", "remainder"})))
        The result, held until taken.
    latency : int
        ``quotient_width``: when ``i`` transfers on clock edge ``t``, ``o.valid`` is high from
        edge ``t + latency`` on.

    Throughput: one division every ``quotient_width + 2`` cycles when ``o`` is taken at once
    (``i.ready`` is high only while the unit is idle and holds no result).
    """

    def __init__(self, dividend_width, divisor_width, quotient_width=None):
        if quotient_width is None:
            quotient_width = dividend_width
        if not 1 <= quotient_width <= dividend_width:
            raise ValueError("quotient_width must lie in [1, dividend_width]")
        self.dividend_width = dividend_width
        self.divisor_width = divisor_width
        self.quotient_width = quotient_width
        self.latency = quotient_width
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "dividend": unsigned(dividend_width),
                "divisor": unsigned(divisor_width),
            }))),
            "o": Out(stream.Signature(data.StructLayout({
                "quotient": unsigned(quotient_width),
                "remainder": unsigned(divisor_width),
            }))),
        })

    def elaborate(self, platform):
        m = Module()
        qw, vw = self.quotient_width, self.divisor_width

        # The remainder sits above the dividend bits not yet consumed; as those shift out of the
        # top of ``low``, the quotient bits shift into its bottom, so one register holds both.
        rem = Signal(vw)
        low = Signal(qw)
        divisor = Signal(vw)

        start, busy = serial_steps(m, self.i, self.o, qw)
        m.d.comb += [self.o.payload.quotient.eq(low), self.o.payload.remainder.eq(rem)]
        with m.If(start):
            m.d.sync += [
                rem.eq(self.i.payload.dividend >> qw),
                low.eq(self.i.payload.dividend[:qw]),
                divisor.eq(self.i.payload.divisor),
            ]

        # rem < divisor holds before every step, so the trial fits vw + 1 bits.
        trial = Cat(low[-1], rem)
        fits = trial >= divisor
        with m.If(busy):
            m.d.sync += [
                rem.eq(Mux(fits, trial - divisor, trial)),
                low.eq(Cat(fits, low[:-1])),
            ]
        return m


def serial_steps(m, i, o, steps):
    """The handshake of a unit that works on one ``i`` transfer for ``steps`` cycles.

    ``i`` is ready while the unit is idle and holds no result; ``steps`` cycles after the
    transfer, ``o.valid`` rises and stays until ``o`` is taken. Returns ``(start, busy)``:
    ``start`` is the ``i`` transfer, ``busy`` is high on each of the ``steps`` working cycles.
    """
    count = Signal(range(steps + 1))
    busy = Signal()
    start = Signal()
    m.d.comb += [i.ready.eq(~busy & ~o.valid), start.eq(i.valid & i.ready)]
    with m.If(start):
        m.d.sync += [count.eq(steps), busy.eq(1)]
    with m.If(busy):
        m.d.sync += count.eq(count - 1)
        with m.If(count == 1):
            m.d.sync += [busy.eq(0), o.valid.eq(1)]
    with m.If(o.valid & o.ready):
        m.d.sync += o.valid.eq(0)
    return start, busy
