"""The accelerator's control and status registers, on an AXI4-Lite subordinate port.

Register map (32-bit words, byte offsets; see ``Reg``)::

    0x00 ID          RO  0x4D335654 ("M3VT")
    0x04 VERSION     RO  major << 16 | minor
    0x08 CONTROL     WO  bit 0: write 1 to start (a one-cycle pulse on ``start``); reads 0
    0x0C STATUS      RO  bit 0: busy (live); bit 1: done (set when ``done`` rises, cleared by start)
    0x10 TASK        RW  task id, ``task_width`` bits
    0x20 WEIGHTS_LO  RW  weights/artifact base address, bits 31..0
    0x24 WEIGHTS_HI  RW  bits ``base_width``-1..32
    0x28 IMAGE_LO/HI, 0x30 OUTPUT_LO/HI: the same for the image and the output buffer
    0x40 CYCLES_LO   RO  cycle counter bits 31..0; reading it latches bits 63..32 for CYCLES_HI
    0x44 CYCLES_HI   RO  the latched upper half
    0x48 STALLS_LO/HI    the same for the stall counter

Other offsets read 0 and ignore writes, with an OKAY response: a bus error on a stray access would
take down the host's driver, a zero does not. Byte strobes apply to the read-write registers.
"""

import enum as py_enum

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI4LiteSignature, Resp

__all__ = ["Reg", "ControlRegisters", "ID_VALUE", "VERSION"]

#: Contents of the ID register: ASCII "M3VT".
ID_VALUE = 0x4D33_5654
#: (major, minor) in the VERSION register; the major number changes when the map does.
VERSION = (1, 0)


class Reg(py_enum.IntEnum):
    """Byte offsets of the registers."""
    ID = 0x00
    VERSION = 0x04
    CONTROL = 0x08
    STATUS = 0x0C
    TASK = 0x10
    WEIGHTS_LO = 0x20
    WEIGHTS_HI = 0x24
    IMAGE_LO = 0x28
    IMAGE_HI = 0x2C
    OUTPUT_LO = 0x30
    OUTPUT_HI = 0x34
    CYCLES_LO = 0x40
    CYCLES_HI = 0x44
    STALLS_LO = 0x48
    STALLS_HI = 0x4C


class ControlRegisters(wiring.Component):
    """AXI4-Lite register block that starts the accelerator and reports on it.

    Writes complete one at a time: the address and data channels are each taken into a one-entry
    holding register, in either order, and the write happens once both are there and the write
    response channel is free; a write response follows every two cycles at best. Reads likewise
    answer every two cycles at best. Address bits below the word are ignored.

    Parameters
    ----------
    addr_width : int
        Byte address width of the AXI4-Lite port (at least 7: the map spans 0x00-0x4F).
    base_width : int
        Width of the base address outputs (the DRAM address width of the accelerator's master).
    task_width : int
        Width of the task id.
    counter_width : int
        Width of the cycle and stall counter inputs, 33 to 64.

    Members
    -------
    bus : In(AXI4LiteSignature(addr_width=addr_width, data_width=32))
        Register access from the host.
    start : Out(1)
        One-cycle pulse, the cycle after the write of 1 to CONTROL bit 0 completes.
    busy, done : In(1)
        The core is running / has finished (a pulse or a level: the register keeps the rising edge).
    task : Out(task_width)
    weights_base, image_base, output_base : Out(base_width)
        Byte addresses in DRAM.
    cycles, stalls : In(counter_width)
        Free-running counts kept by the core.
    """

    def __init__(self, *, addr_width=12, base_width=40, task_width=8, counter_width=64):
        if addr_width < 7:
            raise ValueError(f"addr_width must be at least 7 to reach every register, not {addr_width}")
        if not 32 < counter_width <= 64:
            raise ValueError(f"counter_width must be 33..64, not {counter_width}")
        if not 0 < base_width <= 64 or not 0 < task_width <= 32:
            raise ValueError(f"bad widths: base_width={base_width}, task_width={task_width}")
        self.addr_width = addr_width
        super().__init__({
            "bus": In(AXI4LiteSignature(addr_width=addr_width, data_width=32)),
            "start": Out(1), "busy": In(1), "done": In(1),
            "task": Out(task_width),
            "weights_base": Out(base_width), "image_base": Out(base_width), "output_base": Out(base_width),
            "cycles": In(counter_width), "stalls": In(counter_width),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.bus

        # Read-write registers as (register, which 32-bit half): the LO/HI pairs are halves of one signal.
        rw = {Reg.TASK: (self.task, 0)}
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
        start_write = Signal()
        m.d.comb += start_write.eq(commit & (aw_word == Reg.CONTROL >> 2) & w_strb[0] & w_data[0])
        m.d.sync += self.start.eq(start_write)
        with m.If(commit):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), bus.bvalid.eq(1)]
            with m.Switch(aw_word):
                for offset, (reg, half) in rw.items():
                    with m.Case(offset >> 2):
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
        with m.If(start_write):
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
                Reg.STATUS: done_flag << 1 | self.busy,
                Reg.CYCLES_LO: self.cycles[:32], Reg.CYCLES_HI: cycles_hi,
                Reg.STALLS_LO: self.stalls[:32], Reg.STALLS_HI: stalls_hi,
            }
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
