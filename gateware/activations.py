"""The activation memory: every on-chip tensor of the frame, in words of ``lanes`` int16."""

from amaranth import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .sequencer import act_write_layout

__all__ = ["ActivationStore", "read_port_signature"]


def read_port_signature(lanes):
    """A synchronous read port, seen from its reader: ``data`` the cycle after an enabled read."""
    return wiring.Signature({"addr": Out(24), "en": Out(1), "data": In(data.ArrayLayout(signed(16), lanes))})


class ActivationStore(wiring.Component):
    """``depth`` words of ``lanes`` int16, one write port and two read ports.

    The memory is held once per reader, all copies written together: both readers take a word
    every cycle, and a URAM288 has two ports (one goes to the write). In URAM a 16 K-word copy
    is 4 x 4 blocks, so the board build's two take 32 of the 96. (The W reader reads K and V
    from the attention buffers of ``gateware.kv_buffers`` instead.)

    Parameters
    ----------
    lanes, depth : int

    Attributes
    ----------
    write : In(stream.Signature(act_write_layout(lanes), always_ready=True))
        Registered on the way in: a word is in the memory two clock edges after it is offered,
        so a read in the next cycle still sees the old word. The writer's address sum and the
        URAM cascade's block select were 9 levels together on the board top.
    a, r : In(read_port_signature(lanes))
        The A reader's and the residual reader's ports; latency 1 cycle.
    """

    def __init__(self, lanes, depth):
        self.lanes, self.depth = lanes, depth
        super().__init__({
            "write": In(stream.Signature(act_write_layout(lanes), always_ready=True)),
            **{name: In(read_port_signature(lanes)) for name in "ar"},
        })

    def elaborate(self, platform):
        m = Module()
        write = Signal.like(self.write.payload)
        write_en = Signal()
        m.d.sync += [write.eq(self.write.payload), write_en.eq(self.write.valid)]
        for name in "ar":
            m.submodules[f"act_{name}"] = copy = Memory(shape=data.ArrayLayout(signed(16), self.lanes),
                                                        depth=self.depth, init=[], attrs={"ram_style": "ultra"})
            read, port_w, port = copy.read_port(), copy.write_port(), getattr(self, name)
            m.d.comb += [read.addr.eq(port.addr), read.en.eq(port.en), port.data.eq(read.data),
                         port_w.addr.eq(write.addr), port_w.data.eq(write.data), port_w.en.eq(write_en)]
        return m
