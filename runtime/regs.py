"""The accelerator's register map, as the host sees it: offsets, bits and identification values.

This module is the one definition of the map: ``gateware/control.py`` builds its register block
from it and the driver (:mod:`runtime.driver`) programs the accelerator through it.

Registers are 32-bit words at byte offsets from the control port's base::

    0x00 ID          RO  0x4D335654 ("M3VT")
    0x04 VERSION     RO  major << 16 | minor
    0x08 CONTROL     WO  bit 0: write 1 to start (a one-cycle pulse); reads 0
    0x0C STATUS      RO  bit 0: busy (live); bit 1: done (set when the core finishes, cleared by start)
    0x10 TASK        RW  task id
    0x20 WEIGHTS_LO  RW  frame image base address, bits 31..0
    0x24 WEIGHTS_HI  RW  bits 63..32 (as many as the DRAM address has)
    0x28 IMAGE_LO/HI, 0x30 OUTPUT_LO/HI: the same for the input image and the output buffer
    0x40 CYCLES_LO   RO  cycle counter bits 31..0; reading it latches bits 63..32 for CYCLES_HI
    0x44 CYCLES_HI   RO  the latched upper half
    0x48 STALLS_LO/HI    the same for the stall counter
    0x50..0x6C CAP_* RO  the build's capacity, one field of ``gateware.program.Capacity`` per
                         register in :data:`CAPACITY_FIELDS` order (since version 1.1)

Other offsets read 0 and ignore writes.
"""

import enum

__all__ = ["Reg", "ID_VALUE", "VERSION", "STATUS_BUSY", "STATUS_DONE", "CONTROL_START",
           "CAPACITY_FIELDS", "CAPACITY_REGS", "CTRL_BASE", "CTRL_SPAN", "CLOCK_HZ"]

#: Contents of the ID register: ASCII "M3VT".
ID_VALUE = 0x4D33_5654
#: (major, minor) in the VERSION register: the major number changes when an existing register
#: changes meaning, the minor one when registers are added.
VERSION = (1, 1)

STATUS_BUSY = 1 << 0
STATUS_DONE = 1 << 1
CONTROL_START = 1 << 0

#: The fields of ``gateware.program.Capacity`` that the CAP_* registers report, in register order.
CAPACITY_FIELDS = ("lanes", "act_words", "max_tokens", "max_k_chunks", "max_dim_chunks", "num_experts",
                   "top_k", "max_program")

#: Where the PS sees the control registers on the ZCU104 build (the start of M_AXI_HPM0_FPD's window).
CTRL_BASE = 0xA000_0000
#: Bytes of the control port's address window: one 4 KiB page.
CTRL_SPAN = 0x1000
#: The accelerator's target clock, for converting cycle counts into time.
CLOCK_HZ = 300_000_000


class Reg(enum.IntEnum):
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
    CAP_LANES = 0x50
    CAP_ACT_WORDS = 0x54
    CAP_MAX_TOKENS = 0x58
    CAP_MAX_K_CHUNKS = 0x5C
    CAP_MAX_DIM_CHUNKS = 0x60
    CAP_NUM_EXPERTS = 0x64
    CAP_TOP_K = 0x68
    CAP_MAX_PROGRAM = 0x6C


#: Capacity field name -> the register that reports it.
CAPACITY_REGS = {name: Reg[f"CAP_{name.upper()}"] for name in CAPACITY_FIELDS}
