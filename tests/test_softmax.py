"""Softmax gateware against ``golden.softmax.softmax``, with its cycle counts measured."""

import numpy as np
import pytest

from gateware.softmax import Softmax
from golden.softmax import EXP_IN_FRAC, softmax
from tests.sim_helpers import (check_lone_row, check_steady_period, row_beats, row_outputs,
                               stream_through)


def _simulate(dut, rows, *, in_gaps=None, out_stalls=None):
    """Stream ``rows`` (groups, lanes, n) through ``dut``; return outputs and transfer cycles.

    ``in_gaps``/``out_stalls`` are seeded generators: the producer idles and the consumer drops
    ``ready`` at random to exercise back-pressure; without them both run at full rate.
    """
    beats = row_beats(rows, "u")
    payloads, in_cycles, out_cycles = stream_through(dut, beats, len(beats), in_gaps=in_gaps,
                                                     out_stalls=out_stalls)
    return row_outputs(payloads, "p", rows.shape), in_cycles, out_cycles


def _check(rows, out_frac, max_len=None, banks=2, **kw):
    rows = np.asarray(rows, dtype=np.int64)
    dut = Softmax(rows.shape[1], max_len or rows.shape[2], out_frac, banks=banks)
    p, in_cycles, out_cycles = _simulate(dut, rows, **kw)
    np.testing.assert_array_equal(p, softmax(rows, out_frac))
    return dut, in_cycles, out_cycles


@pytest.mark.parametrize("lanes,n", [(1, 1), (1, 5), (2, 17), (4, 64), (2, 1)])
@pytest.mark.parametrize("out_frac", [8, 15])
def test_random_rows(lanes, n, out_frac):
    rng = np.random.default_rng(1000 * lanes + n + out_frac)
    rows = rng.integers(-4 << EXP_IN_FRAC, 4 << EXP_IN_FRAC, size=(3, lanes, n))
    _check(rows, out_frac, max_len=max(n, 20))


def test_edge_rows():
    """Equal rows, the int16 extremes, a late new maximum, and rows spread far enough that exp
    underflows to 0 (distances beyond the clamp of the exp shift included)."""
    n = 17
    late_max = np.full(n, -3000)
    late_max[-1] = 2000
    rising = np.arange(n) * 700 - 6000
    spread = np.where(np.arange(n) % 2, 32767, -32768)
    lanes = np.array([
        np.zeros(n), np.full(n, -32768), np.full(n, 32767), late_max, rising, spread,
        np.linspace(-32768, 32767, n).astype(np.int64), np.r_[32767, np.full(n - 1, -32768)],
    ], dtype=np.int64)
    _check(lanes[None], 8)
    _check(lanes[None], 15)


def test_backpressure():
    rng = np.random.default_rng(7)
    rows = rng.integers(-3000, 3000, size=(4, 2, 9))
    _check(rows, 8, max_len=12, in_gaps=np.random.default_rng(1), out_stalls=np.random.default_rng(2))


def _slow(rows):
    """Per row group, whether each element is a new maximum in some lane (not the first)."""
    rows = np.asarray(rows)
    running = np.maximum.accumulate(rows, axis=-1)
    slow = np.zeros(rows.shape[::2], dtype=bool)
    slow[:, 1:] = (rows[..., 1:] > running[..., :-1]).any(axis=1)
    return slow


def _leading_max(rng, groups, lanes, n):
    """Random rows whose first element is the row's maximum: no element after it is a new one."""
    rows = rng.integers(-2000, 2000, size=(groups, lanes, n))
    rows[..., 0] = 2000
    return rows


@pytest.mark.parametrize("n", [1, 5, 64])
def test_row_latency(n):
    """One row group alone, no new maximum after its first element: n inputs on n cycles,
    ``latency`` (35) edges, then n output cycles back to back."""
    dut, in_cycles, out_cycles = _check(_leading_max(np.random.default_rng(n), 1, 2, n), 8)
    check_lone_row(dut, in_cycles, out_cycles, n, "softmax")
    # The documented figures, pinned: a change to them is a change to the docstring.
    assert (dut.input_period, dut.latency) == (1, 35)


@pytest.mark.parametrize("n", [2, 12, 64])
def test_new_maxima_cost_a_cycle_each(n):
    """Random rows: each element that is a new maximum in some lane (its running-sum rescale is
    a registered product) delays the element two behind it by one cycle, and the row's first
    output by one cycle; nothing else moves."""
    rows = np.random.default_rng(n + 100).integers(-2000, 2000, size=(1, 4, n))
    rows[0, 0] = np.arange(n)                # one lane rising: every element a new maximum
    rows[0, 1, 1] = 3000                     # and one with its maximum second
    slow = _slow(rows)[0]
    assert slow[1:].all()
    for rows_ in (rows, rows[:, 1:]):
        slow = _slow(rows_)[0]
        dut, in_cycles, out_cycles = _check(rows_, 8)
        late = np.r_[0, 0, np.cumsum(slow)[:-2]][:n]
        assert [c - in_cycles[0] for c in in_cycles] == list(np.arange(n) + late)
        assert out_cycles == list(range(out_cycles[0], out_cycles[0] + n))
        assert out_cycles[0] - in_cycles[0] == n - 1 + slow.sum() + dut.latency


def test_fixed_period():
    """``fixed_period``: the same probabilities; two cycles per element whatever the data."""
    rng = np.random.default_rng(11)
    rows = rng.integers(-2000, 2000, size=(3, 2, 16))
    dut = Softmax(2, 16, 15, banks=3, fixed_period=True)
    p, in_cycles, _ = _simulate(dut, rows)
    np.testing.assert_array_equal(p, softmax(rows, 15))
    # The input register takes one element ahead of the stage, then one per two cycles.
    assert np.diff(in_cycles[1:16]).tolist() == [2] * 14
    assert (dut.input_period, dut.latency) == (2, 36)


@pytest.mark.parametrize("banks,n", [(2, 64), (3, 64), (3, 17), (2, 17), (2, 5)])
def test_streaming_throughput(banks, n):
    """Back-to-back row groups, no new maximum after each row's first element: the row period
    settles to ``steady_period``, exactly. Bound by the input (1 cycle per element) for (3, 64);
    by the two or three row banks for (2, 64), (3, 17) and (2, 17) (a bank held 2 * n + 29
    cycles); by the divider's 28 cycles for (2, 5)."""
    groups = 2 * banks + 3
    rows = _leading_max(np.random.default_rng(banks + n), groups, 2, n)
    dut, _, out_cycles = _check(rows, 8, banks=banks)
    check_steady_period(dut, out_cycles, n, "softmax")


def test_long_equal_row_fills_the_sum():
    """300 equal elements: S = 300 * 2**EXP_FRAC, near the top of the sum's width."""
    _check(np.full((1, 1, 300), 1234), 15)


@pytest.mark.slow
def test_max_row_len():
    """The longest row golden allows, equal elements (largest sum) and a random one."""
    from golden.softmax import MAX_ROW_LEN
    rng = np.random.default_rng(4096)
    rows = np.stack([np.full(MAX_ROW_LEN, -5), rng.integers(-32768, 32768, MAX_ROW_LEN)])
    _check(rows[None], 15)
