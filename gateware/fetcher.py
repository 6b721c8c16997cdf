"""The weight-tile fetcher and its double buffer."""

from amaranth import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .dma import command_layout
from .phase import SLOTS, Fetch
from .records import ADDR_BITS, BEAT_BYTES, PARAM_BYTES, TileParams

__all__ = ["TileFetcher", "port_banks"]


def port_banks(banks, ports):
    """The banks each read port streams: ``[(first, count)]``, one contiguous range per port.

    Contiguous ranges keep a port's share of a bank-major tile (``gateware/program.py``) one
    address range, so it goes out as one read command. Ranges differ by at most one bank; the
    longer ones go to the last ports, since port 0 also reads the tile's parameters.
    """
    if not 1 <= ports <= banks:
        raise ValueError(f"{ports} ports cannot share {banks} banks")
    base, extra = divmod(banks, ports)
    spans, first = [], 0
    for p in range(ports):
        count = base + (p >= ports - extra)
        spans.append((first, count))
        first += count
    return spans


class TileFetcher(wiring.Component):
    """Fetches weight tiles from DRAM into the slots of a buffer, up to :data:`SLOTS` tiles ahead.

    A tile's read commands go out as soon as its slot is free, while earlier slots' data may
    still be arriving: the DRAM latency then overlaps the previous transfers instead of adding
    to every tile. Fetches take the slots in turn (the sequencer counts ``slot`` on with each),
    and DRAM answers each port in order, so the slot a port is receiving moves on after each of
    its parts. Four slots rather than two let a fetch start before the tile two back has left
    the column stage, so DRAM-bound phases stream without a gap at each tile.

    Ports. The buffer is ``banks`` memories, one 16-byte bank of a tile row each, with a small
    parameter memory each, and a tile in DRAM is bank-major, each bank behind its channels'
    records (``gateware/program.py``). With ``ports`` read ports, port ``p`` streams the
    contiguous range of banks :func:`port_banks` gives it, as one read command per tile; each
    bank has one writer, so the ports never contend for a memory. A fetch is taken once every
    port has taken its command (each command is offered until its port takes it, the others'
    already taken staying so), and its slot is full once every port's part has arrived. With
    one port the whole tile is one command.

    A slot is *full* from the end of its fetch until the column stage has used its parameters
    for the last time (``release``); the W reader may read it only until it has streamed the
    slot's last tile (``spend``), so it never takes a stale tile for the next one.

    Parameters
    ----------
    cols : int
        Output channels of a tile (the MAC array's columns): a word of the buffer is one inner
        index's ``cols`` int8 weights.
    kmax : int
        Longest inner dimension in elements; a slot holds ``kmax`` words.
    ports : int
        Read ports, at most the banks (``cols // 16``) unless 1.

    Attributes
    ----------
    fetch : In(stream.Signature(Fetch))
        Taken into a register whenever the one held there (the fetch being issued) has had its
        last read command taken: ``fetch.ready`` is that register's emptiness, so no claim or
        command handshake reaches the queue in front.
    weights_base : In(ADDR_BITS)
    rd_cmd, rd_data : arrays of ``ports``
        The DMA read channels, as ``gateware.dma.DMA`` names them, flipped. A port's beats of a
        fetch are, bank after bank of its range, the bank's
        :data:`~gateware.records.TileParams` records, then its weights.
    idle : Out(1)
        No fetch queued or in flight.
    readable : Out(SLOTS)
        Per slot: full and not yet streamed by the W reader.
    release, spend : In(SLOTS)
        Per slot, pulses: the column stage is done with it; the W reader is done with it.
    w_addr, w_en : In, w_data : Out(ArrayLayout(signed(8), max(cols, BEAT_BYTES)))
        The weight buffer's read port (one cycle of latency). A word is a whole tile row (``cols``
        int8, ``cols // BEAT_BYTES`` beats side by side in as many memories), or for ``cols``
        under a beat a beat holding ``BEAT_BYTES // cols`` rows; slot ``s`` starts at address
        ``s * kmax`` rows (in beats for the narrow case).
    param_slot, param_col : In, param : Out(TileParams)
        Channel ``param_col``'s record of the tile in slot ``param_slot``, read combinationally.
    capture_gate : In(1)
        Keep the first record's (mult, shift) of each tile in ``gate_mult``, ``gate_shift``:
        the gate's requantisation is one (mult, shift) per task, and every record holds it.

    Throughput: one DRAM beat per cycle per port into the buffer.
    """

    def __init__(self, cols, kmax, ports=1):
        self.cols, self.ports = cols, ports
        # A tile row spans ``banks`` beats (one memory each), or a beat holds ``pack`` rows.
        self.banks, self.pack = max(1, cols // BEAT_BYTES), max(1, BEAT_BYTES // cols)
        self.spans = port_banks(self.banks, ports)
        self.slot_depth = kmax // self.pack
        # The records of one bank's channels, in beats.
        self.bank_channels = min(cols, BEAT_BYTES)
        self.param_beats = self.bank_channels * PARAM_BYTES // BEAT_BYTES
        super().__init__({
            "fetch": In(stream.Signature(Fetch)), "weights_base": In(ADDR_BITS),
            "rd_cmd": Out(stream.Signature(command_layout(ADDR_BITS))).array(ports),
            "rd_data": In(stream.Signature(data.StructLayout({"data": unsigned(8 * BEAT_BYTES),
                                                              "last": 1}))).array(ports),
            "idle": Out(1), "readable": Out(SLOTS), "release": In(SLOTS), "spend": In(SLOTS),
            "w_addr": In(range(SLOTS * self.slot_depth)), "w_en": In(1),
            "w_data": Out(data.ArrayLayout(signed(8), self.banks * BEAT_BYTES)),
            "param_slot": In(range(SLOTS)), "param_col": In(range(cols)), "param": Out(TileParams),
            "capture_gate": In(1), "gate_mult": Out(16), "gate_shift": Out(6),
        })

    def elaborate(self, platform):
        m = Module()
        banks, slot_depth, P = self.banks, self.slot_depth, self.ports
        records_per_beat = BEAT_BYTES // PARAM_BYTES
        wbuf_wr, pbuf_wr, pbuf_data = [], [], []
        for b in range(banks):
            m.submodules[f"wbuf{b}"] = wbuf = Memory(shape=data.ArrayLayout(signed(8), BEAT_BYTES),
                                                     depth=SLOTS * slot_depth, init=[])
            rd = wbuf.read_port()
            wbuf_wr.append(wbuf.write_port())
            m.d.comb += [rd.addr.eq(self.w_addr), rd.en.eq(self.w_en),
                         self.w_data.as_value()[b * 8 * BEAT_BYTES:(b + 1) * 8 * BEAT_BYTES].eq(rd.data)]
            m.submodules[f"pbuf{b}"] = pbuf = Memory(shape=unsigned(8 * BEAT_BYTES),
                                                     depth=SLOTS * self.param_beats, init=[])
            prd = pbuf.read_port(domain="comb")
            pbuf_wr.append(pbuf.write_port())
            within = self.param_col % self.bank_channels
            m.d.comb += prd.addr.eq(self.param_slot * self.param_beats + within // records_per_beat)
            pbuf_data.append(prd.data.word_select(within % records_per_beat, TileParams.size))
        m.d.comb += self.param.eq(Array(pbuf_data)[self.param_col // self.bank_channels] if banks > 1
                                  else pbuf_data[0])

        tile_full, w_spent, fill_slot = Signal(SLOTS), Signal(SLOTS), Signal(SLOTS)
        m.d.sync += [tile_full.eq((tile_full | fill_slot) & ~self.release),
                     w_spent.eq((w_spent | self.spend) & ~fill_slot)]
        m.d.comb += self.readable.eq(tile_full & ~w_spent)

        # Per slot, the ports whose part of its fetch is still to come (issued or not yet).
        parts = [Signal(P, name=f"parts{h}") for h in range(SLOTS)]
        last_row = [Signal(16, name=f"last_row{h}") for h in range(SLOTS)]
        arrived = [Signal(P, name=f"arrived{h}") for h in range(SLOTS)]
        f_busy = Cat(*parts).any()
        cur, cur_valid, cur_done = Signal(Fetch), Signal(), Signal()
        m.d.comb += [self.fetch.ready.eq(~cur_valid), self.idle.eq(~self.fetch.valid & ~cur_valid & ~f_busy)]
        with m.If(self.fetch.valid & ~cur_valid):
            m.d.sync += [cur.eq(self.fetch.payload), cur_valid.eq(1)]
        with m.Elif(cur_done):
            m.d.sync += cur_valid.eq(0)
        claim = self._issue(m, tile_full, parts, cur, cur_valid, cur_done)
        for h in range(SLOTS):
            mine = claim & (cur.slot == h)
            m.d.sync += parts[h].eq((parts[h] | Mux(mine, (1 << P) - 1, 0)) & ~arrived[h])
            with m.If(mine):
                m.d.sync += last_row[h].eq(cur.rows - 1)
            # Full once every port's part has arrived, the last of them in the cycle before.
            m.d.comb += fill_slot[h].eq(arrived[h].any() & ~(parts[h] & ~arrived[h]).any())
        for p, (first, count) in enumerate(self.spans):
            self._receive(m, p, wbuf_wr[first:first + count], pbuf_wr[first:first + count], parts, last_row,
                          arrived)
        return m

    def _issue(self, m, tile_full, parts, f_t, f_valid, f_done):
        """Offer each port's command of the fetch held (``f_t`` while ``f_valid``; ``f_done``
        once every port has taken its command); returns the pulse that claims its slot (the
        first cycle it is offered)."""
        P = self.ports
        claimed = Signal()        # the fetch at the head has claimed its slot; commands going out
        issued, took = Signal(P), Signal(P)
        f_pending = Cat(*(part.any() for part in parts))
        free = ~(tile_full | f_pending).bit_select(f_t.slot, 1)
        go, claim = Signal(), Signal()
        m.d.comb += [go.eq(f_valid & (free | claimed)), claim.eq(go & ~claimed)]
        for p, (first, count) in enumerate(self.spans):
            cmd = self.rd_cmd[p]
            if P == 1:
                offset, beats = 0, f_t.beats
            else:
                # Each bank of the range is its records and its rows.
                offset, beats = first * (self.param_beats + f_t.rows) * BEAT_BYTES, count * (self.param_beats + f_t.rows)
            m.d.comb += [cmd.valid.eq(go & ~issued[p]), cmd.payload.addr.eq(self.weights_base + f_t.addr + offset),
                         cmd.payload.beats.eq(beats), took[p].eq(cmd.valid & cmd.ready)]
        done = (issued | took).all()
        m.d.comb += f_done.eq(go & done)
        with m.If(go):
            m.d.sync += [claimed.eq(~done), issued.eq(Mux(done, 0, issued | took))]
        return claim

    def _receive(self, m, p, banks, params, parts, last_row, arrived):
        """Port ``p``'s beats into its ``banks`` and their parameter memories ``params`` (write
        ports): per bank its records, then its rows."""
        rd = self.rd_data[p]
        slot = Signal(range(SLOTS), name=f"f_slot{p}")
        row = Signal(range(self.slot_depth + 1), name=f"f_row{p}")
        bank = Signal(range(len(banks)), name=f"f_bank{p}")
        f_beat = Signal(range(self.param_beats + 1), name=f"f_beat{p}")
        beat = rd.payload.data
        m.d.comb += rd.ready.eq(Cat(*(part[p] for part in parts)).any())
        take = rd.valid & rd.ready
        with m.If(take & (f_beat < self.param_beats)):
            for j, wr in enumerate(params):
                m.d.comb += [wr.en.eq(bank == j), wr.addr.eq(slot * self.param_beats + f_beat), wr.data.eq(beat)]
            m.d.sync += f_beat.eq(f_beat + 1)
            if p == 0:
                # The first record of the tile (port 0's first beat) carries the gate's (mult, shift).
                with m.If((f_beat == 0) & (bank == 0) & self.capture_gate):
                    first = TileParams(beat[:TileParams.size])
                    m.d.sync += [self.gate_mult.eq(first.mult), self.gate_shift.eq(first.shift)]
        with m.If(take & (f_beat == self.param_beats)):
            # Bank after bank, each its records and ``rows`` beats; counters, not a divider, say where.
            for j, wr in enumerate(banks):
                m.d.comb += [wr.en.eq(bank == j), wr.data.eq(beat), wr.addr.eq(slot * self.slot_depth + row)]
            if len(banks) > 1:
                at_end = row == Array(last_row)[slot]
                m.d.sync += [row.eq(Mux(at_end, 0, row + 1)), bank.eq(bank + at_end)]
                with m.If(at_end):
                    m.d.sync += f_beat.eq(0)
            else:
                m.d.sync += row.eq(row + 1)
        # A part's arrival is registered: the read beats' handshake (behind the DMA's fault
        # flush) then stops at a register instead of running on into the parts still to come
        # and the slot's fill (9 levels on the board top). The port stays ready a cycle longer,
        # which takes only beats of commands already issued, as ever.
        for h in range(SLOTS):
            m.d.sync += arrived[h][p].eq(take & rd.payload.last & (slot == h))
        with m.If(take & rd.payload.last):
            m.d.sync += [slot.eq(slot + 1), row.eq(0), bank.eq(0), f_beat.eq(0)]
