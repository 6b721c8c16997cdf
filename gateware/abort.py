"""The abort path: one way out of a frame for a bus error, the watchdog and a soft reset."""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from runtime.regs import ErrorCode

from .axi import Resp

__all__ = ["AbortControl"]


class AbortControl(wiring.Component):
    """Stops a frame on a fault, drains the bus, then resets the datapath.

    Three causes take the same path: the DMA's ``error`` (a SLVERR or DECERR response), the
    watchdog (a frame busy for more than ``watchdog`` cycles, 0 = off) and ``soft_reset``.
    The sequence:

    1. ``halt`` rises the cycle after the cause (the DMA has already stopped itself on a bus
       error): the DMA issues nothing new and finishes the outstanding bursts without moving
       data (``gateware.dma.DMA``, Faults). ``aborting`` is high from here to the end.
    2. Once the DMA is ``drained``, ``reset`` is high for one cycle: everything but the register
       block and this component returns to its reset state, the DMA included (it is idle by
       then, so no burst is cut short on the bus).
    3. The cycle after, ``halt`` falls; for a fault ``error`` rises with ``code`` and ``addr``
       and ``done`` pulses. A soft reset ends with ``error`` low and ``code`` NONE.

    ``code``/``addr`` keep the first fault of a frame and clear at the next ``start`` or soft
    reset. A cause arriving during an abort joins it (a soft reset makes it end without error).
    Once the memory answers every outstanding burst, the abort takes ``drain + 3`` cycles, where
    ``drain`` is the cycles until the last of them completes.

    ``reset`` is a register, so its fan-out to the whole datapath starts at a flop.

    Members
    -------
    start, soft_reset : In(1)
        From the control registers (pulses).
    busy : In(1)
        The sequencer runs a frame.
    watchdog : In(32)
        Cycle limit per frame; 0 is off.
    dma_error, dma_error_write : In(1)
    dma_error_resp : In(Resp)
    dma_error_addr : In(addr_width)
    dma_drained : In(1)
        The DMA's fault report and its drained flag.
    halt, reset, aborting, error, done : Out(1)
    code : Out(8)
        An ``runtime.regs.ErrorCode``.
    addr : Out(addr_width)
        The failing burst's address for a bus error, else 0.

    Parameters
    ----------
    addr_width : int
        Width of the DMA's addresses.
    """

    def __init__(self, addr_width):
        super().__init__({
            "start": In(1), "soft_reset": In(1), "busy": In(1), "watchdog": In(32),
            "dma_error": In(1), "dma_error_write": In(1), "dma_error_resp": In(Resp),
            "dma_error_addr": In(addr_width), "dma_drained": In(1),
            "halt": Out(1), "reset": Out(1), "aborting": Out(1), "error": Out(1), "done": Out(1),
            "code": Out(8), "addr": Out(addr_width),
        })

    def elaborate(self, platform):
        m = Module()
        # The watchdog counts the frame's cycles; the comparison is registered (one more cycle
        # of slack in a 32-bit compare, a cycle later to fire).
        count, expired = Signal(32), Signal()
        with m.If(self.start | self.halt):
            m.d.sync += count.eq(0)
        with m.Elif(self.busy & ~self.halt):
            m.d.sync += count.eq(count + 1)
        m.d.sync += expired.eq(self.busy & (self.watchdog != 0) & (count >= self.watchdog))

        fault = Signal()      # the abort under way ends in ERROR (not a soft reset)
        bus_code = Signal(8)
        resp_decerr = self.dma_error_resp.as_value()[0]
        m.d.comb += [bus_code.eq(1 + (self.dma_error_write << 1) + resp_decerr),
                     self.aborting.eq(self.halt)]
        with m.If(self.start | self.soft_reset):
            m.d.sync += [self.error.eq(0), self.code.eq(ErrorCode.NONE), self.addr.eq(0)]

        m.d.sync += [self.reset.eq(0), self.done.eq(0)]
        with m.FSM():
            with m.State("RUN"):
                with m.If(self.soft_reset):
                    m.d.sync += [self.halt.eq(1), fault.eq(0)]
                    m.next = "DRAIN"
                with m.Elif(self.dma_error):
                    m.d.sync += [self.halt.eq(1), fault.eq(1), self.code.eq(bus_code),
                                 self.addr.eq(self.dma_error_addr)]
                    m.next = "DRAIN"
                with m.Elif(expired):
                    m.d.sync += [self.halt.eq(1), fault.eq(1), self.code.eq(ErrorCode.WATCHDOG),
                                 self.addr.eq(0)]
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If(self.soft_reset):
                    m.d.sync += fault.eq(0)
                with m.If(self.dma_drained):
                    m.d.sync += self.reset.eq(1)
                    m.next = "RESET"
            with m.State("RESET"):
                m.d.sync += [self.halt.eq(0), self.error.eq(fault), self.done.eq(fault)]
                with m.If(self.soft_reset | ~fault):
                    m.d.sync += [self.error.eq(0), self.done.eq(0), self.code.eq(ErrorCode.NONE),
                                 self.addr.eq(0)]
                m.next = "RUN"
        return m
