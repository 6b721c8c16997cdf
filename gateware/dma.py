"""The accelerator's AXI4 manager: burst reads into a stream, a stream into burst writes."""

from amaranth import *
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI4Signature, Burst

__all__ = ["DMA"]

_PAGE = 4096


class DMA(wiring.Component):
    """Moves whole beats between DRAM and the accelerator's streams.

    A command names a beat-aligned byte address and a number of beats. It is cut into INCR
    bursts of at most ``max_burst`` beats that never cross a 4 KiB boundary (AXI forbids it). Up
    to ``max_outstanding`` read bursts are in flight, so the read stream sustains one beat per
    cycle behind a DRAM latency of up to ``max_outstanding * burst length`` cycles; the next
    command's bursts go out while the previous command's data still flows. Reads and writes are
    independent. All transfers use ID 0, so data returns in address order.

    Parameters
    ----------
    addr_width, data_width : int
        Byte address and data widths of the AXI4 port.
    max_burst : int
        Longest burst, 1..256 beats.
    max_outstanding : int
        Read bursts in flight at once.

    Attributes
    ----------
    axi : Out(AXI4Signature(addr_width=addr_width, data_width=data_width))
    rd_cmd : In(stream.Signature(StructLayout({"addr": unsigned(addr_width), "beats": unsigned(24)})))
        Read ``beats`` (at least 1) beats from ``addr``.
    rd_data : Out(stream.Signature(StructLayout({"data": unsigned(data_width), "last": 1})))
        The beats in order; ``last`` on each command's final beat. ``rready`` is ``rd_data.ready``.
    wr_cmd : In(stream.Signature(StructLayout({"addr": unsigned(addr_width), "beats": unsigned(24)})))
        Write ``beats`` whole beats (all byte strobes) from ``wr_data`` at ``addr``.
    wr_data : In(stream.Signature(unsigned(data_width)))
    wr_busy : Out(1)
        A write command is being split, has beats to send or responses to wait for.
    """

    def __init__(self, *, addr_width=40, data_width=128, max_burst=256, max_outstanding=4):
        if not 1 <= max_burst <= 256:
            raise ValueError("max_burst must lie in 1..256")
        self.addr_width, self.data_width = addr_width, data_width
        self.max_burst, self.max_outstanding = max_burst, max_outstanding
        self.beat_bytes = data_width // 8
        cmd = data.StructLayout({"addr": unsigned(addr_width), "beats": unsigned(24)})
        super().__init__({
            "axi": Out(AXI4Signature(addr_width=addr_width, data_width=data_width)),
            "rd_cmd": In(stream.Signature(cmd)),
            "rd_data": Out(stream.Signature(data.StructLayout({"data": unsigned(data_width), "last": 1}))),
            "wr_cmd": In(stream.Signature(cmd)),
            "wr_data": In(stream.Signature(unsigned(data_width))),
            "wr_busy": Out(1),
        })

    def _splitter(self, m, cmd, name):
        """Cut commands from ``cmd`` into bursts; returns (valid, addr, len-1, last-of-command, take)."""
        active, addr, left = Signal(name=f"{name}_active"), Signal(self.addr_width, name=f"{name}_addr"), \
            Signal(24, name=f"{name}_left")
        page_beats = Signal(range(_PAGE // self.beat_bytes + 1), name=f"{name}_page")
        length = Signal(range(self.max_burst + 1), name=f"{name}_len")
        take = Signal(name=f"{name}_take")
        m.d.comb += page_beats.eq((_PAGE - addr[:12]) // self.beat_bytes)
        m.d.comb += length.eq(Mux((left < self.max_burst) & (left < page_beats), left,
                                  Mux(page_beats < self.max_burst, page_beats, self.max_burst)))
        m.d.comb += cmd.ready.eq(~active)
        with m.If(cmd.valid & cmd.ready):
            m.d.sync += [active.eq(cmd.payload.beats != 0), addr.eq(cmd.payload.addr), left.eq(cmd.payload.beats)]
        with m.If(take):
            m.d.sync += [addr.eq(addr + length * self.beat_bytes), left.eq(left - length)]
            with m.If(left == length):
                m.d.sync += active.eq(0)
        return active, addr, length, left == length, take

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        size = (self.beat_bytes - 1).bit_length()
        for ch in ("ar", "aw"):
            m.d.comb += [getattr(axi, f"{ch}size").eq(size), getattr(axi, f"{ch}burst").eq(Burst.INCR),
                         getattr(axi, f"{ch}cache").eq(0b0011)]

        # Reads: bursts go out while fewer than max_outstanding are unanswered; each burst's
        # "ends its command" bit waits in a FIFO for the burst's data.
        ar_active, ar_addr, ar_len, ar_end, ar_take = self._splitter(m, self.rd_cmd, "rd")
        m.submodules.rd_ends = rd_ends = fifo.SyncFIFOBuffered(width=1, depth=self.max_outstanding)
        inflight = Signal(range(self.max_outstanding + 1))
        r_done = Signal()
        can = ar_active & rd_ends.w_rdy & (inflight < self.max_outstanding)
        m.d.comb += [axi.arvalid.eq(can), axi.araddr.eq(ar_addr), axi.arlen.eq(ar_len - 1),
                     ar_take.eq(axi.arvalid & axi.arready),
                     rd_ends.w_en.eq(ar_take), rd_ends.w_data.eq(ar_end)]
        m.d.comb += [self.rd_data.valid.eq(axi.rvalid), self.rd_data.payload.data.eq(axi.rdata),
                     self.rd_data.payload.last.eq(axi.rlast & rd_ends.r_data[0]),
                     axi.rready.eq(self.rd_data.ready),
                     r_done.eq(axi.rvalid & axi.rready & axi.rlast), rd_ends.r_en.eq(r_done)]
        m.d.sync += inflight.eq(inflight + ar_take - r_done)

        # Writes: each burst's length waits in a FIFO for the data channel; responses are counted.
        aw_active, aw_addr, aw_len, _, aw_take = self._splitter(m, self.wr_cmd, "wr")
        m.submodules.wr_lens = wr_lens = fifo.SyncFIFOBuffered(width=9, depth=4)
        m.d.comb += [axi.awvalid.eq(aw_active & wr_lens.w_rdy), axi.awaddr.eq(aw_addr), axi.awlen.eq(aw_len - 1),
                     aw_take.eq(axi.awvalid & axi.awready), wr_lens.w_en.eq(aw_take), wr_lens.w_data.eq(aw_len)]
        beat = Signal(9)
        w_last = beat == wr_lens.r_data - 1
        m.d.comb += [axi.wvalid.eq(self.wr_data.valid & wr_lens.r_rdy), axi.wdata.eq(self.wr_data.payload),
                     axi.wstrb.eq((1 << self.beat_bytes) - 1), axi.wlast.eq(w_last),
                     self.wr_data.ready.eq(axi.wready & wr_lens.r_rdy)]
        with m.If(axi.wvalid & axi.wready):
            m.d.sync += beat.eq(Mux(w_last, 0, beat + 1))
            m.d.comb += wr_lens.r_en.eq(w_last)
        pending = Signal(16)
        b_done = axi.bvalid & axi.bready
        m.d.comb += axi.bready.eq(1)
        m.d.sync += pending.eq(pending + aw_take - b_done)
        m.d.comb += self.wr_busy.eq(aw_active | wr_lens.r_rdy | (pending != 0) | self.wr_cmd.valid)
        return m
