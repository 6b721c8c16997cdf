"""Block transposer against numpy's transpose: random and extreme blocks for several n and lane
shapes, ``last`` tags, random stalls on both sides, stream rules on ``o``, and throughput and
latency counted in clock edges."""

import gc

import numpy as np
import pytest
from amaranth.hdl import Shape, signed, unsigned

from gateware.transpose import Transpose
from tests.sim_helpers import stream_through


def _limits(shape):
    s = Shape.cast(shape)
    if s.signed:
        return -(1 << (s.width - 1)), (1 << (s.width - 1)) - 1
    return 0, (1 << s.width) - 1


def _blocks(rng, n, shape, count):
    """``count`` random ``[n, n]`` blocks: uniform over the shape's range, extremes only, and
    mixes of extremes with 0 and -1/1 (where the shape has them)."""
    lo, hi = _limits(shape)
    specials = np.array(sorted({lo, hi, 0, min(max(-1, lo), hi), min(1, hi)}), dtype=np.int64)
    out = []
    for k in range(count):
        if k % 3 == 0:
            out.append(rng.choice(specials, (n, n)))
        else:
            out.append(rng.integers(lo, hi, (n, n), endpoint=True))
    return out


def _monitor(dut, violations):
    """A background process flagging ``o`` breaking the stream rules: once valid, valid and
    payload hold until the transfer."""
    async def process(ctx):
        held = None
        async for _, _, valid, ready, payload in ctx.tick().sample(
                dut.o.valid, dut.o.ready, dut.o.payload.as_value()):
            if held is not None and (not valid or payload != held):
                violations.append((held, valid, payload))
            held = payload if valid and not ready else None
    return process


def _simulate(dut, blocks, tags, *, in_gaps=None, out_stalls=None, gap_rate=0.3,
              stall_rate=0.3):
    """Send ``blocks`` row by row (block ``b``'s final row tagged ``tags[b]``); return the
    output words as ``(data [words, n], last [words])`` and the edges of every transfer."""
    n = dut.n
    rows = [{"data": [int(v) for v in block[r]], "last": bool(tag and r == n - 1)}
            for block, tag in zip(blocks, tags) for r in range(n)]
    violations = []
    outs, in_cycles, out_cycles = stream_through(
        dut, rows, len(rows), in_gaps=in_gaps, gap_rate=gap_rate, out_stalls=out_stalls,
        stall_rate=stall_rate, timeout=100 * len(rows) + 100, processes=[_monitor(dut, violations)])
    assert not violations, f"o broke the stream rules: {violations[:3]}"
    got = np.array([[int(v) for v in p.data] for p in outs], dtype=np.int64).reshape(-1, n)
    last = [bool(p.last) for p in outs]
    return got, last, in_cycles, out_cycles


def _check(n, shape, blocks, tags, **kw):
    dut = Transpose(n, shape)
    got, last, in_cycles, out_cycles = _simulate(dut, blocks, tags, **kw)
    want = np.concatenate([block.T for block in blocks]) if blocks else np.zeros((0, n))
    np.testing.assert_array_equal(got, want)
    assert last == [bool(tag and c == n - 1) for tag in tags for c in range(n)]
    return dut, in_cycles, out_cycles


SHAPES = [signed(16), unsigned(11), signed(1), unsigned(1)]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_random_blocks_with_stalls(n, shape):
    rng = np.random.default_rng(1000 * n + Shape.cast(shape).width)
    blocks = _blocks(rng, n, shape, 7)
    tags = rng.random(len(blocks)) < 0.5
    _check(n, shape, blocks, tags, in_gaps=np.random.default_rng(n),
           out_stalls=np.random.default_rng(n + 50))


@pytest.mark.parametrize("n", [1, 2, 4, 8])
@pytest.mark.parametrize("gap_rate,stall_rate", [(0.0, 0.9), (0.9, 0.0), (0.6, 0.6)])
def test_backpressure_patterns(n, gap_rate, stall_rate):
    """A slow consumer fills both banks and must stall the input; a slow producer starves the
    output; both slow interleave fills and drains arbitrarily."""
    rng = np.random.default_rng(n)
    blocks = _blocks(rng, n, signed(16), 6)
    tags = [True, False, False, True, True, False]
    _check(n, signed(16), blocks, tags, in_gaps=np.random.default_rng(7), gap_rate=gap_rate,
           out_stalls=np.random.default_rng(8), stall_rate=stall_rate)


def test_distinct_lanes_and_tags():
    """Every lane value distinct (positions can't alias); tags on alternating blocks only."""
    n = 4
    blocks = [np.arange(n * n).reshape(n, n) + 100 * b for b in range(4)]
    _check(n, unsigned(11), blocks, [False, True, False, True],
           out_stalls=np.random.default_rng(3))


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_rejects_bad_n():
    for n in (0, -1, 2.0):
        with pytest.raises(ValueError):
            Transpose(n, signed(8))
    gc.collect()    # the half-built components warn when collected: inside this test's filter


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_throughput_and_latency(n):
    """No stalls: B blocks go in on B*n consecutive edges and come out on B*n consecutive edges,
    each block's first column ``latency`` edges after its final row."""
    rng = np.random.default_rng(n + 9)
    count = 6
    blocks = _blocks(rng, n, signed(16), count)
    dut, in_cycles, out_cycles = _check(n, signed(16), blocks, [b % 2 for b in range(count)])
    words = count * n
    span = out_cycles[-1] - in_cycles[0] + 1
    print(f"Transpose n={n}: {count} blocks, {words} words in {span} edges from first input to "
          f"last output, latency {out_cycles[0] - in_cycles[n - 1]}")
    assert in_cycles == list(range(1, words + 1))
    assert out_cycles == list(range(out_cycles[0], out_cycles[0] + words))
    for b in range(count):
        assert out_cycles[b * n] == in_cycles[b * n + n - 1] + dut.latency
    assert span == words + n - 1 + dut.latency
