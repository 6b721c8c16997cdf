"""A DRAM behind an AXI4 subordinate port, for both simulation engines.

Reads return ``latency`` cycles after their address handshake, at most ``beats_per_cycle``
beats per cycle on average (a token bucket), in order; writes are taken at one beat per cycle and
answered when their last beat arrives. The model checks the protocol the accelerator must keep
(INCR bursts of whole beats, aligned, inside 4 KiB, inside the memory, ``wlast`` on the right
beat) and counts the bytes moved.
"""

import ctypes
from collections import deque
from pathlib import Path

import numpy as np

__all__ = ["AXIProtocolError", "DRAMModel", "attach_verilator_dram"]

_PAGE = 4096
CPP_SOURCE = Path(__file__).with_name("dram_model.cpp")


class AXIProtocolError(RuntimeError):
    """The design broke a rule of the AXI4 protocol (or addressed memory that does not exist)."""


class _Memory:
    def __init__(self, size, data_width):
        self.mem = np.zeros(size, dtype=np.uint8)
        self.beat = data_width // 8
        self.bytes_read = self.bytes_written = self.read_bursts = self.write_bursts = 0

    def write(self, addr, blob):
        blob = np.frombuffer(bytes(blob), dtype=np.uint8)
        if addr < 0 or addr + blob.size > self.mem.size:
            raise ValueError(f"write of {blob.size} bytes at {addr:#x} is outside the {self.mem.size}-byte DRAM")
        self.mem[addr:addr + blob.size] = blob

    def read(self, addr, n):
        if addr < 0 or addr + n > self.mem.size:
            raise ValueError(f"read of {n} bytes at {addr:#x} is outside the {self.mem.size}-byte DRAM")
        return self.mem[addr:addr + n].tobytes()

    def check_burst(self, kind, addr, beats, size, burst):
        if burst != 1:
            raise AXIProtocolError(f"{kind} burst at {addr:#x}: type {burst} is not INCR")
        if 1 << size != self.beat:
            raise AXIProtocolError(f"{kind} burst at {addr:#x}: size {1 << size} bytes is not the bus width")
        if addr % self.beat:
            raise AXIProtocolError(f"{kind} burst at {addr:#x} is not aligned to {self.beat} bytes")
        end = addr + beats * self.beat
        if addr // _PAGE != (end - 1) // _PAGE:
            raise AXIProtocolError(f"{kind} burst at {addr:#x} of {beats} beats crosses a 4 KiB boundary")
        if end > self.mem.size:
            raise AXIProtocolError(f"{kind} burst at {addr:#x} of {beats} beats runs past the DRAM's "
                                   f"{self.mem.size} bytes")


class DRAMModel(_Memory):
    """The DRAM for Amaranth's simulator: ``add_to(sim, axi)`` attaches it to a design's port.

    Parameters
    ----------
    size : int
        Bytes.
    data_width : int
        AXI data width in bits.
    latency : int
        Cycles from a read address handshake to its first beat.
    beats_per_cycle : float
        Sustained read beats per cycle (0 < r <= 1).
    """

    def __init__(self, size, *, data_width=128, latency=40, beats_per_cycle=1.0):
        super().__init__(size, data_width)
        if not 0 < beats_per_cycle <= 1:
            raise ValueError("beats_per_cycle must lie in (0, 1]")
        self.latency, self.rate = latency, beats_per_cycle

    def add_to(self, sim, axi):
        """Serve ``axi`` (the design's manager port) in ``sim`` with two background processes."""
        async def reads(ctx):
            await self._reads(ctx, axi)

        async def writes(ctx):
            await self._writes(ctx, axi)

        sim.add_testbench(reads, background=True)
        sim.add_testbench(writes, background=True)

    async def _reads(self, ctx, axi):
        pending, cycle, cur, credit = deque(), 0, None, 0.0
        ctx.set(axi.arready, 1)
        driving = False
        async for _, _, arvalid, araddr, arlen, arsize, arburst, rready in ctx.tick().sample(
                axi.arvalid, axi.araddr, axi.arlen, axi.arsize, axi.arburst, axi.rready):
            cycle += 1
            credit = min(credit + self.rate, 1.0 + self.rate)
            if arvalid:
                beats = arlen + 1
                self.check_burst("read", araddr, beats, arsize, arburst.value)
                pending.append((cycle + self.latency, araddr, beats))
                self.read_bursts += 1
            if driving and rready:
                cur[1] += self.beat
                cur[2] -= 1
                self.bytes_read += self.beat
                if cur[2] == 0:
                    cur = None
            if cur is None and pending and pending[0][0] <= cycle:
                cur = list(pending.popleft())
            driving = cur is not None and credit >= 1.0
            if driving:
                credit -= 1.0
                ctx.set(axi.rdata, int.from_bytes(self.mem[cur[1]:cur[1] + self.beat].tobytes(), "little"))
                ctx.set(axi.rlast, cur[2] == 1)
            ctx.set(axi.rvalid, driving)

    async def _writes(self, ctx, axi):
        bursts, responses, cur = deque(), 0, None
        ctx.set(axi.awready, 1)
        async for _, _, awvalid, awaddr, awlen, awsize, awburst, wvalid, wdata, wstrb, wlast, bready, bvalid in \
                ctx.tick().sample(axi.awvalid, axi.awaddr, axi.awlen, axi.awsize, axi.awburst, axi.wvalid,
                                  axi.wdata, axi.wstrb, axi.wlast, axi.bready, axi.bvalid):
            if awvalid:
                self.check_burst("write", awaddr, awlen + 1, awsize, awburst.value)
                bursts.append([awaddr, awlen + 1])
                self.write_bursts += 1
            if bvalid and bready:
                responses -= 1
            if wvalid and cur is not None:
                raw = int(wdata).to_bytes(self.beat, "little")
                for i in range(self.beat):
                    if wstrb >> i & 1:
                        self.mem[cur[0] + i] = raw[i]
                self.bytes_written += self.beat
                cur[0] += self.beat
                cur[1] -= 1
                if bool(wlast) != (cur[1] == 0):
                    raise AXIProtocolError(f"write burst: wlast {'early' if wlast else 'missing'} at {cur[0]:#x}")
                if cur[1] == 0:
                    cur = None
                    responses += 1
            if cur is None and bursts:
                cur = bursts.popleft()
            ctx.set(axi.wready, cur is not None)
            ctx.set(axi.bvalid, responses > 0)


class _VerilatorDRAM:
    """Host-side handle of the C++ model attached to a ``VerilatorModel``."""

    def __init__(self, model, size):
        self.model, self.size = model, size

    def write(self, addr, blob):
        blob = bytes(blob)
        if addr < 0 or addr + len(blob) > self.size:
            raise ValueError(f"write of {len(blob)} bytes at {addr:#x} is outside the {self.size}-byte DRAM")
        self.model.extra.dram_write(addr, blob, len(blob))

    def read(self, addr, n):
        buf = ctypes.create_string_buffer(n)
        self.model.extra.dram_read(addr, buf, n)
        return buf.raw

    def _stats(self):
        out = (ctypes.c_uint64 * 4)()
        self.model.extra.dram_stats(out)
        return list(out)

    def check(self):
        """Raise ``AXIProtocolError`` if the model has seen a protocol violation."""
        err = self.model.extra.dram_error()
        if err:
            raise AXIProtocolError(err.decode())

    bytes_read = property(lambda self: self._stats()[0])
    bytes_written = property(lambda self: self._stats()[1])
    read_bursts = property(lambda self: self._stats()[2])
    write_bursts = property(lambda self: self._stats()[3])


#: ``VerilatorModel`` arguments that compile the C++ DRAM model in.
VERILATOR_OPTIONS = {
    "extra_sources": [CPP_SOURCE],
    "extra_functions": {
        "dram_attach": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_double]),
        "dram_write": (None, [ctypes.c_uint64, ctypes.c_char_p, ctypes.c_uint64]),
        "dram_read": (None, [ctypes.c_uint64, ctypes.c_char_p, ctypes.c_uint64]),
        "dram_stats": (None, [ctypes.POINTER(ctypes.c_uint64)]),
        "dram_error": (ctypes.c_char_p, []),
    },
}


def attach_verilator_dram(model, prefix, size, latency=40, beats_per_cycle=1.0):
    """Attach the C++ DRAM to the AXI4 port ``prefix`` of ``model`` (built with
    ``**VERILATOR_OPTIONS``); returns a handle with ``write``, ``read``, ``check`` and the byte
    counters of :class:`DRAMModel`."""
    if model.extra.dram_attach(prefix.encode(), size, latency, beats_per_cycle) != 0:
        raise RuntimeError(f"cannot attach the DRAM model to port {prefix!r}")
    return _VerilatorDRAM(model, size)
