"""Host-side AXI4-Lite access to the accelerator's registers, for both simulation engines."""

__all__ = ["axil_write", "axil_read", "VerilatorAXIL"]


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


class VerilatorAXIL:
    """Register access through the AXI4-Lite port ``prefix`` of a ``VerilatorModel``.

    One transfer at a time, each channel handshaken at a clock edge, as ``axil_write`` and
    ``axil_read`` do under Amaranth's simulator.
    """

    def __init__(self, model, prefix, *, timeout=1000):
        self.model, self.prefix, self.timeout = model, prefix, timeout

    def _port(self, name):
        return f"{self.prefix}__{name}"

    def _wait(self, name, what):
        for _ in range(self.timeout):
            if self.model.get(self._port(name)):
                return
            self.model.tick()
        raise TimeoutError(f"AXI4-Lite {what}: no {name} after {self.timeout} cycles")

    def write(self, addr, value):
        m, p = self.model, self._port
        m.set(p("awaddr"), addr)
        m.set(p("wdata"), value)
        m.set(p("wstrb"), 0xF)
        m.set(p("awvalid"), 1)
        m.set(p("wvalid"), 1)
        m.set(p("bready"), 1)
        aw = w = False
        for _ in range(self.timeout):
            aw_ready, w_ready = m.get(p("awready")), m.get(p("wready"))
            b_valid = m.get(p("bvalid"))
            m.tick()
            aw |= bool(aw_ready)
            w |= bool(w_ready)
            if aw:
                m.set(p("awvalid"), 0)
            if w:
                m.set(p("wvalid"), 0)
            if b_valid and aw and w:
                break
        else:
            raise TimeoutError(f"AXI4-Lite write of {addr:#x}: no response after {self.timeout} cycles")
        m.set(p("bready"), 0)

    def read(self, addr):
        m, p = self.model, self._port
        m.set(p("araddr"), addr)
        m.set(p("arvalid"), 1)
        m.set(p("rready"), 1)
        for _ in range(self.timeout):
            ar_ready, r_valid, r_data = m.get(p("arready")), m.get(p("rvalid")), m.get(p("rdata"))
            m.tick()
            if ar_ready:
                m.set(p("arvalid"), 0)
            if r_valid:
                m.set(p("rready"), 0)
                return r_data
        raise TimeoutError(f"AXI4-Lite read of {addr:#x}: no response after {self.timeout} cycles")
