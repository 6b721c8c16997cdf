"""Bias, requantisation and residual add on the MAC array's output, the twin of
``golden/postprocess.py``."""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import ACT_BITS, REQUANT_MULT_BITS, RES_BITS
from golden.mac_array import ACC_BITS

from .fixedpoint import saturate
from .lanes import lane_layout
from .skid_buffer import SkidBuffer

__all__ = ["PostProcess"]

# The sum acc + bias (ACC_BITS + 1 signed) is split so that each half times the multiplier fits
# one DSP48E2 (27 x 18 signed): an unsigned low part and a signed high part.
_SUM_BITS = ACC_BITS + 1
_LO_BITS = 17
_HI_BITS = _SUM_BITS - _LO_BITS


class PostProcess(wiring.Component):
    """``golden.postprocess.postprocess`` on ``lanes`` token lanes of one output channel.

    ``out = saturate(rshift_round((acc + bias) * mult, shift) [+ residual], bits)``, exactly,
    with ``bits`` chosen per transfer: ``narrow_bits`` (activations) or 16 (residual stream).

    The product is up to 49 bits wide, so each lane splits ``acc + bias`` into a low 17-bit and a
    high 16-bit part, multiplies both by ``mult`` (one DSP48E2 each, registered operands and
    product; Yosys packs both operand stages and the product register for 7-series) and adds
    them back shifted in fabric. The rounding shift is
    ``(((2 * p) >> shift) + 1) >> 1``, which equals golden's ``(p + 2**(shift-1)) >> shift`` for
    every shift including 0, with one barrel shifter and no rounding-constant shifter.

    Parameters
    ----------
    lanes : int
        Token lanes per transfer.
    narrow_bits : int
        Saturation width of ``narrow`` transfers; golden's ``ACT_BITS`` by default.

    Attributes
    ----------
    i : In(stream.Signature(StructLayout(...)))
        One output channel for ``lanes`` tokens. Fields: ``acc`` (ArrayLayout(signed(32),
        lanes)), the channel's ``bias`` (signed(32)), ``mult`` (unsigned(16)) and ``shift``
        (unsigned(6), 0..62 as golden requires; 63 gives 0), ``residual`` (ArrayLayout(
        signed(16), lanes)), ``add_residual`` (add ``residual`` before the saturation),
        ``narrow`` (saturate to ``narrow_bits``, else 16 bits) and ``last``, passed through to
        ``o`` for framing.
    o : Out(stream.Signature(StructLayout({"data": ArrayLayout(signed(16), lanes), "last": 1})))
        The results, in input order; with ``narrow`` they lie in the signed ``narrow_bits``
        range.
    latency : int
        7: when ``i`` transfers on clock edge ``t``, the result is on ``o`` from edge
        ``t + latency`` on. Stages: bias add; split operands; products; recombine; shift;
        round and residual add; saturate.

    Throughput: one transfer (``lanes`` results) per cycle; every stage advances together and
    stalls only while ``o`` holds a result that is not taken. ``i.ready`` is a register: a
    transfer offered while the stages stall waits in a skid buffer (:class:`SkidBuffer`), and
    ``latency`` counts from the cycle the first stage takes it.
    """

    latency = 7

    def __init__(self, lanes, *, narrow_bits=ACT_BITS):
        if lanes < 1:
            raise ValueError("lanes must be positive")
        if not 1 < narrow_bits <= RES_BITS:
            raise ValueError(f"narrow_bits must lie in 2..{RES_BITS}")
        self.lanes = lanes
        self.narrow_bits = narrow_bits
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "acc": data.ArrayLayout(signed(ACC_BITS), lanes),
                "bias": signed(ACC_BITS),
                "mult": unsigned(REQUANT_MULT_BITS),
                "shift": unsigned(6),
                "residual": data.ArrayLayout(signed(RES_BITS), lanes),
                "add_residual": 1,
                "narrow": 1,
                "last": 1,
            }))),
            "o": Out(stream.Signature(lane_layout(lanes, signed(RES_BITS)))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.skid = skid = SkidBuffer(self.i.payload.shape())
        wiring.connect(m, wiring.flipped(self.i), skid.i)
        p = skid.o.payload

        advance = Signal()
        m.d.comb += [
            advance.eq(~self.o.valid | self.o.ready),
            skid.o.ready.eq(advance),
        ]

        # Per-transfer fields ride along the lanes' pipeline, one register set per stage.
        ctl = data.StructLayout({"shift": unsigned(6), "add_residual": 1, "narrow": 1, "last": 1})
        valid = [Signal(name=f"v{s}") for s in range(1, self.latency)] + [self.o.valid]
        ctls = [Signal(ctl, name=f"ctl{s}") for s in range(1, self.latency)]
        mult1 = Signal(unsigned(REQUANT_MULT_BITS))
        residual = [Signal(data.ArrayLayout(signed(RES_BITS), self.lanes), name=f"res{s}")
                    for s in range(1, 6)]
        with m.If(advance):
            m.d.sync += [
                valid[0].eq(skid.o.valid),
                ctls[0].shift.eq(p.shift),
                ctls[0].add_residual.eq(p.add_residual),
                ctls[0].narrow.eq(p.narrow),
                ctls[0].last.eq(p.last),
                mult1.eq(p.mult),
                residual[0].eq(p.residual),
                self.o.payload.last.eq(ctls[-1].last),
            ]
            m.d.sync += [after.eq(before) for before, after in zip(valid, valid[1:])]
            m.d.sync += [after.eq(before) for before, after in zip(ctls, ctls[1:])]
            m.d.sync += [after.eq(before) for before, after in zip(residual, residual[1:])]

        for lane in range(self.lanes):
            sum1 = Signal(signed(_SUM_BITS), name=f"sum1_{lane}")
            lo2 = Signal(unsigned(_LO_BITS), name=f"lo2_{lane}")
            hi2 = Signal(signed(_HI_BITS), name=f"hi2_{lane}")
            # One multiplier operand register per DSP, so each DSP absorbs its own.
            mlo2 = Signal(unsigned(REQUANT_MULT_BITS), name=f"mlo2_{lane}")
            mhi2 = Signal(unsigned(REQUANT_MULT_BITS), name=f"mhi2_{lane}")
            plo3 = Signal(unsigned(_LO_BITS + REQUANT_MULT_BITS), name=f"plo3_{lane}")
            phi3 = Signal(signed(_HI_BITS + REQUANT_MULT_BITS + 1), name=f"phi3_{lane}")
            prod4 = Signal(signed(_SUM_BITS + REQUANT_MULT_BITS + 1), name=f"prod4_{lane}")
            # Twice the product, shifted: one guard bit below the result's LSB for rounding.
            half5 = Signal(signed(len(prod4) + 1), name=f"half5_{lane}")
            value6 = Signal(signed(len(prod4) + 1), name=f"value6_{lane}")
            with m.If(advance):
                m.d.sync += [
                    sum1.eq(p.acc[lane] + p.bias),
                    lo2.eq(sum1[:_LO_BITS]),
                    hi2.eq(sum1[_LO_BITS:].as_signed()),
                    mlo2.eq(mult1),
                    mhi2.eq(mult1),
                    plo3.eq(lo2 * mlo2),
                    phi3.eq(hi2 * mhi2),
                    prod4.eq((phi3 << _LO_BITS) + plo3),
                    half5.eq((prod4 << 1) >> ctls[3].shift),
                    value6.eq(((half5 + 1) >> 1)
                              + Mux(ctls[4].add_residual, residual[4][lane], 0)),
                    self.o.payload.data[lane].eq(Mux(ctls[5].narrow,
                                                     saturate(value6, self.narrow_bits),
                                                     saturate(value6, RES_BITS))),
                ]
        return m
