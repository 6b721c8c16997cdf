"""The accelerator's AXI4 manager: burst reads into a stream, a stream into burst writes."""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI4Signature, Burst, Resp
from .skid_buffer import SkidBuffer

__all__ = ["DMA"]

_PAGE = 4096        # AXI bursts must not cross a 4 KiB boundary
_CACHE = 0b0011     # AxCACHE: normal non-cacheable bufferable (what Xilinx's HP ports expect)


def command_layout(addr_width):
    """Layout of a read or write command: byte address and number of beats."""
    return data.StructLayout({"addr": unsigned(addr_width), "beats": unsigned(24)})


class DMA(wiring.Component):
    """Moves whole beats between DRAM and the accelerator's streams over one AXI4 manager port.

    Bursts. A command (beat-aligned byte address, number of beats) is cut into INCR bursts of
    at most ``max_burst`` beats that never cross a 4 KiB boundary: each burst runs to the end of
    the command, the end of the 4 KiB page or ``max_burst`` beats, whichever comes first. AxSIZE
    is the full bus width, AxCACHE ``0b0011``, AxPROT/AxLOCK/AxQOS 0, ID 0 (no ID signals), so
    the subordinate answers in order. A burst is issued per cycle at most, and a command is taken
    in the cycle its last burst is cut, so 1-beat commands go out one per cycle (as far as
    ``max_outstanding`` allows).

    Ordering. Read beats come out in address order and commands in acceptance order; ``last``
    marks each command's final beat. Up to ``max_outstanding`` read bursts are issued ahead of
    their data, also across command boundaries. Write data follows the commands in order; the
    W channel does not wait for AWREADY (a burst's length is queued when it is cut, not when its
    address is taken). At most ``max_outstanding`` write bursts await their B response. Reads
    and writes share nothing: neither waits for the other, and nothing orders a read after an
    earlier write to the same address (the sequencer waits for ``wr_busy`` to fall instead).

    Faults. A read beat with RRESP SLVERR or DECERR (seen with RVALID, taken or not) or a B
    response with either latches ``error`` with the response, the direction and the failing
    burst's address, and from the next cycle the DMA *flushes*, as it does while ``halt`` is
    high: no new AR or AW, no command taken, read beats taken and discarded (``rd_data`` shows
    none, error beats never), the W beats the bursts already cut still owe sent with WSTRB 0
    and WDATA 0 (a beat offered before the flush and not yet taken goes as it was, as AXI
    requires), every B response taken. ``drained`` rises once no burst is outstanding; a reset
    (the accelerator's abort path) then returns the DMA to idle and clears ``error``. The first
    fault only is kept.

    Throughput. One beat per cycle in each direction when DRAM keeps up. Reads sustain that
    behind a DRAM read latency of ``L`` cycles when ``max_outstanding * burst length`` exceeds
    about ``L + 3`` beats (with the defaults, any latency below ~1000 cycles on long commands).

    Latency. A read command accepted in cycle ``t`` presents ARVALID in cycle ``t + 2`` (when
    the previous AR was taken and fewer than ``max_outstanding`` bursts are in flight); its
    first beat is on ``rd_data`` in the cycle RVALID rises. Commands and read beats pass
    one-entry skid buffers (:class:`SkidBuffer`), so ``rd_cmd.ready``, ``wr_cmd.ready`` and
    RREADY are registers; a command or beat offered while the DMA cannot take it waits there.
    A write command accepted in cycle ``t`` presents AWVALID and
    takes its first ``wr_data`` beat from cycle ``t + 2``; ``wr_busy`` is high from cycle
    ``t + 1`` until the cycle after its last B response.

    Parameters
    ----------
    addr_width : int
        Byte address width of the AXI4 port (at least 12).
    data_width : int
        Data width in bits (a power of two from 8 to 1024); a beat is ``data_width // 8`` bytes.
    max_burst : int
        Longest burst in beats, 1..256.
    max_outstanding : int
        Read bursts issued and not yet fully received, and write bursts cut and not yet
        answered, at most (each direction separately); at least 1.

    Attributes
    ----------
    axi : Out(AXI4Signature(addr_width=addr_width, data_width=data_width))
        The manager port (no ID signals).
    rd_cmd : In(stream.Signature(StructLayout({"addr": unsigned(addr_width), "beats": unsigned(24)})))
        Read ``beats`` beats from byte address ``addr`` (aligned to a beat, ``beats >= 1``; a
        0-beat command is accepted and produces nothing).
    rd_data : Out(stream.Signature(StructLayout({"data": unsigned(data_width), "last": 1})))
        The beats read, in order; ``last`` on each command's final beat. ``valid`` is RVALID and
        ``ready`` drives RREADY.
    wr_cmd : In(stream.Signature(StructLayout({"addr": unsigned(addr_width), "beats": unsigned(24)})))
        Write ``beats`` whole beats (all byte strobes set) at byte address ``addr`` (aligned,
        ``beats >= 1``; a 0-beat command is accepted and writes nothing).
    wr_data : In(stream.Signature(unsigned(data_width)))
        The beats to write, for the accepted write commands in order.
    wr_busy : Out(1)
        High while an accepted write command has beats not yet sent or B responses not yet
        received.
    halt : In(1)
        Flush (see Faults) while high.
    error : Out(1)
        A fault was seen (until reset).
    error_write, error_resp, error_addr : Out(1), Out(Resp), Out(addr_width)
        The first fault's direction (1: a write), response and burst address.
    drained : Out(1)
        No read or write burst is outstanding.
    """

    def __init__(self, *, addr_width=40, data_width=128, max_burst=256, max_outstanding=4):
        if not 1 <= max_burst <= 256:
            raise ValueError(f"max_burst must lie in 1..256, not {max_burst!r}")
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding must be positive, not {max_outstanding!r}")
        if addr_width < 12:
            raise ValueError(f"addr_width must be at least 12 (one 4 KiB page), not {addr_width!r}")
        axi = AXI4Signature(addr_width=addr_width, data_width=data_width)
        self.addr_width, self.data_width = addr_width, data_width
        self.max_burst, self.max_outstanding = max_burst, max_outstanding
        self.beat_bytes = data_width // 8
        super().__init__({
            "axi": Out(axi),
            "rd_cmd": In(stream.Signature(command_layout(addr_width))),
            "rd_data": Out(stream.Signature(data.StructLayout({"data": unsigned(data_width), "last": 1}))),
            "wr_cmd": In(stream.Signature(command_layout(addr_width))),
            "wr_data": In(stream.Signature(unsigned(data_width))),
            "wr_busy": Out(1),
            "halt": In(1), "error": Out(1), "error_write": Out(1), "error_resp": Out(Resp),
            "error_addr": Out(addr_width), "drained": Out(1),
        })

    def _splitter(self, m, cmd, name, flush):
        """Holds one command and cuts bursts off its front whenever ``cut`` is driven high.

        Returns ``(active, addr, length, last, cut, held)``: a burst of ``length`` beats at
        ``addr`` is available while ``active``; ``last`` says it ends the command; ``held``
        says a command waits in the splitter's skid buffer.
        """
        # The command is taken through a skid buffer, so that its ready is a register and not
        # the burst cut (AXI's ARREADY/AWREADY and the bursts in flight) through logic.
        skid = SkidBuffer(cmd.payload.shape())
        m.submodules[f"{name}_cmd_skid"] = skid
        m.d.comb += [skid.i.valid.eq(cmd.valid & ~flush), skid.i.payload.eq(cmd.payload),
                     cmd.ready.eq(skid.i.ready & ~flush)]
        cmd = skid.o
        shift = (self.beat_bytes - 1).bit_length()
        page_beats = _PAGE >> shift
        active = Signal(name=f"{name}_active")
        addr = Signal(self.addr_width, name=f"{name}_addr")
        left = Signal(24, name=f"{name}_left")
        # The beats to the end of the page and the next burst's length bound (``cap``: the
        # page's room or ``max_burst``) are registers, updated as the address moves, so that
        # the burst's length and the command handshake start at registers, not behind the
        # address's page arithmetic (it made paths of 9 levels into the fetch queue).
        room = Signal(range(1, page_beats + 1), name=f"{name}_room")
        cap = Signal(range(1, self.max_burst + 1), name=f"{name}_cap")
        length = Signal(range(1, self.max_burst + 1), name=f"{name}_length")
        # Whether the next burst ends the command (``left <= cap``) is a register from the
        # second burst on, reckoned as a burst is cut; the first burst compares the registers
        # the command left (a compare behind the command's own address arithmetic, which the
        # skid buffer passes through, made a path of 9 levels).
        last, last_next, first = Signal(name=f"{name}_last"), Signal(name=f"{name}_last_next"), Signal()
        cut = Signal(name=f"{name}_cut")
        m.d.comb += [
            last.eq(Mux(first, left <= cap, last_next)),
            length.eq(Mux(last, left, cap)),
            # Taking the next command as the current one's last burst goes keeps 1-beat
            # commands at one per cycle.
            cmd.ready.eq(~flush & (~active | (cut & last))),
        ]

        def bounds(new_left, new_room):
            return [left.eq(new_left), room.eq(new_room),
                    cap.eq(Mux(new_room < self.max_burst, new_room, self.max_burst))]

        with m.If(cut):
            m.d.sync += [addr.eq(addr + (length << shift)), first.eq(0)]
            # Not the last burst, so it was ``cap`` long: it ended at the page's end or
            # ``max_burst`` beats into the page.
            new_left, new_room = left - length, Mux(room == cap, page_beats, room - cap)
            m.d.sync += bounds(new_left, new_room)
            # ``new_left <= new_cap`` as two compares side by side, not one behind the other.
            m.d.sync += last_next.eq((new_left <= self.max_burst) & (new_left <= new_room))
            with m.If(last):
                m.d.sync += active.eq(0)
        with m.If(cmd.valid & cmd.ready):
            m.d.sync += [active.eq(cmd.payload.beats != 0), addr.eq(cmd.payload.addr), first.eq(1)]
            m.d.sync += bounds(cmd.payload.beats, page_beats - cmd.payload.addr[shift:12])
        return active, addr, length, last, cut, ~skid.i.ready

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        size = (self.beat_bytes - 1).bit_length()
        for ch in ("ar", "aw"):
            m.d.comb += [getattr(axi, f"{ch}size").eq(size), getattr(axi, f"{ch}burst").eq(Burst.INCR),
                         getattr(axi, f"{ch}cache").eq(_CACHE)]
        # The fault latch is a register and `flush` one OR behind it, so a fault reaches the
        # cut and handshake logic through one gate (and never in its own cycle).
        flush = Signal()
        m.d.comb += flush.eq(self.halt | self.error)
        rd_flight, r_bad, rd_ends = self._reads(m, flush)
        wr_pending, b_done, wr_addrs = self._writes(m, flush)
        m.d.comb += self.drained.eq((rd_flight == 0) & (wr_pending == 0))

        # The first fault, read before write when both come in one cycle.
        with m.If(~self.error):
            with m.If(r_bad):
                m.d.sync += [self.error.eq(1), self.error_write.eq(0), self.error_resp.eq(axi.rresp),
                             self.error_addr.eq(rd_ends.r_data[1:])]
            with m.Elif(b_done & axi.bresp.as_value()[1]):
                m.d.sync += [self.error.eq(1), self.error_write.eq(1), self.error_resp.eq(axi.bresp),
                             self.error_addr.eq(wr_addrs.r_data)]
        return m

    def _reads(self, m, flush):
        """The read channels. Bursts are counted from their cut until their last beat arrives,
        which bounds the bursts in flight; whether each one ends its command, and its address
        (for a fault), wait in ``rd_ends`` for it. Returns ``(rd_flight, r_bad, rd_ends)``: the
        bursts in flight, a faulty beat seen, and that queue (its head is the beat's burst)."""
        axi = self.axi
        rd_active, rd_addr, rd_len, rd_last, rd_cut, _ = self._splitter(m, self.rd_cmd, "rd", flush)
        m.submodules.rd_skid = rd_skid = SkidBuffer(self.rd_data.payload.shape())
        m.submodules.rd_ends = rd_ends = fifo.SyncFIFO(width=1 + self.addr_width, depth=self.max_outstanding)
        rd_flight = Signal(range(self.max_outstanding + 1))
        r_done = Signal()
        r_bad = Signal()
        m.d.comb += rd_cut.eq(rd_active & (~axi.arvalid | axi.arready) &
                              (rd_flight < self.max_outstanding) & ~flush)
        with m.If(rd_cut):
            m.d.sync += [axi.arvalid.eq(1), axi.araddr.eq(rd_addr), axi.arlen.eq(rd_len - 1)]
        with m.Elif(axi.arready):
            m.d.sync += axi.arvalid.eq(0)
        m.d.comb += [
            rd_ends.w_en.eq(rd_cut), rd_ends.w_data.eq(Cat(rd_last, rd_addr)),
            # SLVERR and DECERR have bit 1 set; EXOKAY (never asked for) would not.
            r_bad.eq(axi.rvalid & axi.rresp.as_value()[1]),
            # The beats pass a skid buffer, so RREADY is a register and not the consumer's ready.
            rd_skid.i.valid.eq(axi.rvalid & ~r_bad & ~flush),
            rd_skid.i.payload.data.eq(axi.rdata),
            # SyncFIFO reads without latency and R follows its AR by at least a cycle, so the
            # burst's entry is there when its data is.
            rd_skid.i.payload.last.eq(axi.rlast & rd_ends.r_data[0]),
            self.rd_data.valid.eq(rd_skid.o.valid & ~flush),
            self.rd_data.payload.eq(rd_skid.o.payload),
            rd_skid.o.ready.eq(self.rd_data.ready | flush),
            axi.rready.eq(rd_skid.i.ready | flush),
            r_done.eq(axi.rvalid & axi.rready & axi.rlast),
            rd_ends.r_en.eq(r_done),
        ]
        m.d.sync += rd_flight.eq(rd_flight + rd_cut - r_done)
        return rd_flight, r_bad, rd_ends

    def _writes(self, m, flush):
        """The write channels. A burst's length is queued for the W channel when it is cut, so
        write data never waits for AWREADY; ``wr_pending`` counts bursts from their cut to their
        B, and ``wr_addrs`` keeps their addresses for a fault. Returns ``(wr_pending, b_done,
        wr_addrs)``."""
        axi = self.axi
        wr_active, wr_addr, wr_len, _, wr_cut, wr_held = self._splitter(m, self.wr_cmd, "wr", flush)
        m.submodules.wr_lens = wr_lens = fifo.SyncFIFO(width=8, depth=self.max_outstanding)
        m.submodules.wr_addrs = wr_addrs = fifo.SyncFIFO(width=self.addr_width, depth=self.max_outstanding)
        # Write data waits in a buffer with a registered output, so the W channel's handshake
        # and burst count start at registers, not at whatever made the data upstream.
        m.submodules.wr_buffer = wr_buffer = fifo.SyncFIFOBuffered(width=len(self.wr_data.payload), depth=3)
        m.d.comb += [wr_buffer.w_en.eq(self.wr_data.valid), wr_buffer.w_data.eq(self.wr_data.payload),
                     self.wr_data.ready.eq(wr_buffer.w_rdy)]
        wr_pending = Signal(range(self.max_outstanding + 1))
        m.d.comb += wr_cut.eq(wr_active & (~axi.awvalid | axi.awready) &
                              (wr_pending < self.max_outstanding) & ~flush)
        with m.If(wr_cut):
            m.d.sync += [axi.awvalid.eq(1), axi.awaddr.eq(wr_addr), axi.awlen.eq(wr_len - 1)]
        with m.Elif(axi.awready):
            m.d.sync += axi.awvalid.eq(0)
        beat = Signal(8)
        w_last = Signal()
        # A real beat offered and not yet taken: AXI wants it unchanged until WREADY, flush or not.
        w_keep = Signal()
        w_blank = Signal()
        b_done = Signal()
        m.d.comb += [
            wr_lens.w_en.eq(wr_cut), wr_lens.w_data.eq(wr_len - 1),
            wr_addrs.w_en.eq(wr_cut), wr_addrs.w_data.eq(wr_addr),
            w_last.eq(beat == wr_lens.r_data),
            w_blank.eq(flush & ~w_keep),
            axi.wvalid.eq((wr_buffer.r_rdy | flush) & wr_lens.r_rdy),
            axi.wdata.eq(Mux(w_blank, 0, wr_buffer.r_data)),
            axi.wstrb.eq(Mux(w_blank, 0, (1 << self.beat_bytes) - 1)),
            axi.wlast.eq(w_last),
            wr_buffer.r_en.eq(axi.wready & wr_lens.r_rdy),
            axi.bready.eq(1),
            b_done.eq(axi.bvalid & axi.bready),
            wr_addrs.r_en.eq(b_done),
        ]
        with m.If(axi.wvalid & axi.wready):
            m.d.sync += [beat.eq(Mux(w_last, 0, beat + 1)), w_keep.eq(0)]
            m.d.comb += wr_lens.r_en.eq(w_last)
        with m.Elif(axi.wvalid & ~w_blank):
            m.d.sync += w_keep.eq(1)
        m.d.sync += wr_pending.eq(wr_pending + wr_cut - b_done)
        m.d.comb += self.wr_busy.eq(wr_held | wr_active | (wr_pending != 0))
        return wr_pending, b_done, wr_addrs
