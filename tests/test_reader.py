"""The tile reader on its own: its walks over a memory against numpy, with back-pressure."""

import numpy as np
import pytest

from gateware.reader import TileReader

from tests.sim_helpers import memory_port, run_simulation, stream_put, stream_receive

N = 4


def _run(walk, tiles, mem, count, tokens=None, stalls=True, groups=1, slot_words=0, lane_bits=16):
    dut = TileReader(N, groups=groups, slot_words=slot_words, lane_bits=lane_bits)
    out = []

    async def testbench(ctx):
        for field, value in walk.items():
            ctx.set(getattr(dut.walk, field), value)
        await ctx.tick()        # the walk is set a cycle before its first tile, as in the core
        for tile in tiles:
            await stream_put(ctx, dut.tiles, {"tb": tile[0], "cb": tile[1]})

    async def sink(ctx):
        rng = np.random.default_rng(1) if stalls else None
        out.extend(await stream_receive(ctx, dut.o, count, stalls=rng))

    async def token_list(ctx):
        # The list is read combinationally, as from the queue memory's comb read port.
        async for addr, in ctx.changed(dut.list_addr):
            if tokens is not None:
                ctx.set(dut.list_token, int(tokens[addr % len(tokens)]))

    run_simulation(dut, testbench, sink, processes=[memory_port(dut, mem), token_list])
    return np.array([[p.data[i] for i in range(groups * N)] for p in out]), [p.last for p in out]


@pytest.mark.parametrize("use_list", [False, True])
def test_transposed_walk(use_list):
    """Chunk by chunk, element j carries channel j of the block's tokens; tokens past ``rows`` are 0."""
    rng = np.random.default_rng(0)
    mem = rng.integers(-3000, 3000, size=(64, N))
    tokens = np.array([9, 2, 7, 0, 5, 3, 1, 8])
    base, stride, chunk0, chunks, rows, tb = 3, 2, 1, 2, 6, 1
    walk = dict(transposed=1, list=int(use_list), base=base, stride=stride, chunk0=chunk0, chunks=chunks, rows=rows)
    data, last = _run(walk, [(tb, 0)], mem, chunks * N, tokens=tokens)
    want = np.zeros((chunks * N, N), np.int64)
    for c in range(chunks):
        for i in range(N):
            t = tb * N + i
            if t < rows:
                token = tokens[t] if use_list else t
                want[c * N:(c + 1) * N, i] = mem[base + token * stride + chunk0 + c]
    np.testing.assert_array_equal(data, want)
    assert last == [False] * (chunks * N - 1) + [True]


def test_plain_walk_two_tiles():
    """Elements in address order, offset by each tile's channel block; ``last`` per tile."""
    rng = np.random.default_rng(2)
    mem = rng.integers(-3000, 3000, size=(64, N))
    base, stride, count = 7, 3, 5
    data, last = _run(dict(by_cb=1, base=base, stride=stride, count=count), [(0, 2), (0, 4)], mem, 2 * count)
    want = [mem[base + k * stride + cb] for cb in (2, 4) for k in range(count)]
    np.testing.assert_array_equal(data, np.array(want))
    assert last == ([False] * (count - 1) + [True]) * 2


def test_plain_walk_by_row_group():
    """The probability buffer's walk: each tile reads its token block's row group,
    ``tb * slot_words`` on from the walk's base."""
    rng = np.random.default_rng(3)
    mem = rng.integers(-3000, 3000, size=(64, N))
    count, group_words = 5, 16
    data, last = _run(dict(by_group=1, stride=1, count=count), [(2, 0), (0, 0), (3, 0)], mem, 3 * count,
                      slot_words=group_words)
    want = [mem[tb * group_words + k] for tb in (2, 0, 3) for k in range(count)]
    np.testing.assert_array_equal(data, np.array(want))
    assert last == ([False] * (count - 1) + [True]) * 3


@pytest.mark.parametrize("lane_bits", [16, 13])
def test_wide_transposed_walk(lane_bits):
    """Two groups over a two-word memory (the attention K buffer): word ``g`` of a read holds
    token block ``2 * cb + g``; element j carries channel j of both blocks' tokens side by side;
    tokens past ``rows`` are 0 per block. Lanes of 13 bits (the W operand's) carry their
    extremes unchanged."""
    rng = np.random.default_rng(3)
    top = 1 << (lane_bits - 1)
    mem = rng.integers(-top, top, size=(96, 2 * N))
    mem[rng.random(mem.shape) < 0.2] = -top
    mem[rng.random(mem.shape) < 0.2] = top - 1
    base, stride, chunk0, chunks, rows, cb = 2, 3, 1, 2, 13, 1
    walk = dict(transposed=1, by_cb=1, base=base, stride=stride, chunk0=chunk0, chunks=chunks, rows=rows)
    data, last = _run(walk, [(0, cb)], mem, chunks * N, groups=2, lane_bits=lane_bits)
    want = np.zeros((chunks * N, 2 * N), np.int64)
    for c in range(chunks):
        for g in range(2):
            for i in range(N):
                if (2 * cb + g) * N + i < rows:
                    word = mem[base + (cb * N + i) * stride + chunk0 + c]
                    want[c * N:(c + 1) * N, g * N + i] = word[g * N:(g + 1) * N]
    np.testing.assert_array_equal(data, want)
    assert last == [False] * (chunks * N - 1) + [True]


@pytest.mark.parametrize("lane_bits", [16, 13])
def test_wide_plain_walk(lane_bits):
    """Two groups by channel block over a two-word memory (the attention V buffer): element k of
    tile ``cb`` is the memory's whole word ``base + k * stride + chunk0 + cb``."""
    rng = np.random.default_rng(4)
    top = 1 << (lane_bits - 1)
    mem = rng.integers(-top, top, size=(64, 2 * N))
    mem[0::3, 0] = -top
    mem[1::3, 1] = top - 1
    base, stride, chunk0, count = 5, 6, 1, 4
    data, last = _run(dict(by_cb=1, base=base, stride=stride, chunk0=chunk0, count=count), [(0, 0), (0, 1)],
                      mem, 2 * count, groups=2, lane_bits=lane_bits)
    want = [mem[base + k * stride + chunk0 + cb] for cb in (0, 1) for k in range(count)]
    np.testing.assert_array_equal(data, np.array(want))
    assert last == ([False] * (count - 1) + [True]) * 2
