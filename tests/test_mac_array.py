"""MAC array gateware against ``golden.mac_array.matmul``: random and extreme tiles, back to
back, with and without backpressure; utilisation and latency counted in clock edges."""

import numpy as np
import pytest

from gateware.mac_array import MACArray
from golden.fixedpoint import ACT_BITS, PROB_OPERAND_BITS
from golden.mac_array import matmul
from tests.sim_helpers import stream_through


def _transfers(tiles):
    """The input transfers of ``tiles`` (``(a [R, K], w [C, K])`` pairs), one per ``k``."""
    for a, w in tiles:
        depth = a.shape[1]
        for k in range(depth):
            yield {"a": [int(v) for v in a[:, k]], "w": [int(v) for v in w[:, k]],
                   "last": k == depth - 1}


def _simulate(dut, tiles, *, in_gaps=None, out_stalls=None):
    """Run ``tiles`` through ``dut``; return the output tiles ``[R, C]`` and the edge numbers of
    every input and output transfer (counted from the same start)."""
    beats = list(_transfers(tiles))
    outs, in_cycles, out_cycles = stream_through(dut, beats, len(tiles) * dut.cols, in_gaps=in_gaps,
                                                 out_stalls=out_stalls)
    cols = np.array([[int(v) for v in p.data] for p in outs], dtype=np.int64)
    lasts = [int(p.last) for p in outs]
    assert lasts == ([0] * (dut.cols - 1) + [1]) * len(tiles)
    result = cols.reshape(len(tiles), dut.cols, dut.rows).transpose(0, 2, 1)
    return result, in_cycles, out_cycles


def _check(dut, tiles, **kw):
    result, in_cycles, out_cycles = _simulate(dut, tiles, **kw)
    for got, (a, w) in zip(result, tiles):
        np.testing.assert_array_equal(got, matmul(a, w))
    return in_cycles, out_cycles


def _random_tiles(rng, rows, cols, depths, a_bits=PROB_OPERAND_BITS, w_bits=ACT_BITS):
    alo, ahi = -(1 << (a_bits - 1)), 1 << (a_bits - 1)
    wlo, whi = -(1 << (w_bits - 1)), 1 << (w_bits - 1)
    return [(rng.integers(alo, ahi, (rows, k)), rng.integers(wlo, whi, (cols, k))) for k in depths]


@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 3), (4, 4), (3, 1), (8, 8)])
def test_random_tiles_back_to_back(rows, cols):
    """Tiles of depth 1 to 40 streamed without a pause, ``o`` always ready."""
    rng = np.random.default_rng(rows * 10 + cols)
    depths = [1, 2, 40, 3] + list(rng.integers(1, 41, 6))
    _check(MACArray(rows, cols), _random_tiles(rng, rows, cols, depths))


@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 3), (4, 4)])
def test_gaps_and_backpressure(rows, cols):
    rng = np.random.default_rng(100 + rows * 10 + cols)
    depths = list(rng.integers(1, 41, 8)) + [1, 1, 1]
    _check(MACArray(rows, cols), _random_tiles(rng, rows, cols, depths),
           in_gaps=np.random.default_rng(1), out_stalls=np.random.default_rng(2))


def test_heavy_backpressure_short_tiles():
    """Depth-1 tiles against a mostly stalled output: the array must hold finished tiles."""
    rng = np.random.default_rng(7)
    tiles = _random_tiles(rng, 2, 3, [1] * 10 + [2, 1, 5, 1])
    _check(MACArray(2, 3), tiles, out_stalls=np.random.default_rng(3))
    result, _, _ = _simulate(MACArray(2, 3), tiles, out_stalls=np.random.default_rng(4))
    assert len(result) == len(tiles)


A_MIN, A_MAX = -(1 << (PROB_OPERAND_BITS - 1)), (1 << (PROB_OPERAND_BITS - 1)) - 1
W_MIN, W_MAX = -(1 << (ACT_BITS - 1)), (1 << (ACT_BITS - 1)) - 1
BIG = A_MIN * W_MIN   # the largest product


def test_extreme_operands():
    """Max-negative times max-negative (the largest product), probability 1.0 (256), int8
    -128 x -128, extremes in every combination, in rows and columns of a 2 x 3 array."""
    a_vals = np.array([A_MIN, A_MAX, 256, -128, 127, -1, 0, 1])
    w_vals = np.array([W_MIN, W_MAX, -128, 127, -1, 0, 1])
    a = np.stack([np.repeat(a_vals, len(w_vals)), np.repeat(a_vals[::-1], len(w_vals))])
    w = np.stack([np.tile(w_vals, len(a_vals)), np.tile(w_vals[::-1], len(a_vals)),
                  np.full(len(a_vals) * len(w_vals), W_MIN)])
    tiles = [(a[:, k:k + 1], w[:, k:k + 1]) for k in range(a.shape[1])]   # every product alone
    tiles += [(a, w), (np.full((2, 40), A_MIN), np.full((3, 40), W_MIN)),
              (np.full((2, 40), 256), np.full((3, 40), W_MAX)),
              (np.full((2, 40), -128), np.full((3, 40), -128))]
    _check(MACArray(2, 3), tiles)


def test_int8_weight_port():
    """A narrower weight port (w_bits=8, plain int8 weights) with its extremes."""
    rng = np.random.default_rng(21)
    tiles = _random_tiles(rng, 2, 2, [1, 7, 40], w_bits=8)
    tiles += [(np.full((2, 9), A_MIN), np.full((2, 9), -128)),
              (np.full((2, 9), -128), np.full((2, 9), -128))]
    _check(MACArray(2, 2, w_bits=8), tiles)


def _products_summing_to(target):
    """Operand pairs ``(a, w)`` in the operand ranges whose products sum to ``target``."""
    pairs, rest = [], target
    while rest:
        sign = 1 if rest > 0 else -1
        a = min(abs(rest) // W_MAX, A_MAX)
        pair = (sign * a, W_MAX) if a else (rest, 1)
        pairs.append(pair)
        rest -= pair[0] * pair[1]
    return pairs


def _tile_from_pairs(pairs):
    return np.array([[a for a, _ in pairs]]), np.array([[w for _, w in pairs]])


def test_narrow_accumulator_wraps_to_the_exact_result():
    """Partial sums overflowing an accumulator 2 bits wider than one product (22 bits for int10
    operands) both ways still give the exact tile sum;
    tile sums at the accumulator's extremes."""
    bits = PROB_OPERAND_BITS + ACT_BITS + 2
    top = 1 << (bits - 1)
    over = ([(A_MIN, W_MIN)] * 16 + [(A_MIN, W_MAX)] * 16,
            [(A_MIN, W_MAX)] * 17 + [(A_MIN, W_MIN)] * 17)
    tiles = [_tile_from_pairs(p) for p in over]
    tiles += [_tile_from_pairs(_products_summing_to(t)) for t in (top - 1, -top)]
    tiles += [_tile_from_pairs([(A_MIN, W_MIN)] * 9 + _products_summing_to(top - 1 - 9 * BIG))]
    for a, w in tiles:
        assert -top <= matmul(a, w)[0, 0] < top
    _check(MACArray(1, 1, acc_bits=bits), tiles)


@pytest.mark.slow
def test_accumulator_extremes_32_bits():
    """Tile sums of exactly 2**31 - 1 and -2**31 (thousands of products each), and partial sums
    beyond them."""
    tiles = [_tile_from_pairs(_products_summing_to(t)) for t in ((1 << 31) - 1, -(1 << 31))]
    tiles += [_tile_from_pairs([(A_MIN, W_MIN)] * 9000 + [(A_MIN, W_MAX)] * 9000)]
    _check(MACArray(1, 1), tiles)


def _utilisation(in_cycles):
    return len(in_cycles) / (in_cycles[-1] - in_cycles[0] + 1)


@pytest.mark.parametrize("rows,cols", [(2, 3), (4, 4)])
def test_utilisation_and_latency(rows, cols):
    """Back-to-back tiles of depth >= cols take one transfer per cycle (R*C MACs per cycle);
    shorter tiles take ``cols`` cycles each; the first column follows ``last`` by ``latency``."""
    rng = np.random.default_rng(9)
    depths = [cols, cols + 1, 2 * cols, 40, cols] * 2
    dut = MACArray(rows, cols)
    in_cycles, out_cycles = _check(dut, _random_tiles(rng, rows, cols, depths))
    util = _utilisation(in_cycles)
    print(f"MAC {rows}x{cols}: {len(in_cycles)} transfers of {len(depths)} tiles in "
          f"{in_cycles[-1] - in_cycles[0] + 1} cycles: utilisation {util:.1%}")
    assert in_cycles == list(range(1, len(in_cycles) + 1))
    last_edges = np.cumsum(depths)
    assert out_cycles[0] == in_cycles[last_edges[0] - 1] + dut.latency
    assert out_cycles == [in_cycles[last_edges[t] - 1] + dut.latency + c
                          for t in range(len(depths)) for c in range(cols)]

    short = [1] * 6 + [cols - 1] * 4
    _, out_cycles = _check(MACArray(rows, cols), _random_tiles(rng, rows, cols, short))
    # Tiles shorter than the drain: the output never idles, so a tile takes cols cycles.
    print(f"MAC {rows}x{cols}: {len(short)} tiles of depth < cols drained in "
          f"{out_cycles[-1] - out_cycles[0] + 1} cycles")
    assert out_cycles == list(range(out_cycles[0], out_cycles[0] + len(out_cycles)))


def test_utilisation_under_backpressure():
    """With ``o`` ready 70% of the time, the drain is the bottleneck only when tiles are short."""
    rng = np.random.default_rng(11)
    rows, cols = 4, 4
    depths = [40] * 6
    in_cycles, out_cycles = _check(MACArray(rows, cols), _random_tiles(rng, rows, cols, depths),
                                   out_stalls=np.random.default_rng(12))
    util = _utilisation(in_cycles)
    print(f"MAC {rows}x{cols}, K=40, o ready 70%: utilisation {util:.1%}")
    assert util == 1.0


def test_skip_rest_cuts_a_drain_short():
    """A consumer that wants only the first ``n`` columns of a tile takes them, then one more
    with ``skip_rest``: the array drops that tile's other columns, frees its drain bank at once,
    and short tiles back to back then take ``n + 1`` cycles each, not ``cols``."""
    from tests.sim_helpers import run_simulation, stream_send, watchdog

    rows, cols, depth = 2, 8, 3
    rng = np.random.default_rng(11)
    wanted = [1, 8, 3, 2, 5, 1]
    tiles = _random_tiles(rng, rows, cols, [depth] * len(wanted))
    dut = MACArray(rows, cols)
    got, ends, done = [], [], []

    async def producer(ctx):
        await stream_send(ctx, dut.i, list(_transfers(tiles)), gaps=None)

    async def consumer(ctx):
        ctx.set(dut.o.ready, 1)
        edge = 0
        for n in wanted:
            taken = []
            while True:
                skip = len(taken) == n < cols
                if len(taken) == n == cols:
                    break
                ctx.set(dut.skip_rest, skip)
                _, _, valid, data = await ctx.tick().sample(dut.o.valid, dut.o.payload.data)
                edge += 1
                if not valid:
                    continue
                if skip:
                    break
                taken.append([int(v) for v in data])
            ctx.set(dut.skip_rest, 0)
            got.append(np.array(taken, dtype=np.int64).T)
            ends.append(edge)
        done.append(True)

    run_simulation(dut, producer, consumer, processes=[watchdog(400, done)])
    for (a, w), n, tile in zip(tiles, wanted, got):
        np.testing.assert_array_equal(tile, matmul(a, w)[:, :n])
    # Past the first full tile the drains set the pace (tiles of depth 3, finished before the
    # bank frees): a tile of n < cols wanted columns holds the bank n + 1 cycles.
    assert list(np.diff(ends)[1:]) == [n + 1 for n in wanted[2:]]
