"""Where the driver's register accesses and DRAM buffer go: a ZCU104 through PYNQ, or a simulation.

A backend offers the driver (:class:`runtime.driver.Accelerator`):

- ``open(bundle, dram_bytes)``: make the accelerator ready (load the bitstream, build the
  simulation) and provide one DRAM region of ``dram_bytes``; ``base`` is then its bus address;
- ``read(offset)`` / ``write(offset, value)``: a 32-bit register;
- ``write_memory(offset, data)`` / ``read_memory(offset, n)``: bytes of the region, kept coherent
  with what the accelerator sees;
- ``clock()``: seconds of accelerator time, for timeouts; ``wait()``: let time pass between polls;
- ``close()``.
"""

import importlib
import time

import numpy as np

from .errors import AcceleratorError
from .regs import CLOCK_HZ, CTRL_BASE, CTRL_SPAN

__all__ = ["PynqBackend", "SimulatorBackend"]


class PynqBackend:
    """The accelerator on a board running PYNQ (v3.0 or later).

    Parameters
    ----------
    pynq : module, optional
        What provides ``Overlay``, ``allocate`` and ``MMIO``; by default the ``pynq`` package,
        imported when the backend opens (tests pass a stand-in).
    ctrl_base : int
        Physical address of the control registers (the ZCU104 build's).
    poll_interval : float
        Seconds between status polls.
    load_bitstream : bool
        Program the PL with the bundle's ``top.bit`` (when it has one); otherwise the PL must
        already hold the accelerator.
    """

    def __init__(self, *, pynq=None, ctrl_base=CTRL_BASE, poll_interval=1e-4, load_bitstream=True):
        self._pynq = pynq
        self.ctrl_base = ctrl_base
        self.poll_interval = poll_interval
        self.load_bitstream = load_bitstream
        self.overlay = self._mmio = self._buffer = None
        self.base = None

    def open(self, bundle, dram_bytes):
        pynq = self._pynq
        if pynq is None:
            try:
                pynq = importlib.import_module("pynq")
            except ImportError:
                raise AcceleratorError("the board backend needs PYNQ (v3.0 or later, on the board); "
                                       "off the board use the simulator (--simulate)") from None
        if bundle.bitstream is not None and self.load_bitstream:
            self.overlay = pynq.Overlay(str(bundle.bitstream))
        self._mmio = pynq.MMIO(self.ctrl_base, CTRL_SPAN)
        # One physically contiguous buffer: the accelerator addresses DRAM by physical address.
        self._buffer = pynq.allocate(shape=(dram_bytes,), dtype=np.uint8)
        self.base = int(self._buffer.physical_address)

    def read(self, offset):
        return int(self._mmio.read(offset))

    def write(self, offset, value):
        self._mmio.write(offset, int(value))

    def write_memory(self, offset, data):
        self._buffer[offset:offset + len(data)] = np.frombuffer(data, dtype=np.uint8)
        # The HP port is not cache-coherent: flush the CPU's writes out to DRAM.
        self._buffer.sync_to_device()

    def read_memory(self, offset, n):
        self._buffer.sync_from_device()
        return self._buffer[offset:offset + n].tobytes()

    def clock(self):
        return time.monotonic()

    def wait(self):
        time.sleep(self.poll_interval)

    def close(self):
        if self._buffer is not None:
            self._buffer.freebuffer()
            self._buffer = None


class SimulatorBackend:
    """The simulated accelerator (``sim.session``): Amaranth's simulator or Verilator.

    Needs the development install (Amaranth; Verilator for ``engine="verilator"``), imported
    when the backend opens.

    Parameters
    ----------
    engine : str
        ``"pysim"`` (fine for the tiny config) or ``"verilator"``.
    capacity : dict, optional
        The accelerator build to simulate (``gateware.program.Capacity`` fields); by default the
        build the bundle was compiled for.
    dram_latency : int
        Cycles from a DRAM read request to its first data.
    poll_cycles : int
        Cycles simulated between status polls.
    impolite : sim.dram.Impolite, optional
        Back-pressure, jitter or error responses of the DRAM model (``error_range`` in bytes
        from the start of the region).
    """

    def __init__(self, engine="pysim", *, capacity=None, dram_latency=40, poll_cycles=512, impolite=None):
        self.impolite = impolite
        self.engine = engine
        self.capacity = capacity
        self.dram_latency = dram_latency
        self.poll_cycles = poll_cycles
        self.session = None
        self.base = 0

    def open(self, bundle, dram_bytes):
        from sim.session import open_session

        self.session = open_session(self.engine, dict(self.capacity or bundle.capacity), dram_bytes,
                                    latency=self.dram_latency, impolite=self.impolite)

    def read(self, offset):
        return self.session.read(offset)

    def write(self, offset, value):
        self.session.write(offset, value)

    def write_memory(self, offset, data):
        self.session.dram.write(offset, data)

    def read_memory(self, offset, n):
        return self.session.dram.read(offset, n)

    def clock(self):
        """Simulated seconds at the target clock."""
        return self.session.cycle / CLOCK_HZ

    def wait(self):
        self.session.tick(self.poll_cycles)

    def close(self):
        if self.session is not None:
            self.session.close()
            self.session = None
