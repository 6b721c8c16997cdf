"""The accelerator's control and status registers, on an AXI4-Lite subordinate port.

The register map (offsets, bits, ID and VERSION values) is the host runtime's,
``runtime/regs.py``: its ``Reg``, ``ID_VALUE`` and ``VERSION`` are re-exported here so that the
gateware and the driver cannot disagree.

Other offsets read 0 and ignore writes, with an OKAY response: a bus error on a stray access would
take down the host's driver, a zero does not. Byte strobes apply to the read-write registers.

While ``busy`` is high, writes to the read-write registers and starts are refused (still answered
OKAY) and counted in REJECTED, so a running frame always sees the settings it started with (the
sequencer and fetcher read them directly, without a copy).
"""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from runtime.regs import CAPACITY_FIELDS, CAPACITY_REGS, ID_VALUE, VERSION, Reg

from .axi import AXI4LiteSignature, Resp

__all__ = ["Reg", "ControlRegisters", "ID_VALUE", "VERSION"]

class ControlRegisters(wiring.Component):
    """AXI4-Lite register block that starts the accelerator and reports on it.

    Writes complete one at a time: the address and data channels are each taken into a one-entry
    holding register, in either order, and the write happens once both are there and the write
    response channel is free; a write response follows every two cycles at best. Reads likewise
    answer every two cycles at best. Address bits below the word are ignored.

    Parameters
    ----------
    addr_width : int
        Byte address width of the AXI4-Lite port (at least 7: the map spans 0x00-0x6F).
    base_width : int
        Width of the base address outputs (the DRAM address width of the accelerator's master).
    task_width : int
        Width of the task id.
    counter_width : int
        Width of the cycle and stall counter inputs, 33 to 64.
    capacity : dict, optional
        The build's ``gateware.program.Capacity`` fields (``runtime.regs.CAPACITY_FIELDS``), read
        back as constants from the CAP_* registers so the host can tell which build it drives;
        without it those registers read 0.

    Members
    -------
    bus : In(AXI4LiteSignature(addr_width=addr_width, data_width=32))
        Register access from the host.
    start : Out(1)
        One-cycle pulse, the cycle after the write of 1 to CONTROL bit 0 completes (none while
        ``busy``).
    soft_reset : Out(1)
        One-cycle pulse, the cycle after the write of 1 to CONTROL bit 1 completes.
    busy, done : In(1)
        The core is running or aborting / has finished (a pulse or a level: the register keeps
        the rising edge).
    error, aborting : In(1)
        STATUS bits 2 and 3, live.
    error_code : In(8), error_addr : In(base_width)
        ERROR_CODE and ERROR_ADDR_LO/HI, live.
    watchdog : Out(32)
        The WATCHDOG register.
    task : Out(task_width)
    weights_base, image_base, output_base : Out(base_width)
        Byte addresses in DRAM.
    cycles, stalls : In(counter_width)
        Free-running counts kept by the core.
    """

    def __init__(self, *, addr_width=12, base_width=40, task_width=8, counter_width=64, capacity=None):
        if addr_width < 7:
            raise ValueError(f"addr_width must be at least 7 to reach every register, not {addr_width}")
        if not 32 < counter_width <= 64:
            raise ValueError(f"counter_width must be 33..64, not {counter_width}")
        if not 0 < base_width <= 64 or not 0 < task_width <= 32:
            raise ValueError(f"bad widths: base_width={base_width}, task_width={task_width}")
        capacity = dict(capacity or {})
        if capacity and (set(capacity) != set(CAPACITY_FIELDS) or
                         not all(0 <= v < 1 << 32 for v in capacity.values())):
            raise ValueError(f"capacity must give each of {', '.join(CAPACITY_FIELDS)} as 32 bits, not {capacity}")
        self.addr_width = addr_width
        self.capacity = capacity
        super().__init__({
            "bus": In(AXI4LiteSignature(addr_width=addr_width, data_width=32)),
            "start": Out(1), "soft_reset": Out(1), "busy": In(1), "done": In(1),
            "error": In(1), "aborting": In(1), "error_code": In(8), "error_addr": In(base_width),
            "watchdog": Out(32),
            "task": Out(task_width),
            "weights_base": Out(base_width), "image_base": Out(base_width), "output_base": Out(base_width),
            "cycles": In(counter_width), "stalls": In(counter_width),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.bus

        # Read-write registers as (register, which 32-bit half): the LO/HI pairs are halves of one signal.
        rw = {Reg.TASK: (self.task, 0), Reg.WATCHDOG: (self.watchdog, 0)}
        for name, reg in (("WEIGHTS", self.weights_base), ("IMAGE", self.image_base),
                          ("OUTPUT", self.output_base)):
            rw[Reg[f"{name}_LO"]] = (reg, 0)
            rw[Reg[f"{name}_HI"]] = (reg, 1)

        # Write path: address and data wait in their own holding registers until both are present.
        aw_full, aw_word = Signal(), Signal(self.addr_width - 2)
        w_full, w_data, w_strb = Signal(), Signal(32), Signal(4)
        m.d.comb += [bus.awready.eq(~aw_full), bus.wready.eq(~w_full), bus.bresp.eq(Resp.OKAY)]
        with m.If(bus.awvalid & bus.awready):
            m.d.sync += [aw_full.eq(1), aw_word.eq(bus.awaddr[2:])]
        with m.If(bus.wvalid & bus.wready):
            m.d.sync += [w_full.eq(1), w_data.eq(bus.wdata), w_strb.eq(bus.wstrb)]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)

        commit = Signal()
        m.d.comb += commit.eq(aw_full & w_full & (~bus.bvalid | bus.bready))
        start_write, reset_write, rejected = Signal(), Signal(), Signal(32)
        m.d.comb += [start_write.eq(commit & (aw_word == Reg.CONTROL >> 2) & w_strb[0] & w_data[0] & ~self.busy),
                     reset_write.eq(commit & (aw_word == Reg.CONTROL >> 2) & w_strb[0] & w_data[1])]
        m.d.sync += [self.start.eq(start_write), self.soft_reset.eq(reset_write)]
        with m.If(commit):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), bus.bvalid.eq(1)]
            with m.Switch(aw_word):
                with m.Case(Reg.CONTROL >> 2):
                    with m.If(self.busy & w_strb[0] & w_data[0]):
                        m.d.sync += rejected.eq(rejected + 1)
                for offset, (reg, half) in rw.items():
                    with m.Case(offset >> 2):
                        with m.If(self.busy):
                            m.d.sync += rejected.eq(rejected + 1)
                        with m.Else():
                            for byte in range(4):
                                lo = 32 * half + 8 * byte
                                if lo < len(reg):
                                    with m.If(w_strb[byte]):
                                        m.d.sync += reg[lo:lo + 8].eq(w_data[8 * byte:8 * byte + 8])

        # Done is kept as the rising edge of the core's flag so a level still high from the previous
        # run cannot set it again after the start that cleared it.
        done_prev, done_flag = Signal(), Signal()
        m.d.sync += done_prev.eq(self.done)
        with m.If(self.done & ~done_prev):
            m.d.sync += done_flag.eq(1)
        with m.If(start_write | reset_write):
            m.d.sync += done_flag.eq(0)

        # Read path. Reading a counter's low half latches its high half, so the two reads agree.
        cycles_hi, stalls_hi = Signal(32), Signal(32)
        m.d.comb += [bus.arready.eq(~bus.rvalid), bus.rresp.eq(Resp.OKAY)]
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += [bus.rvalid.eq(1), bus.rdata.eq(0)]
            ro = {
                Reg.ID: ID_VALUE,
                Reg.VERSION: VERSION[0] << 16 | VERSION[1],
                Reg.STATUS: self.aborting << 3 | self.error << 2 | done_flag << 1 | self.busy,
                Reg.ERROR_CODE: self.error_code,
                Reg.ERROR_ADDR_LO: self.error_addr[:32], Reg.ERROR_ADDR_HI: self.error_addr[32:],
                Reg.REJECTED: rejected,
                Reg.CYCLES_LO: self.cycles[:32], Reg.CYCLES_HI: cycles_hi,
                Reg.STALLS_LO: self.stalls[:32], Reg.STALLS_HI: stalls_hi,
            }
            ro.update({CAPACITY_REGS[name]: value for name, value in self.capacity.items()})
            latch = {Reg.CYCLES_LO: cycles_hi.eq(self.cycles[32:]),
                     Reg.STALLS_LO: stalls_hi.eq(self.stalls[32:])}
            with m.Switch(bus.araddr[2:]):
                for offset, value in ro.items():
                    with m.Case(offset >> 2):
                        m.d.sync += bus.rdata.eq(value)
                        if offset in latch:
                            m.d.sync += latch[offset]
                for offset, (reg, half) in rw.items():
                    with m.Case(offset >> 2):
                        m.d.sync += bus.rdata.eq(reg[32 * half:32 * half + 32])
        return m
