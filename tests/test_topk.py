"""Top-k gateware against ``golden.topk.topk``: random rows, ties, extremes, k=1 and k=E,
backpressure; cycles per row counted in clock edges."""

import numpy as np
import pytest

from gateware.topk import TopK
from golden.topk import topk
from tests.sim_helpers import stream_through

I32 = (-(1 << 31), (1 << 31) - 1)


def _simulate(dut, groups, *, in_gaps=None, out_stalls=None, stall_rate=0.3):
    """``groups``: arrays ``[lanes, E]``, one row per lane. Returns ``(index, value)`` arrays
    ``[groups, lanes, k]`` and the edges of every input and output transfer."""
    beats = [{"logits": [int(v) for v in g[:, e]], "last": e == g.shape[1] - 1}
             for g in groups for e in range(g.shape[1])]
    outs, in_cycles, out_cycles = stream_through(dut, beats, len(groups), in_gaps=in_gaps,
                                                 out_stalls=out_stalls, stall_rate=stall_rate)
    index = np.array([[[int(v) for v in lane] for lane in p.index] for p in outs], dtype=np.int64)
    value = np.array([[[int(v) for v in lane] for lane in p.value] for p in outs], dtype=np.int64)
    return index, value, in_cycles, out_cycles


def _check(lanes, num_experts, k, groups, **kw):
    dut = TopK(lanes, num_experts, k)
    index, value, in_cycles, out_cycles = _simulate(dut, groups, **kw)
    for g, got_i, got_v in zip(groups, index, value):
        want_i, want_v = topk(g, k)
        np.testing.assert_array_equal(got_i, want_i, err_msg=str(g))
        np.testing.assert_array_equal(got_v, want_v, err_msg=str(g))
    return dut, in_cycles, out_cycles


@pytest.mark.parametrize("lanes,num_experts,k", [(1, 4, 1), (2, 16, 2), (3, 5, 5), (4, 8, 3),
                                                 (1, 1, 1), (2, 2, 2)])
def test_random_rows(lanes, num_experts, k):
    rng = np.random.default_rng(lanes * 100 + num_experts * 10 + k)
    groups = [rng.integers(*I32, (lanes, num_experts), endpoint=True) for _ in range(6)]
    # Narrow ranges make ties common.
    groups += [rng.integers(-2, 3, (lanes, num_experts)) for _ in range(6)]
    _check(lanes, num_experts, k, groups)


@pytest.mark.parametrize("k", [1, 2, 6])
def test_ties_and_extremes(k):
    """All-equal rows, equal pairs, max-negative and max-positive logits, per lane."""
    e = 6
    rows = np.array([
        [7] * e,
        [I32[0]] * e,
        [I32[1]] * e,
        [3, 5, 5, 1, 5, 3],
        [I32[0], I32[0], 0, I32[0], I32[1], I32[1]],
        [0, -1, 0, -1, 0, -1],
        [I32[1], I32[0], I32[1], I32[0], I32[1], I32[0]],
        [1, 2, 3, 4, 5, 6],
        [6, 5, 4, 3, 2, 1],
    ])
    groups = [rows[i:i + 3] for i in range(0, len(rows), 3)]
    _check(3, e, k, groups)


def test_backpressure():
    rng = np.random.default_rng(17)
    groups = [rng.integers(-4, 5, (2, 5)) for _ in range(12)]
    _check(2, 5, 2, groups, in_gaps=np.random.default_rng(1), out_stalls=np.random.default_rng(2))
    _check(2, 5, 2, groups, out_stalls=np.random.default_rng(3), stall_rate=0.9)


@pytest.mark.parametrize("num_experts,k", [(16, 2), (4, 4), (1, 1)])
def test_cycles_per_row(num_experts, k):
    """Rows back to back: num_experts cycles per row; selections ``latency`` edges after last."""
    rng = np.random.default_rng(num_experts)
    rows = 8
    groups = [rng.integers(-100, 100, (4, num_experts)) for _ in range(rows)]
    dut, in_cycles, out_cycles = _check(4, num_experts, k, groups)
    span = in_cycles[-1] - in_cycles[0] + 1
    print(f"TopK lanes=4 E={num_experts} k={k}: {rows} rows in {span} input cycles "
          f"({span / rows:g} cycles per row), latency {out_cycles[0] - in_cycles[num_experts - 1]}")
    assert in_cycles == list(range(1, rows * num_experts + 1))
    assert out_cycles == [in_cycles[(r + 1) * num_experts - 1] + dut.latency for r in range(rows)]
