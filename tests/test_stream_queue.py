"""The descriptor queue: every payload through in order under random gaps and stalls, its
capacity and latency, and handshakes that are registers."""

import gc

import numpy as np
import pytest

from gateware.stream_queue import StreamQueue
from tests.sim_helpers import run_simulation, stream_through


@pytest.mark.parametrize("depth", [4, 16])
def test_order_under_gaps_and_stalls(depth):
    values = list(range(1, 301))
    outs, _, _ = stream_through(
        StreamQueue(16, depth), values, len(values), in_gaps=np.random.default_rng(5), gap_rate=0.3,
        out_stalls=np.random.default_rng(6), stall_rate=0.6, drain=6)
    assert [int(v) for v in outs] == values


def test_latency_and_throughput():
    outs, in_cycles, out_cycles = stream_through(StreamQueue(8, 16), list(range(40)), 40)
    assert [int(v) for v in outs] == list(range(40))
    assert [o - i for i, o in zip(in_cycles, out_cycles)] == [3] * 40, "three cycles, one a cycle"


@pytest.mark.parametrize("depth", [4, 16])
def test_capacity_and_registered_ready(depth):
    """With ``o`` stalled, ``i`` takes ``depth - 1`` at least and ``depth + 1`` at most, then
    waits; ``i.ready`` does not follow ``o.ready`` within a cycle."""
    dut = StreamQueue(8, depth)
    taken = []

    async def testbench(ctx):
        ctx.set(dut.o.ready, 0)
        ctx.set(dut.i.valid, 1)
        for k in range(3 * depth):
            ctx.set(dut.i.payload, k)
            ready = ctx.get(dut.i.ready)
            ctx.set(dut.o.ready, 1)
            assert ctx.get(dut.i.ready) == ready, "i.ready is a register"
            ctx.set(dut.o.ready, 0)
            if ready:
                taken.append(k)
            await ctx.tick()
        assert depth - 1 <= len(taken) <= depth + 1
        assert taken == list(range(len(taken)))
        ctx.set(dut.i.valid, 0)
        ctx.set(dut.o.ready, 1)
        got = []
        for _ in range(3 * depth):
            if ctx.get(dut.o.valid):
                got.append(ctx.get(dut.o.payload))
            await ctx.tick()
        assert got == taken

    run_simulation(dut, testbench)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_rejects_bad_depth():
    for depth in (2, 12):
        with pytest.raises(ValueError, match="power of two"):
            StreamQueue(8, depth)
    gc.collect()    # the half-built components warn when collected: inside this test's filter
