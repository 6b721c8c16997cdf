"""``gateware.fixedpoint``'s rounding and saturation against ``golden.fixedpoint``, exhaustively."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data
from amaranth.sim import Simulator

from gateware.fixedpoint import halve_round_saturate, rshift_round, saturate
from golden.fixedpoint import rshift_round as golden_rshift_round
from golden.fixedpoint import saturate as golden_saturate

_LANES = 128


def _evaluate(build, values, value_shape, shift, out_bits):
    """Evaluate the combinational ``build(value, shift)`` on every element of ``values``."""
    m = Module()
    value = Signal(data.ArrayLayout(value_shape, _LANES))
    shift_sig = Signal(unsigned(6))
    out = Signal(data.ArrayLayout(signed(out_bits), _LANES))
    m.d.comb += [out[k].eq(build(value[k], shift_sig)) for k in range(_LANES)]
    padded = np.concatenate([values, np.zeros(-len(values) % _LANES, dtype=np.int64)])
    results = []

    async def testbench(ctx):
        ctx.set(shift_sig, shift)
        for chunk in padded.reshape(-1, _LANES):
            ctx.set(value, [int(v) for v in chunk])
            results.extend(int(v) for v in ctx.get(out))

    sim = Simulator(m)
    sim.add_testbench(testbench)
    sim.run()
    return np.array(results[:len(values)], dtype=np.int64)


@pytest.mark.parametrize("shift", [0, 1, 3, 12])
@pytest.mark.parametrize("width,bits", [(11, 4), (7, 6)])
def test_two_stage_round_saturate_matches_golden(width, bits, shift):
    """Every ``width``-bit input: saturation both ways, the limits' neighbours, ties, shift 0."""
    values = np.arange(-(1 << (width - 1)), 1 << (width - 1), dtype=np.int64)
    expected = golden_saturate(golden_rshift_round(values, shift), bits)

    def two_stage(v, s):
        return halve_round_saturate((v << 1) >> s, bits)

    def one_stage(v, s):
        return saturate(rshift_round(v, s), bits)

    np.testing.assert_array_equal(_evaluate(two_stage, values, signed(width), shift, bits), expected)
    np.testing.assert_array_equal(_evaluate(one_stage, values, signed(width), shift, bits), expected)


def test_unsigned_input():
    values = np.arange(0, 1 << 8, dtype=np.int64)
    expected = golden_saturate(golden_rshift_round(values, 3), 5)
    got = _evaluate(lambda v, s: halve_round_saturate((v << 1) >> s, 5), values, unsigned(8), 3, 5)
    np.testing.assert_array_equal(got, expected)
