"""The simulated accelerator driven one host action at a time, as a driver drives the board.

``open_session`` builds the accelerator (``gateware.top.Accelerator``) with one DRAM model on all
its AXI4 ports, under Amaranth's simulator or Verilator, and returns an object with the host's view of
it: ``read``/``write`` of a register (one AXI4-Lite transfer), ``tick`` to let cycles pass,
``dram`` (``write``/``read`` of bytes, the traffic counters) and ``cycle`` (cycles simulated).
"""

from gateware.program import Capacity
from gateware.top import Accelerator

from . import ENGINES
from .axil import VerilatorAXIL, axil_read, axil_write
from .dram import DEFAULT_BYTES_PER_CYCLE, VERILATOR_OPTIONS, DRAMModel, attach_verilator_dram
from .trace import TRACE_CPP_SOURCE, TRACE_FUNCTIONS, PysimTraceRecorder, VerilatorTraceRecorder

__all__ = ["ENGINES", "open_session", "PysimSession", "VerilatorSession"]



class PysimSession:
    """The accelerator in Amaranth's simulator.

    The simulation advances only inside a call: a host testbench waits for the next request,
    carries it out on the clock, and hands back the answer.

    Parameters
    ----------
    cap : gateware.program.Capacity
    dram_bytes : int
    latency, beats_per_cycle, bytes_per_cycle, impolite : int, float, float, sim.dram.Impolite or None
        The DRAM model's (``sim.dram.DRAMModel``): one memory behind all the accelerator's ports.
    trace : bool
        Record the trace port's segments (``sim.trace``) in ``recorder``; it slows the
        simulation down.
    """

    def __init__(self, cap, dram_bytes, *, latency=40, beats_per_cycle=1.0, bytes_per_cycle=DEFAULT_BYTES_PER_CYCLE,
                 impolite=None, trace=False):
        from amaranth.sim import Simulator

        self.dut = Accelerator(cap)
        self.dram = DRAMModel(dram_bytes, latency=latency, beats_per_cycle=beats_per_cycle,
                              bytes_per_cycle=bytes_per_cycle, impolite=impolite)
        self.cycle = 0
        self._request = self._reply = None
        self._sim = Simulator(self.dut)
        self._sim.add_clock(1e-8)
        self.dram.add_to(self._sim, *self.dut.axi_ports)
        self._sim.add_process(self._count)
        self._sim.add_testbench(self._host)
        self.recorder = None
        if trace:
            self.recorder = PysimTraceRecorder(self.dut.trace)
            self._sim.add_process(self.recorder.process)

    async def _count(self, ctx):
        async for _ in ctx.tick():
            self.cycle += 1

    async def _host(self, ctx):
        bus = self.dut.ctrl
        while True:
            if self._request is None:
                await ctx.tick()
                continue
            kind, arg = self._request
            if kind == "read":
                reply = (await axil_read(ctx, bus, arg))[0]
            elif kind == "write":
                reply = (await axil_write(ctx, bus, *arg))[0]
            else:
                reply = await ctx.tick().repeat(arg)
            self._reply, self._request = reply, None

    def _call(self, kind, arg):
        self._request = (kind, arg)
        while self._request is not None:
            self._sim.advance()
        return self._reply

    def read(self, addr):
        """The register at byte offset ``addr``."""
        return int(self._call("read", addr))

    def write(self, addr, value):
        """Write ``value`` to the register at byte offset ``addr``."""
        self._call("write", (addr, value))

    def tick(self, cycles):
        """Let ``cycles`` clock cycles pass."""
        self._call("tick", cycles)

    def close(self):
        """Nothing to release: the simulation is garbage once unreferenced."""


class VerilatorSession:
    """The accelerator's Verilog under Verilator (built once, cached in ``build/verilator/``).

    Parameters as for :class:`PysimSession`.
    """

    #: Capacity -> (design, model) built in this process: later sessions of the same build
    #: spawn a fresh model from it instead of converting the design to Verilog again.
    _built = {}

    def __init__(self, cap, dram_bytes, *, latency=40, beats_per_cycle=1.0, bytes_per_cycle=DEFAULT_BYTES_PER_CYCLE,
                 impolite=None, trace=False):
        from sim.verilator_engine import VerilatorModel

        if cap not in self._built:
            dut = Accelerator(cap)
            model = VerilatorModel(dut, name="accelerator",
                                   extra_sources=[*VERILATOR_OPTIONS["extra_sources"], TRACE_CPP_SOURCE],
                                   extra_functions={**VERILATOR_OPTIONS["extra_functions"], **TRACE_FUNCTIONS})
            self._built[cap] = dut, model
        self.dut, built = self._built[cap]
        self.model = built.spawn()
        self.dram = attach_verilator_dram(self.model, self.dut.port_names, dram_bytes, latency, beats_per_cycle,
                                          impolite, bytes_per_cycle)
        self._bus = VerilatorAXIL(self.model, "ctrl")
        self.recorder = VerilatorTraceRecorder(self.model) if trace else None

    @property
    def cycle(self):
        """Cycles simulated so far."""
        return self.model.cycle

    def read(self, addr):
        """The register at byte offset ``addr``."""
        return int(self._bus.read(addr))

    def write(self, addr, value):
        """Write ``value`` to the register at byte offset ``addr``."""
        self._bus.write(addr, value)

    def tick(self, cycles):
        """Let ``cycles`` clock cycles pass; raise ``AXIProtocolError`` if the DRAM saw a violation."""
        self.model.tick(cycles)
        self.dram.check()

    def close(self):
        """Release the compiled model."""
        self.model.close()


def open_session(engine, cap, dram_bytes, *, latency=40, beats_per_cycle=1.0, bytes_per_cycle=DEFAULT_BYTES_PER_CYCLE,
                 impolite=None, trace=False):
    """The accelerator of capacity ``cap`` (a ``Capacity`` or a dict of its fields) on ``engine``,
    its DRAM model set up with ``latency``, ``beats_per_cycle`` (each port), ``bytes_per_cycle``
    (all ports together) and ``impolite``; with ``trace``, its ``recorder`` holds the trace
    port's segments (``sim.trace``)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if isinstance(cap, dict):
        cap = Capacity(**cap)
    session = PysimSession if engine == "pysim" else VerilatorSession
    return session(cap, dram_bytes, latency=latency, beats_per_cycle=beats_per_cycle,
                   bytes_per_cycle=bytes_per_cycle, impolite=impolite, trace=trace)
