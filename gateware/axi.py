"""AXI4 and AXI4-Lite bus signatures (AMBA AXI, ARM IHI 0022), seen from the manager (master).

Members carry the specification's signal names in lower case (``awaddr``, ``rready``, ...), flat
rather than grouped by channel, so a port of a converted design reads ``<member>__awaddr`` and the
board wrapper can rename it to the ``<interface>_awaddr`` form Vivado infers interfaces from.
A subordinate (slave) port is the flipped signature: ``In(AXI4LiteSignature(...))``.

Optional AXI4 signals not modelled: ``*user`` and ``*region`` (the Zynq PS ports do not need them).
"""

from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Burst", "Resp", "AXI4Signature", "AXI4LiteSignature"]


class Burst(enum.Enum, shape=2):
    """``AxBURST``: how the address moves from beat to beat."""
    FIXED = 0
    INCR = 1
    WRAP = 2


class Resp(enum.Enum, shape=2):
    """``BRESP``/``RRESP``."""
    OKAY = 0
    EXOKAY = 1
    SLVERR = 2
    DECERR = 3


def _check_data_width(data_width, allowed):
    if data_width not in allowed:
        raise ValueError(f"AXI data width must be one of {sorted(allowed)}, not {data_width!r}")


class AXI4LiteSignature(wiring.Signature):
    """AXI4-Lite: single-beat reads and writes, no IDs, no bursts.

    Parameters
    ----------
    addr_width : int
        Byte address width.
    data_width : int
        32 or 64.

    Attributes
    ----------
    addr_width, data_width : int
        As given.
    """

    def __init__(self, *, addr_width, data_width=32):
        _check_data_width(data_width, {32, 64})
        if addr_width < 1:
            raise ValueError(f"AXI address width must be positive, not {addr_width!r}")
        self.addr_width, self.data_width = addr_width, data_width
        super().__init__({
            "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1), "wready": In(1),
            "bresp": In(Resp), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(Resp), "rvalid": In(1), "rready": Out(1),
        })

    def __eq__(self, other):
        return (type(other) is type(self) and
                (self.addr_width, self.data_width) == (other.addr_width, other.data_width))

    def __repr__(self):
        return f"AXI4LiteSignature(addr_width={self.addr_width}, data_width={self.data_width})"


class AXI4Signature(wiring.Signature):
    """Full AXI4 memory-mapped bus with bursts of up to 256 beats.

    Parameters
    ----------
    addr_width : int
        Byte address width (the Zynq UltraScale+ HP ports take 49).
    data_width : int
        Power of two from 8 to 1024 (the HP ports are 128 bits wide at most).
    id_width : int
        Transaction ID width; 0 leaves the ID signals out (all transactions in order).

    Attributes
    ----------
    addr_width, data_width, id_width : int
        As given.
    """

    def __init__(self, *, addr_width, data_width, id_width=0):
        _check_data_width(data_width, {8 << i for i in range(8)})
        if addr_width < 1 or id_width < 0:
            raise ValueError(f"bad AXI widths: addr_width={addr_width!r}, id_width={id_width!r}")
        self.addr_width, self.data_width, self.id_width = addr_width, data_width, id_width
        members = {}
        # The read and write address channels carry the same fields.
        for ch in ("aw", "ar"):
            if id_width:
                members[f"{ch}id"] = Out(id_width)
            members.update({
                f"{ch}addr": Out(addr_width), f"{ch}len": Out(8), f"{ch}size": Out(3),
                f"{ch}burst": Out(Burst), f"{ch}lock": Out(1), f"{ch}cache": Out(4), f"{ch}prot": Out(3),
                f"{ch}qos": Out(4), f"{ch}valid": Out(1), f"{ch}ready": In(1),
            })
            if ch == "aw":
                members.update({
                    "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
                    "wvalid": Out(1), "wready": In(1),
                })
                if id_width:
                    members["bid"] = In(id_width)
                members.update({"bresp": In(Resp), "bvalid": In(1), "bready": Out(1)})
        if id_width:
            members["rid"] = In(id_width)
        members.update({
            "rdata": In(data_width), "rresp": In(Resp), "rlast": In(1), "rvalid": In(1), "rready": Out(1),
        })
        super().__init__(members)

    def __eq__(self, other):
        return (type(other) is type(self) and
                (self.addr_width, self.data_width, self.id_width) ==
                (other.addr_width, other.data_width, other.id_width))

    def __repr__(self):
        return (f"AXI4Signature(addr_width={self.addr_width}, data_width={self.data_width}, "
                f"id_width={self.id_width})")
