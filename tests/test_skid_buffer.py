"""The skid buffer: every payload through in order under random gaps and stalls, no latency
while empty, and an ``i.ready`` that does not follow ``o.ready`` within a cycle."""

import numpy as np

from gateware.skid_buffer import SkidBuffer
from tests.sim_helpers import run_simulation, stream_through


def test_order_under_gaps_and_stalls():
    values = list(range(1, 201))
    outs, in_cycles, out_cycles = stream_through(
        SkidBuffer(16), values, len(values), in_gaps=np.random.default_rng(3), gap_rate=0.3,
        out_stalls=np.random.default_rng(4), stall_rate=0.4, drain=4)
    assert [int(v) for v in outs] == values
    # Held at most one: a payload leaves no later than one transfer after the next arrives.
    assert all(o >= i for i, o in zip(in_cycles, out_cycles))


def test_passes_through_while_empty():
    outs, in_cycles, out_cycles = stream_through(SkidBuffer(8), list(range(50)), 50)
    assert [int(v) for v in outs] == list(range(50))
    assert in_cycles == out_cycles, "an empty buffer adds no cycle"


def test_ready_is_a_register():
    dut = SkidBuffer(8)

    async def testbench(ctx):
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, 7)
        for ready in (0, 1):
            ctx.set(dut.o.ready, ready)
            assert ctx.get(dut.i.ready) == 1, "empty: ready whatever o.ready is"
        ctx.set(dut.o.ready, 0)
        await ctx.tick()            # 7 is taken into the buffer while o stalls
        ctx.set(dut.i.payload, 8)
        for ready in (1, 0):
            ctx.set(dut.o.ready, ready)
            assert ctx.get(dut.i.ready) == 0, "full: not ready, even with o.ready high"
            assert ctx.get(dut.o.payload) == 7 and ctx.get(dut.o.valid)
        ctx.set(dut.o.ready, 1)
        await ctx.tick()            # 7 leaves; 8 was not taken
        assert ctx.get(dut.i.ready) == 1 and ctx.get(dut.o.payload) == 8

    run_simulation(dut, testbench)
