"""Testbench helpers shared by the gateware tests (Amaranth 0.5 async testbenches)."""

from amaranth.sim import Simulator

__all__ = ["run_simulation", "stream_put", "stream_get", "stream_get_timed"]


def run_simulation(dut, *testbenches, processes=(), vcd=None):
    """Simulate ``dut`` with a 100 MHz clock until every testbench returns."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in testbenches:
        sim.add_testbench(tb)
    for proc in processes:
        sim.add_process(proc)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()


async def stream_put(ctx, stream, payload):
    """Offer ``payload`` on a ``lib.stream`` sink until it is taken (valid never waits for ready)."""
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, payload)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream):
    """Take one payload from a ``lib.stream`` source."""
    ctx.set(stream.ready, 1)
    payload, = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload


async def stream_get_timed(ctx, stream):
    """Take one payload from a ``lib.stream`` source; also return the clock edges waited.

    Called right after an input transfer, the count is the source's latency in edges.
    """
    ctx.set(stream.ready, 1)
    edges = 0
    while not ctx.get(stream.valid):
        await ctx.tick()
        edges += 1
    payload = ctx.get(stream.payload)
    await ctx.tick()
    ctx.set(stream.ready, 0)
    return payload, edges
