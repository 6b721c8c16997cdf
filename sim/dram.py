"""A DRAM behind an AXI4 subordinate port, for both simulation engines.

:class:`DRAMModel` serves a design's AXI4 manager port in Amaranth's simulator;
``sim/dram_model.cpp`` is the same model for the Verilator engine, attached with
:func:`attach_verilator_dram`. Both have the same timing, cycle for cycle:

* AR and AW are always ready. A read burst's first beat is valid ``latency`` cycles after the
  cycle of its AR handshake; bursts follow one another without gaps, in order.
* Read beats are paced by a token bucket: every cycle adds ``beats_per_cycle`` tokens (in units
  of 1/65536), a beat costs one, and while no beat can go out (none due, or one held by RREADY)
  the bucket keeps at most what lets one beat go the next cycle: ``1.0`` is a beat every cycle,
  ``0.5`` every other, also after a stall. A beat once valid stays valid until RREADY takes it.
* W is ready from the cycle after its burst's AW handshake, one beat per cycle, bytes stored as
  WSTRB says. The B response is valid the cycle after the last beat, one at a time, in order.
* The counters ``bytes_read``/``bytes_written`` count whole beats moved on the bus;
  ``read_bursts``/``write_bursts`` count address handshakes.

The model checks the protocol the accelerator must keep and raises (pysim) or records (C++)
:class:`AXIProtocolError` on a burst that crosses a 4 KiB boundary, a misaligned address,
AxSIZE other than the bus width, a burst type other than INCR, an access past the memory's
end, or WLAST on the wrong beat. A rejected burst is not served.
"""

import ctypes
from collections import deque
from pathlib import Path

from amaranth.hdl import Value

__all__ = ["AXIProtocolError", "DRAMModel", "VerilatorDRAM", "attach_verilator_dram",
           "VERILATOR_OPTIONS", "CPP_SOURCE"]

_PAGE = 4096
_INCR = 1
_ONE = 1 << 16      # a read beat's cost in tokens


def _tokens(beats_per_cycle):
    """Tokens added per cycle: integers, so that both models pace beats identically."""
    return max(1, int(beats_per_cycle * _ONE + 0.5))
#: The C++ model, for ``VerilatorModel(extra_sources=...)``.
CPP_SOURCE = Path(__file__).with_name("dram_model.cpp")


class AXIProtocolError(RuntimeError):
    """The design broke a rule of the AXI4 protocol, or addressed memory that does not exist."""


def _check_params(size, data_width, latency, beats_per_cycle):
    if size < 1:
        raise ValueError(f"DRAM size must be positive, not {size!r}")
    if data_width not in {8 << i for i in range(8)}:
        raise ValueError(f"data width must be a power of two from 8 to 1024, not {data_width!r}")
    if latency < 1:
        raise ValueError(f"read latency must be at least 1 cycle, not {latency!r}")
    if not 0 < beats_per_cycle <= 1:
        raise ValueError(f"beats_per_cycle must lie in (0, 1], not {beats_per_cycle!r}")


def _check_range(what, addr, n, size):
    if addr < 0 or n < 0 or addr + n > size:
        raise ValueError(f"{what} of {n} bytes at {addr:#x} is outside the {size}-byte DRAM")


class DRAMModel:
    """Byte-addressed memory with an AXI4 subordinate port for Amaranth's simulator.

    Timing and checks are described in the module docstring. The port has no ID signals (all
    transfers in order) and answers OKAY.

    Parameters
    ----------
    size : int
        Bytes of memory, initially zero.
    data_width : int
        AXI data width in bits (the port's width must match).
    latency : int
        Cycles from a read burst's AR handshake to its first valid beat, at least 1.
    beats_per_cycle : float
        Sustained read beats per cycle, ``0 < beats_per_cycle <= 1``.

    Attributes
    ----------
    size, data_width, latency, beats_per_cycle
        As given.
    mem : bytearray
        The contents (:meth:`write` and :meth:`read` check bounds; this does not).
    bytes_read, bytes_written : int
        Bytes moved by completed R and W beats (whole beats, whatever the strobes).
    read_bursts, write_bursts : int
        AR and AW handshakes accepted.
    read_log : list of (int, int)
        Every accepted read burst as ``(byte address, bytes)``, in order: what a test needs to
        tell which weights were fetched, and how often.
    """

    def __init__(self, size, *, data_width=128, latency=40, beats_per_cycle=1.0):
        _check_params(size, data_width, latency, beats_per_cycle)
        self.size, self.data_width = size, data_width
        self.latency, self.beats_per_cycle = latency, beats_per_cycle
        self.beat = data_width // 8
        self.mem = bytearray(size)
        self.bytes_read = self.bytes_written = self.read_bursts = self.write_bursts = 0
        self.read_log = []

    def write(self, addr, blob):
        """Store ``blob`` (bytes-like or a uint8 array) at byte ``addr``."""
        view = memoryview(blob).cast("B")
        _check_range("write", addr, view.nbytes, self.size)
        self.mem[addr:addr + view.nbytes] = view

    def read(self, addr, n):
        """The ``n`` bytes at byte ``addr``."""
        _check_range("read", addr, n, self.size)
        return bytes(self.mem[addr:addr + n])

    def _check_burst(self, kind, addr, beats, size, burst):
        if burst != _INCR:
            raise AXIProtocolError(f"{kind} burst at {addr:#x}: burst type {burst} is not INCR (1)")
        if 1 << size != self.beat:
            raise AXIProtocolError(f"{kind} burst at {addr:#x}: AxSIZE {size} ({1 << size} bytes) "
                                   f"is not the {self.beat}-byte bus width")
        if addr % self.beat:
            raise AXIProtocolError(f"{kind} burst at {addr:#x} is not aligned to the "
                                   f"{self.beat}-byte beat")
        end = addr + beats * self.beat
        if addr // _PAGE != (end - 1) // _PAGE:
            raise AXIProtocolError(f"{kind} burst at {addr:#x} of {beats} beats crosses the 4 KiB "
                                   f"boundary at {(addr // _PAGE + 1) * _PAGE:#x}")
        if end > self.size:
            raise AXIProtocolError(f"{kind} burst at {addr:#x} of {beats} beats runs past the end "
                                   f"of the {self.size}-byte DRAM")

    def add_to(self, sim, axi):
        """Serve ``axi`` (a design's AXI4 manager port) in simulator ``sim`` from a process."""
        async def process(ctx):
            await self.serve(ctx, axi)
        sim.add_process(process)

    async def serve(self, ctx, axi):
        """Answer ``axi``'s read and write channels forever, one loop iteration per clock edge.

        Meant for ``sim.add_process`` (see :meth:`add_to`): the outputs then change with the
        clock edge like registers, and the design settles once per cycle. Also works under
        ``sim.add_testbench(..., background=True)``.
        """
        if len(axi.rdata) != self.data_width:
            raise ValueError(f"port is {len(axi.rdata)} bits wide, the DRAM {self.data_width}")
        beat, mem, latency, rate = self.beat, self.mem, self.latency - 1, _tokens(self.beats_per_cycle)
        full_strobe = (1 << beat) - 1
        reads, writes = deque(), deque()      # accepted bursts not yet started
        r_addr = r_left = 0                   # the read burst being sent
        r_valid = False                       # a beat is on R
        credit = 0
        w_addr = w_left = 0                   # the write burst being received
        responses = 0                         # B responses owed
        cycle = 0
        ctx.set(axi.arready, 1)
        ctx.set(axi.awready, 1)
        sampled = [Value.cast(s) for s in (
            axi.arvalid, axi.araddr, axi.arlen, axi.arsize, axi.arburst, axi.rready,
            axi.awvalid, axi.awaddr, axi.awlen, axi.awsize, axi.awburst,
            axi.wvalid, axi.wdata, axi.wstrb, axi.wlast, axi.bready)]
        async for (_, _, arvalid, araddr, arlen, arsize, arburst, rready,
                   awvalid, awaddr, awlen, awsize, awburst,
                   wvalid, wdata, wstrb, wlast, bready) in ctx.tick().sample(*sampled):
            cycle += 1
            # Read channel.
            if arvalid:
                self._check_burst("read", araddr, arlen + 1, arsize, arburst)
                reads.append((cycle + latency, araddr, arlen + 1))
                self.read_log.append((araddr, (arlen + 1) * beat))
                self.read_bursts += 1
            if r_valid and rready:
                r_valid = False
                r_addr += beat
                r_left -= 1
                self.bytes_read += beat
            if not r_left and reads and reads[0][0] <= cycle:
                _, r_addr, r_left = reads.popleft()
            credit += rate
            if not r_valid and r_left:
                if credit >= _ONE:
                    credit -= _ONE
                    r_valid = True
                    ctx.set(axi.rdata, int.from_bytes(mem[r_addr:r_addr + beat], "little"))
                    ctx.set(axi.rlast, r_left == 1)
            elif credit > _ONE - rate:
                # Idle or held by RREADY: bank one beat, no more.
                credit = _ONE - rate
            ctx.set(axi.rvalid, r_valid)

            # Write channels; WREADY is high exactly while w_left is nonzero.
            if awvalid:
                self._check_burst("write", awaddr, awlen + 1, awsize, awburst)
                writes.append((awaddr, awlen + 1))
                self.write_bursts += 1
            if responses and bready:
                responses -= 1
            if wvalid and w_left:
                if wstrb == full_strobe:
                    mem[w_addr:w_addr + beat] = wdata.to_bytes(beat, "little")
                else:
                    raw = wdata.to_bytes(beat, "little")
                    for i in range(beat):
                        if wstrb >> i & 1:
                            mem[w_addr + i] = raw[i]
                w_left -= 1
                if bool(wlast) != (w_left == 0):
                    raise AXIProtocolError(
                        f"write burst: WLAST {'set' if wlast else 'missing'} on the beat at "
                        f"{w_addr:#x} with {w_left} beats of the burst to go")
                w_addr += beat
                self.bytes_written += beat
                if not w_left:
                    responses += 1
            if not w_left and writes:
                w_addr, w_left = writes.popleft()
            ctx.set(axi.wready, w_left != 0)
            ctx.set(axi.bvalid, responses != 0)


class VerilatorDRAM:
    """Host-side handle of ``sim/dram_model.cpp`` attached to a ``VerilatorModel``: the
    ``write``/``read`` and counters of :class:`DRAMModel`, plus :meth:`check`.

    Returned by :func:`attach_verilator_dram`.
    """

    def __init__(self, model, size):
        self.model, self.size = model, size

    def write(self, addr, blob):
        """Store ``blob`` (bytes-like or a uint8 array) at byte ``addr``."""
        data = bytes(memoryview(blob).cast("B"))
        _check_range("write", addr, len(data), self.size)
        self.model.extra.dram_write(addr, data, len(data))

    def read(self, addr, n):
        """The ``n`` bytes at byte ``addr``."""
        _check_range("read", addr, n, self.size)
        buf = ctypes.create_string_buffer(n)
        self.model.extra.dram_read(addr, buf, n)
        return buf.raw

    @property
    def error(self):
        """The first protocol violation seen, or ``""``."""
        return self.model.extra.dram_error().decode()

    def check(self):
        """Raise :class:`AXIProtocolError` if the model has seen a protocol violation."""
        if self.error:
            raise AXIProtocolError(self.error)

    def stats(self):
        """``(bytes_read, bytes_written, read_bursts, write_bursts)``."""
        out = (ctypes.c_uint64 * 4)()
        self.model.extra.dram_stats(out)
        return tuple(out)

    bytes_read = property(lambda self: self.stats()[0])
    bytes_written = property(lambda self: self.stats()[1])
    read_bursts = property(lambda self: self.stats()[2])
    write_bursts = property(lambda self: self.stats()[3])


#: ``VerilatorModel`` keyword arguments that compile the C++ DRAM model in.
VERILATOR_OPTIONS = {
    "extra_sources": [CPP_SOURCE],
    "extra_functions": {
        "dram_attach": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint32,
                                       ctypes.c_double]),
        "dram_write": (None, [ctypes.c_uint64, ctypes.c_char_p, ctypes.c_uint64]),
        "dram_read": (None, [ctypes.c_uint64, ctypes.c_char_p, ctypes.c_uint64]),
        "dram_stats": (None, [ctypes.POINTER(ctypes.c_uint64)]),
        "dram_error": (ctypes.c_char_p, []),
    },
}


def attach_verilator_dram(model, prefix, size, latency=40, beats_per_cycle=1.0):
    """Attach the C++ DRAM to the AXI4 port ``prefix`` of a Verilator model.

    Parameters
    ----------
    model : sim.verilator_engine.VerilatorModel
        Built with ``**VERILATOR_OPTIONS``. One DRAM per model.
    prefix : str
        The port's member path, ``"__"``-joined (``"axi"`` for ``dut.axi``); ``""`` when the
        AXI signals are top-level ports.
    size, latency, beats_per_cycle
        As for :class:`DRAMModel`; the data width is the port's.

    Returns
    -------
    VerilatorDRAM
        ``write``, ``read``, ``check``, ``error`` and the counters of :class:`DRAMModel`.
        Protocol errors are recorded, not raised: call ``check()`` after running.
    """
    rdata = f"{prefix}__rdata" if prefix else "rdata"
    if rdata not in model.ports:
        axi_ports = sorted(name for name in model.ports if name.endswith("rdata"))
        raise ValueError(f"no AXI4 port {prefix!r} in the model (ports ending in rdata: {axi_ports})")
    _check_params(size, model.ports[rdata].width, latency, beats_per_cycle)
    if not hasattr(model.extra, "dram_attach"):
        raise ValueError("the model was not built with sim.dram.VERILATOR_OPTIONS")
    status = model.extra.dram_attach(prefix.encode(), size, latency, beats_per_cycle)
    if status != 0:
        raise RuntimeError(f"cannot attach the DRAM model to port {prefix!r} (status {status}: "
                           f"-1 a signal is missing, -2 already attached, -3 bad parameters)")
    return VerilatorDRAM(model, size)
