"""GELU as ReLU minus an interpolated correction table, the twin of ``golden/gelu.py``."""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import ACT_BITS, REQUANT_MULT_BITS
from golden.gelu import DELTA_FRAC, DELTA_LUT, DELTA_STEP_BITS, GELU_IN_BITS, GELU_IN_FRAC, GELU_OUT_FRAC

from .fixedpoint import halve_round_saturate, rshift_round

__all__ = ["GELU"]

_INTERP_BITS = GELU_IN_FRAC - DELTA_STEP_BITS
_LAST = len(DELTA_LUT) - 1


class GELU(wiring.Component):
    """``golden.gelu.gelu`` on ``lanes`` elements per cycle, fully pipelined.

    Elementwise, so rows do not matter: lane ``k`` of each output transfer is the GELU of lane
    ``k`` of the matching input transfer, in order.

    Parameters
    ----------
    lanes : int
        Elements per transfer.

    Attributes
    ----------
    i : In(stream.Signature(ArrayLayout(signed(16), lanes)))
        Q7.8 inputs (``GELU_IN_FRAC`` fractional bits), as fc1's requantisation produces them.
    o : Out(stream.Signature(ArrayLayout(signed(8), lanes)))
        ``requantize(gelu_fixed(x), mult, shift, ACT_BITS)``.
    mult : In(unsigned(16))
        Requantisation multiplier.
    shift : In(unsigned(6))
        Requantisation shift, 0..62. ``mult`` and ``shift`` are settings, not data: hold them
        constant while any element is in flight (they act on the multiply and shift stages).
    latency : int
        6: when ``i`` transfers on clock edge ``t``, the result is on ``o`` from edge
        ``t + latency`` on.

    Throughput: one transfer (``lanes`` elements) per cycle; every stage advances together and
    stalls only while ``o`` holds a result that is not taken (``i.ready = ~o.valid | o.ready``).
    """

    latency = 6

    def __init__(self, lanes):
        if lanes < 1:
            raise ValueError("lanes must be positive")
        self.lanes = lanes
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(GELU_IN_BITS), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(ACT_BITS), lanes))),
            "mult": In(unsigned(REQUANT_MULT_BITS)),
            "shift": In(unsigned(6)),
        })

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes

        m.submodules.delta_lut = lut = memory.Memory(
            shape=unsigned(max(int(DELTA_LUT.max()).bit_length(), 1)), depth=len(DELTA_LUT),
            init=[int(v) for v in DELTA_LUT])

        advance = Signal()
        m.d.comb += [
            advance.eq(~self.o.valid | self.o.ready),
            self.i.ready.eq(advance),
        ]

        # Stages: table index, table read, interpolate and subtract, multiply, shift, round and
        # saturate. The index has its own stage: |x|, its clamp and the table's LUT tree in one
        # cycle were the unit's longest path.
        v0, v1, v2, v3, v4 = Signal(), Signal(), Signal(), Signal(), Signal()
        with m.If(advance):
            m.d.sync += [v0.eq(self.i.valid), v1.eq(v0), v2.eq(v1), v3.eq(v2), v4.eq(v3),
                         self.o.valid.eq(v4)]

        for k in range(lanes):
            x = self.i.payload[k]
            mag = Signal(GELU_IN_BITS, name=f"mag{k}")
            idx = Signal(range(_LAST + 1), name=f"idx{k}")
            m.d.comb += [
                mag.eq(Mux(x < 0, -x, x)),
                idx.eq(Mux(mag[_INTERP_BITS:] > _LAST, _LAST, mag[_INTERP_BITS:])),
            ]
            x0 = Signal(signed(GELU_IN_BITS), name=f"x0_{k}")
            idx0 = Signal(range(_LAST + 1), name=f"idx0_{k}")
            next0 = Signal(range(_LAST + 1), name=f"next0_{k}")
            frac0 = Signal(_INTERP_BITS, name=f"frac0_{k}")
            with m.If(advance):
                m.d.sync += [
                    x0.eq(x),
                    idx0.eq(idx),
                    next0.eq(Mux(idx == _LAST, _LAST, idx + 1)),
                    frac0.eq(mag[:_INTERP_BITS]),
                ]
            lo_rd, hi_rd = lut.read_port(), lut.read_port()
            m.d.comb += [
                lo_rd.addr.eq(idx0),
                hi_rd.addr.eq(next0),
                lo_rd.en.eq(advance),
                hi_rd.en.eq(advance),
            ]

            x1 = Signal(signed(GELU_IN_BITS), name=f"x1_{k}")
            frac1 = Signal(_INTERP_BITS, name=f"frac1_{k}")
            beyond1 = Signal(name=f"beyond1_{k}")
            # GELU = ReLU - delta with GELU_OUT_FRAC fractional bits: one bit more than the
            # widened input holds both ends.
            g_bits = GELU_IN_BITS + (GELU_OUT_FRAC - GELU_IN_FRAC) + 1
            g2 = Signal(signed(g_bits), name=f"g2_{k}")
            prod3 = Signal(signed(g_bits + REQUANT_MULT_BITS + 1), name=f"prod3_{k}")
            half4 = Signal(signed(len(prod3) + 1), name=f"half4_{k}")

            lo = lo_rd.data
            fine = (lo << _INTERP_BITS) + (hi_rd.data - lo) * frac1
            delta = Mux(beyond1, 0, rshift_round(fine, DELTA_FRAC + _INTERP_BITS - GELU_OUT_FRAC))
            with m.If(advance):
                m.d.sync += [
                    x1.eq(x0),
                    frac1.eq(frac0),
                    beyond1.eq(idx0 == _LAST),
                    g2.eq((Mux(x1 < 0, 0, x1) << (GELU_OUT_FRAC - GELU_IN_FRAC)) - delta),
                    prod3.eq(g2 * self.mult),
                    half4.eq((prod3 << 1) >> self.shift),
                    self.o.payload[k].eq(halve_round_saturate(half4, ACT_BITS)),
                ]
        return m
