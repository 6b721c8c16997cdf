"""Testbench helpers shared by the gateware tests (Amaranth 0.5 async testbenches)."""

from amaranth.sim import Simulator

__all__ = ["run_simulation", "stream_put", "stream_get", "stream_get_timed", "stream_send",
           "stream_receive", "stream_through"]


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


async def stream_send(ctx, stream, payloads, *, gaps=None, gap_rate=0.3, cycles=None):
    """Offer each of ``payloads`` on a sink in turn, counting clock edges from the call.

    With a ``numpy`` Generator as ``gaps``, idles a cycle before a transfer with probability
    ``gap_rate`` (repeatedly). ``ready`` is sampled at the edge, so it may follow the DUT's own
    output ready combinationally. Appends each transfer's edge number to ``cycles`` if given.
    """
    edge = 0
    for payload in payloads:
        while gaps is not None and gaps.random() < gap_rate:
            ctx.set(stream.valid, 0)
            await ctx.tick()
            edge += 1
        ctx.set(stream.valid, 1)
        ctx.set(stream.payload, payload)
        while True:
            *_, ready = await ctx.tick().sample(stream.ready)
            edge += 1
            if ready:
                break
        if cycles is not None:
            cycles.append(edge)
    ctx.set(stream.valid, 0)


async def stream_receive(ctx, stream, count, *, stalls=None, stall_rate=0.3, cycles=None):
    """Take ``count`` payloads from a source and return them, counting clock edges from the call.

    With a ``numpy`` Generator as ``stalls``, holds ``ready`` low for a cycle with probability
    ``stall_rate``. Appends each transfer's edge number to ``cycles`` if given.
    """
    edge, payloads = 0, []
    while len(payloads) < count:
        ready = stalls is None or stalls.random() >= stall_rate
        ctx.set(stream.ready, ready)
        *_, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        edge += 1
        if valid and ready:
            payloads.append(payload)
            if cycles is not None:
                cycles.append(edge)
    ctx.set(stream.ready, 0)
    return payloads


def stream_through(dut, beats, count, *, settings=(), in_gaps=None, out_stalls=None):
    """Send ``beats`` into ``dut.i`` and take ``count`` payloads from ``dut.o``, concurrently.

    ``settings`` is ``(signal, value)`` pairs for the DUT's static inputs, set before the first beat;
    ``in_gaps``/``out_stalls`` are seeded generators (see :func:`stream_send` and
    :func:`stream_receive`). Returns the payloads and the edge numbers of every input and output
    transfer, counted from the same start.
    """
    in_cycles, out_cycles, outs = [], [], []

    async def producer(ctx):
        for signal, value in settings:
            ctx.set(signal, value)
        await stream_send(ctx, dut.i, beats, gaps=in_gaps, cycles=in_cycles)

    async def consumer(ctx):
        outs.extend(await stream_receive(ctx, dut.o, count, stalls=out_stalls, cycles=out_cycles))

    run_simulation(dut, producer, consumer)
    return outs, in_cycles, out_cycles
