"""Testbench helpers shared by the gateware tests (Amaranth 0.5 async testbenches)."""

from amaranth.sim import Simulator

__all__ = ["run_simulation", "stream_put", "stream_get", "stream_get_timed", "stream_send",
           "stream_receive", "axil_write", "axil_read"]


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


async def axil_write(ctx, bus, addr, data, strb=None, *, aw_delay=0, w_delay=0, b_delay=0):
    """Write ``data`` at ``addr`` through an AXI4-Lite subordinate; return ``(resp, edges)``.

    The address and data channels go valid ``aw_delay`` and ``w_delay`` edges after the call, so
    either may arrive first; ``bready`` rises ``b_delay`` edges after the call. ``strb`` defaults to
    all bytes. Every handshake is judged at a clock edge; ``edges`` counts them to the response.
    """
    strb = (1 << len(bus.wstrb)) - 1 if strb is None else strb
    ctx.set(bus.awaddr, addr)
    ctx.set(bus.wdata, data)
    ctx.set(bus.wstrb, strb)
    aw_done = w_done = False
    edges = 0
    while True:
        aw_valid = not aw_done and edges >= aw_delay
        w_valid = not w_done and edges >= w_delay
        b_ready = edges >= b_delay
        ctx.set(bus.awvalid, aw_valid)
        ctx.set(bus.wvalid, w_valid)
        ctx.set(bus.bready, b_ready)
        *_, aw_ready, w_ready, b_valid, b_resp = await ctx.tick().sample(
            bus.awready, bus.wready, bus.bvalid, bus.bresp)
        edges += 1
        aw_done |= aw_valid and aw_ready
        w_done |= w_valid and w_ready
        if b_ready and b_valid:
            # A response before both requests were taken would break the protocol.
            assert aw_done and w_done, "write response before the address and data handshakes"
            break
    ctx.set(bus.awvalid, 0)
    ctx.set(bus.wvalid, 0)
    ctx.set(bus.bready, 0)
    return b_resp, edges


async def axil_read(ctx, bus, addr, *, r_delay=0):
    """Read the word at ``addr`` through an AXI4-Lite subordinate; return ``(data, resp)``.

    ``rready`` rises ``r_delay`` edges after the call.
    """
    ctx.set(bus.araddr, addr)
    ar_done = False
    edges = 0
    while True:
        ctx.set(bus.arvalid, not ar_done)
        ctx.set(bus.rready, edges >= r_delay)
        *_, ar_ready, r_valid, r_data, r_resp = await ctx.tick().sample(
            bus.arready, bus.rvalid, bus.rdata, bus.rresp)
        r_ready = edges >= r_delay
        edges += 1
        assert ar_done or not r_valid, "read data before the address handshake"
        if r_ready and r_valid:
            break
        ar_done |= ar_ready
    ctx.set(bus.arvalid, 0)
    ctx.set(bus.rready, 0)
    return r_data, r_resp
