"""The accelerator's register map, as the host sees it: offsets, bits and identification values.

This module is the one definition of the map: ``gateware/control.py`` builds its register block
from it and the driver (:mod:`runtime.driver`) programs the accelerator through it.

Registers are 32-bit words at byte offsets from the control port's base::

    0x00 ID          RO  0x4D335654 ("M3VT")
    0x04 VERSION     RO  major << 16 | minor
    0x08 CONTROL     WO  bit 0: write 1 to start (ignored while busy); bit 1: write 1 to soft-reset
                         (since 1.2); reads 0
    0x0C STATUS      RO  bit 0: busy (live: a frame runs, or an abort drains); bit 1: done (set when
                         the frame finishes or stops on an error, cleared by start and soft reset);
                         bit 2: error (since 1.2: the frame stopped on ERROR_CODE); bit 3: aborting
                         (since 1.2: draining the bus after a fault, a watchdog or a soft reset)
    0x10 TASK        RW  task id
    0x14 ERROR_CODE  RO  why the last frame stopped, an :class:`ErrorCode` (since 1.2)
    0x18 ERROR_ADDR_LO/HI  RO  the failing burst's byte address for bus errors, else 0 (since 1.2)
    0x20 WEIGHTS_LO  RW  frame image base address, bits 31..0
    0x24 WEIGHTS_HI  RW  bits 63..32 (as many as the DRAM address has)
    0x28 IMAGE_LO/HI, 0x30 OUTPUT_LO/HI: the same for the input image and the output buffer
    0x38 WATCHDOG    RW  stop a frame that runs more than this many cycles (ErrorCode.WATCHDOG);
                         0 (the reset value) is off (since 1.2)
    0x3C REJECTED    RO  register writes refused because the accelerator was busy, wrapping (since 1.2)
    0x40 CYCLES_LO   RO  cycle counter bits 31..0; reading it latches bits 63..32 for CYCLES_HI
    0x44 CYCLES_HI   RO  the latched upper half
    0x48 STALLS_LO/HI    the same for the stall counter
    0x50..0x74 CAP_* RO  the build's capacity, one field of ``gateware.program.Capacity`` per
                         register in :data:`CAPACITY_FIELDS` order (since version 1.1; CAP_COLS,
                         the MAC array's columns, since 1.3; CAP_PORTS, the AXI4 managers that
                         stream weights, since 1.4)

Other offsets read 0 and ignore writes.

Faults (since 1.2). A bus error (SLVERR or DECERR on a read beat or a write response) or the
watchdog stops the frame: no new bursts, the outstanding ones drained (read data discarded, owed
write beats sent with no byte strobe, so nothing is written after the fault), then everything but
the register block is reset; STATUS then reads done + error and ERROR_CODE/ERROR_ADDR say why. A
soft reset takes the same path and ends idle with no error. Either takes a bounded number of
cycles once the memory answers the outstanding bursts.

Writes while busy. TASK, the base addresses and WATCHDOG written while STATUS.busy is set are
*rejected* (the running frame never sees a change) and counted in REJECTED; a start while busy is
ignored (and counted). Soft reset is taken at any time.
"""

import enum

__all__ = ["Reg", "ErrorCode", "ID_VALUE", "VERSION", "STATUS_BUSY", "STATUS_DONE", "STATUS_ERROR",
           "STATUS_ABORTING", "CONTROL_START", "CONTROL_SOFT_RESET", "error_message",
           "CAPACITY_FIELDS", "CAPACITY_REGS", "CTRL_BASE", "CTRL_SPAN", "CLOCK_HZ"]

#: Contents of the ID register: ASCII "M3VT".
ID_VALUE = 0x4D33_5654
#: (major, minor) in the VERSION register: the major number changes when an existing register
#: changes meaning or the DRAM image's layout changes (2.0: each weight-tile bank carries its own
#: parameter records, ``gateware/program.py``), the minor one when registers are added.
VERSION = (2, 0)

STATUS_BUSY = 1 << 0
STATUS_DONE = 1 << 1
STATUS_ERROR = 1 << 2
STATUS_ABORTING = 1 << 3
CONTROL_START = 1 << 0
CONTROL_SOFT_RESET = 1 << 1

#: The fields of ``gateware.program.Capacity`` that the CAP_* registers report, in register order.
CAPACITY_FIELDS = ("lanes", "act_words", "max_tokens", "max_k_chunks", "max_dim_chunks", "num_experts",
                   "top_k", "max_program", "cols", "ports")

#: Where the PS sees the control registers on the ZCU104 build (the start of M_AXI_HPM0_FPD's window).
CTRL_BASE = 0xA000_0000
#: Bytes of the control port's address window: one 4 KiB page.
CTRL_SPAN = 0x1000
#: The accelerator's target clock, for converting cycle counts into time.
CLOCK_HZ = 300_000_000


class ErrorCode(enum.IntEnum):
    """ERROR_CODE: why a frame stopped. Bus errors are ``1 + 2 * write + (response == DECERR)``."""
    NONE = 0
    READ_SLVERR = 1
    READ_DECERR = 2
    WRITE_SLVERR = 3
    WRITE_DECERR = 4
    WATCHDOG = 5


def error_message(code, addr):
    """One line saying what ERROR_CODE ``code`` with ERROR_ADDR ``addr`` means."""
    try:
        name = ErrorCode(code).name
    except ValueError:
        return f"unknown error code {code}"
    if name == "WATCHDOG":
        return "WATCHDOG (code 5): the frame ran past the watchdog's cycle limit"
    kind, resp = name.split("_")
    return f"{name} (code {code}): {resp} answered to the {kind.lower()} burst at {addr:#x}"


class Reg(enum.IntEnum):
    """Byte offsets of the registers."""
    ID = 0x00
    VERSION = 0x04
    CONTROL = 0x08
    STATUS = 0x0C
    TASK = 0x10
    ERROR_CODE = 0x14
    ERROR_ADDR_LO = 0x18
    ERROR_ADDR_HI = 0x1C
    WEIGHTS_LO = 0x20
    WEIGHTS_HI = 0x24
    IMAGE_LO = 0x28
    IMAGE_HI = 0x2C
    OUTPUT_LO = 0x30
    OUTPUT_HI = 0x34
    WATCHDOG = 0x38
    REJECTED = 0x3C
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
    CAP_COLS = 0x70
    CAP_PORTS = 0x74


#: Capacity field name -> the register that reports it.
CAPACITY_REGS = {name: Reg[f"CAP_{name.upper()}"] for name in CAPACITY_FIELDS}
