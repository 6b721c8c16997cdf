"""LayerNorm gateware against ``golden.layernorm.layernorm``, with its cycle counts measured."""

import numpy as np
import pytest

from gateware.layernorm import LayerNorm
from golden.layernorm import layernorm
from tests.sim_helpers import (check_lone_row, check_steady_period, row_beats, row_outputs,
                               stream_through)


def _simulate(dut, rows, gamma, beta, affine_shift, eps_term, *, in_gaps=None, out_stalls=None):
    """Load the parameters, stream ``rows`` (groups, lanes, n); return outputs and cycles."""
    async def load(ctx):
        ctx.set(dut.params.valid, 1)
        for index, (g, b) in enumerate(zip(gamma, beta)):
            ctx.set(dut.params.payload, {"index": index, "gamma": int(g), "beta": int(b)})
            await ctx.tick()
        ctx.set(dut.params.valid, 0)

    beats = row_beats(rows, "x")
    payloads, in_cycles, out_cycles = stream_through(
        dut, beats, len(beats), settings=[(dut.affine_shift, affine_shift), (dut.eps_term, eps_term)],
        prelude=load, in_gaps=in_gaps, out_stalls=out_stalls)
    return row_outputs(payloads, "y", rows.shape), in_cycles, out_cycles


def _check(rows, gamma, beta, affine_shift, eps_term, max_dim=None, banks=2, **kw):
    rows = np.asarray(rows, dtype=np.int64)
    dut = LayerNorm(rows.shape[1], max_dim or rows.shape[2], banks=banks)
    assert 1 <= eps_term < 1 << dut.var_width, "the unit's documented eps_term range"
    y, in_cycles, out_cycles = _simulate(dut, rows, gamma, beta, affine_shift, eps_term, **kw)
    np.testing.assert_array_equal(y, layernorm(rows, gamma, beta, affine_shift, eps_term))
    return dut, in_cycles, out_cycles


def _params(rng, n):
    return rng.integers(-32768, 32768, n), rng.integers(-(1 << 31), 1 << 31, n)


@pytest.mark.parametrize("lanes,n", [(1, 1), (1, 5), (2, 17), (4, 64)])
def test_random_rows(lanes, n):
    rng = np.random.default_rng(10 * lanes + n)
    rows = rng.integers(-3000, 3000, size=(2, lanes, n))
    gamma = rng.integers(-2000, 2000, n)
    beta = rng.integers(-(1 << 20), 1 << 20, n)
    _check(rows, gamma, beta, 4, 50, max_dim=max(n, 20))


@pytest.mark.parametrize("affine_shift,eps_term", [(0, 1), (10, 1), (40, 1), (6, (1 << 38) - 1), (3, 1 << 30)])
def test_edge_rows(affine_shift, eps_term):
    """Constant rows (V = eps_term), the int16 extremes, one outlier, saturation both ways; eps
    small (V down to 1: 2**64 // V needs all 65 quotient bits) and large."""
    n = 16
    rng = np.random.default_rng(affine_shift)
    outlier = np.zeros(n, dtype=np.int64)
    outlier[5] = 32767
    lanes = np.array([
        np.full(n, 1234), np.full(n, -32768), np.full(n, 32767),
        np.where(np.arange(n) % 2, 32767, -32768), outlier, -outlier,
        rng.integers(-32768, 32768, n), np.arange(n) - 8,
    ], dtype=np.int64)
    gamma, beta = _params(rng, n)
    gamma[:2] = [32767, -32768]
    _check(lanes[None], gamma, beta, affine_shift, eps_term)


def test_backpressure_and_short_rows():
    rng = np.random.default_rng(5)
    rows = rng.integers(-32768, 32768, size=(4, 2, 3))
    gamma, beta = _params(rng, 3)
    _check(rows, gamma, beta, 8, 7, max_dim=8, in_gaps=np.random.default_rng(1),
           out_stalls=np.random.default_rng(2))


@pytest.mark.parametrize("n", [1, 64])
def test_row_latency(n):
    """One row group alone: n input cycles, latency, then n output cycles back to back."""
    rng = np.random.default_rng(n)
    gamma, beta = _params(rng, n)
    dut, in_cycles, out_cycles = _check(rng.integers(-2000, 2000, size=(1, 2, n)), gamma, beta,
                                        12, 3)
    check_lone_row(dut, in_cycles, out_cycles, n, "layernorm")


def test_outliers_at_model_width():
    """192 channels (the default model's dim) with one extreme outlier per row: |z| reaches its
    bound sqrt(n - 1) * 2**12, the width the unit keeps for it."""
    n = 192
    rng = np.random.default_rng(192)
    rows = rng.integers(-50, 50, size=(1, 2, n))
    rows[0, 0, 100] = 32767
    rows[0, 1, 0] = -32768
    gamma = np.full(n, 32767)
    gamma[::2] = -32768
    _check(rows, gamma, np.zeros(n, dtype=np.int64), 40, 1)
    _check(rows, gamma, np.zeros(n, dtype=np.int64), 25, 1)


@pytest.mark.parametrize("banks,n", [(2, 96), (3, 96), (3, 104), (4, 110), (3, 20)])
def test_streaming_throughput(banks, n):
    """Back-to-back row groups: the row period settles to ``steady_period``, exactly."""
    groups = 2 * banks + 3
    rng = np.random.default_rng(banks + n)
    gamma, beta = _params(rng, n)
    dut, _, out_cycles = _check(rng.integers(-2000, 2000, size=(groups, 2, n)), gamma, beta,
                                20, 9, banks=banks)
    check_steady_period(dut, out_cycles, n, "layernorm")
