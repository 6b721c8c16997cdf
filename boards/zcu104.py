"""Xilinx ZCU104 (Zynq UltraScale+ xczu7ev-ffvc1156-2-e) as an Amaranth platform, and a bring-up top.

Pin sources, checked against public material (UG1267 itself was not reachable from here):

- LEDs D5 D6 A5 B5 and DIP switches E4 D4 F5 F4, LVCMOS33: litex-boards
  ``litex_boards/platforms/xilinx_zcu104.py`` and chipyard's ZCU104 bring-up GPIO map (which cites
  UG1267 pp. 67-68) agree.
- Push buttons B4 C4 B3 C3, LVCMOS33: litex-boards; B3 and C3 also in GevKeepCoding/BeginnerVivadoProjects
  ``full_led_blink/top.xdc`` (a ZCU104 design).
- clk125 F23/E23, LVDS: litex-boards and the same ZCU104 XDC agree.
- clk300 AH18/AH17, DIFF_SSTL12_DCI (bank 64, 1.2 V): litex-boards and the ZCU104 master XDC named
  below (its commented-out DDR4 clock lines) agree.
- PMOD headers J55 (``pmod`` 0) and J87 (``pmod`` 1), LVCMOS33: litex-boards and KutuSystems'
  ``zcu104_base`` XDC agree on the signal order PMOD0_0..7 = G8 H8 G7 H7 G6 H6 J6 J7 and
  PMOD1_0..7 = J9 K9 K8 L8 L10 M10 M8 M9; soct-org/SoCeteer ``syn/boards/zcu104/sdc.xdc`` places them
  in bank 87 at VCC3V3. A public "ZCU104 Rev1.0 master XDC" (repository not recorded) puts PMOD0_0..2
  on J55 pins 1, 3, 5: the Xilinx numbering of the 2x6 header runs odd pins along one
  row (signals 0-3) and even pins along the other (signals 4-7), as on the ZCU102. Amaranth's ``pmod``
  connector numbers rows Digilent-style (1-4, 7-10), so signals 0-3 are its pins 1-4 and 4-7 its 7-10.
  Which row is on top is unconfirmed; check one pin with a meter before wiring a module that cares.
"""

from amaranth.build import Attrs, Clock, Connector, DiffPairs, Resource
from amaranth.hdl import Cat, ClockDomain, Elaboratable, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import FFSynchronizer
from amaranth.vendor import XilinxPlatform
from amaranth_boards.resources import ButtonResources, LEDResources, SwitchResources

__all__ = ["ZCU104Platform", "Bringup"]


class ZCU104Platform(XilinxPlatform):
    """The ZCU104 evaluation board's programmable-logic I/O.

    Resources: ``clk125`` (LVDS, 125 MHz), ``clk300`` (DIFF_SSTL12_DCI, 300 MHz), ``led`` 0-3,
    ``button`` 0-3 and ``switch`` 0-3 (all LVCMOS33 on the 3.3 V HD bank); connectors ``pmod`` 0 (J55)
    and 1 (J87), whose pins are 3.3 V as well (request them with ``IOSTANDARD="LVCMOS33"``). The accelerator's AXI ports
    reach the PS8 in the Vivado build, not through resources here.
    """

    device = "xczu7ev"
    package = "ffvc1156"
    speed = "2-e"
    default_clk = "clk125"
    resources = [
        Resource("clk125", 0, DiffPairs("F23", "E23", dir="i"), Clock(125e6), Attrs(IOSTANDARD="LVDS")),
        # In a 1.2 V bank shared with the PL DDR4 pins (bank 64 per litex-boards), hence SSTL, not LVDS.
        Resource("clk300", 0, DiffPairs("AH18", "AH17", dir="i"), Clock(300e6),
                 Attrs(IOSTANDARD="DIFF_SSTL12_DCI")),

        *LEDResources(pins="D5 D6 A5 B5", attrs=Attrs(IOSTANDARD="LVCMOS33")),
        *ButtonResources(pins="B4 C4 B3 C3", attrs=Attrs(IOSTANDARD="LVCMOS33")),
        *SwitchResources(pins="E4 D4 F5 F4", attrs=Attrs(IOSTANDARD="LVCMOS33")),
    ]
    connectors = [
        Connector("pmod", 0, "G8 H8 G7 H7 - - G6 H6 J6 J7 - -"),      # J55
        Connector("pmod", 1, "J9 K9 K8 L8 - - L10 M10 M8 M9 - -"),    # J87
    ]


class Bringup(Elaboratable):
    """Board bring-up: LEDs show a slow count from ``clk125``, flipped by the buttons and DIP switches.

    LED ``i`` is count bit ``first_bit + i`` XOR button ``i`` XOR switch ``i``, so a running clock, each
    LED's pin, and each input's pin can be checked by eye.

    Parameters
    ----------
    first_bit : int
        Counter bit shown on LED 0. The default, 24, gives about 3.7 Hz on LED 0 at 125 MHz.
    """

    def __init__(self, first_bit=24):
        self.first_bit = first_bit

    def elaborate(self, platform):
        m = Module()
        m.submodules.clk125 = clk125 = io.Buffer("i", platform.request("clk125", 0, dir="-"))
        # No reset pin: the configuration's global set/reset gives the counter its init value.
        m.domains.sync = sync = ClockDomain("sync", reset_less=True)
        m.d.comb += sync.clk.eq(clk125.i)

        count = Signal(self.first_bit + 4)
        m.d.sync += count.eq(count + 1)

        for i in range(4):
            m.submodules[f"led{i}"] = led = io.Buffer("o", platform.request("led", i, dir="-"))
            m.submodules[f"button{i}"] = button = io.Buffer("i", platform.request("button", i, dir="-"))
            m.submodules[f"switch{i}"] = switch = io.Buffer("i", platform.request("switch", i, dir="-"))
            # Buttons and switches are asynchronous to clk125; synchronise before they reach logic.
            inputs = Signal(2, name=f"inputs{i}")
            m.submodules[f"sync_in{i}"] = FFSynchronizer(Cat(button.i, switch.i), inputs)
            m.d.comb += led.o.eq(count[self.first_bit + i] ^ inputs[0] ^ inputs[1])
        return m


if __name__ == "__main__":
    import sys

    from .build import main

    sys.exit(main())
