"""GELU gateware against ``golden.gelu.gelu``: every int16 input, and its rate in cycles."""

import numpy as np
import pytest

from gateware.gelu import GELU
from golden.gelu import gelu
from tests.sim_helpers import stream_through


def _simulate(dut, x, mult, shift, *, in_gaps=None, out_stalls=None):
    """Stream ``x`` (transfers, lanes) through ``dut``; return outputs and transfer cycles."""
    beats = [[int(v) for v in row] for row in x]
    payloads, in_cycles, out_cycles = stream_through(dut, beats, len(beats),
                                                     settings=[(dut.mult, mult), (dut.shift, shift)],
                                                     in_gaps=in_gaps, out_stalls=out_stalls)
    return np.array([[int(v) for v in q] for q in payloads], dtype=np.int64), in_cycles, out_cycles


def test_all_inputs_and_rate():
    """All 65536 int16 inputs, 8 lanes wide, at full rate: one transfer per cycle."""
    lanes = 8
    x = np.arange(-32768, 32768, dtype=np.int64).reshape(-1, lanes)
    mult, shift = 40000, 17
    dut = GELU(lanes)
    y, in_cycles, out_cycles = _simulate(dut, x, mult, shift)
    np.testing.assert_array_equal(y, gelu(x, mult, shift))
    transfers = len(x)
    print(f"GELU lanes={lanes}: {transfers} transfers in {in_cycles[-1] - in_cycles[0] + 1} input "
          f"cycles, {out_cycles[-1] - out_cycles[0] + 1} output cycles")
    assert in_cycles == list(range(1, transfers + 1))
    assert out_cycles == [c + dut.latency for c in in_cycles]


@pytest.mark.parametrize("lanes", [1, 2, 4])
@pytest.mark.parametrize("mult,shift", [(1, 0), (65535, 0), (65535, 62), (300, 8), (12345, 20)])
def test_requant_settings(lanes, mult, shift):
    """Identity, saturation both ways, everything rounded to 0, and typical settings."""
    rng = np.random.default_rng(lanes * 100 + shift)
    edges = [-32768, -32767, -1409, -1408, -1407, -1, 0, 1, 7, 8, 1407, 1408, 32767]
    x = np.concatenate([edges, rng.integers(-32768, 32768, 64 * lanes - len(edges))])
    x = x[: len(x) // lanes * lanes].reshape(-1, lanes)
    y, _, _ = _simulate(GELU(lanes), x, mult, shift)
    np.testing.assert_array_equal(y, gelu(x, mult, shift))


def test_backpressure():
    rng = np.random.default_rng(3)
    x = rng.integers(-2000, 2000, (200, 2))
    y, _, _ = _simulate(GELU(2), x, 500, 9, in_gaps=np.random.default_rng(4),
                        out_stalls=np.random.default_rng(5))
    np.testing.assert_array_equal(y, gelu(x, 500, 9))
