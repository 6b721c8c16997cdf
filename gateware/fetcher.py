"""The weight-tile fetcher and its double buffer."""

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .dma import command_layout
from .phase import Fetch
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
    """Fetches weight tiles from DRAM into two halves of a buffer, one tile ahead of the array.

    A tile's read commands go out as soon as its half is free, while the other half's data may
    still be arriving: the DRAM latency then overlaps the previous transfer instead of adding
    to every tile. Fetches alternate halves (the sequencer flips ``half`` on each), and DRAM
    answers each port in order, so the half a port is receiving flips after each of its parts.

    Ports. The buffer is ``banks`` memories, one 16-byte bank of a tile row each, and a tile in
    DRAM is bank-major (``gateware/program.py``). With ``ports`` read ports, port ``p`` streams
    the contiguous range of banks :func:`port_banks` gives it, as one read command per tile
    (port 0 the tile's parameters first); each bank has one writer, so the ports never
    contend for a memory. A fetch is taken once every port has taken its command (each
    command is offered until its port takes it, the others' already taken staying so), and its
    half is full once every port's part has arrived. With one port the whole tile is one
    command, as it always was.

    A half is *full* from the end of its fetch until the column stage has used its parameters
    for the last time (``release``); the W reader may read it only until it has streamed the
    half's last tile (``spend``), so it never takes a stale tile for the next one.

    Parameters
    ----------
    cols : int
        Output channels of a tile (the MAC array's columns): a word of the buffer is one inner
        index's ``cols`` int8 weights.
    kmax : int
        Longest inner dimension in elements; a half holds ``kmax`` words.
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
        The DMA read channels, as ``gateware.dma.DMA`` names them, flipped. Port 0's beats of a
        fetch are its tile's :data:`~gateware.records.TileParams` records, then its banks'
        weights, bank after bank; another port's are its banks' weights.
    idle : Out(1)
        No fetch queued or in flight.
    readable : Out(2)
        Per half: full and not yet streamed by the W reader.
    release, spend : In(2)
        Per half, pulses: the column stage is done with it; the W reader is done with it.
    w_addr, w_en : In, w_data : Out(ArrayLayout(signed(8), max(cols, BEAT_BYTES)))
        The weight buffer's read port (one cycle of latency). A word is a whole tile row (``cols``
        int8, ``cols // BEAT_BYTES`` beats side by side in as many memories), or for ``cols``
        under a beat a beat holding ``BEAT_BYTES // cols`` rows; half ``h`` starts at address
        ``h * kmax`` rows (in beats for the narrow case).
    param_half, param_col : In, param : Out(TileParams)
        Channel ``param_col``'s record of the tile in half ``param_half``, read combinationally.
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
        self.half_depth = kmax // self.pack
        self.param_beats = cols * PARAM_BYTES // BEAT_BYTES
        super().__init__({
            "fetch": In(stream.Signature(Fetch)), "weights_base": In(ADDR_BITS),
            "rd_cmd": Out(stream.Signature(command_layout(ADDR_BITS))).array(ports),
            "rd_data": In(stream.Signature(data.StructLayout({"data": unsigned(8 * BEAT_BYTES),
                                                              "last": 1}))).array(ports),
            "idle": Out(1), "readable": Out(2), "release": In(2), "spend": In(2),
            "w_addr": In(range(2 * self.half_depth)), "w_en": In(1),
            "w_data": Out(data.ArrayLayout(signed(8), self.banks * BEAT_BYTES)),
            "param_half": In(1), "param_col": In(range(cols)), "param": Out(TileParams),
            "capture_gate": In(1), "gate_mult": Out(16), "gate_shift": Out(6),
        })

    def elaborate(self, platform):
        m = Module()
        C, banks, half_depth, P = self.cols, self.banks, self.half_depth, self.ports
        records_per_beat = BEAT_BYTES // PARAM_BYTES
        wbuf_wr = []
        for b in range(banks):
            m.submodules[f"wbuf{b}"] = wbuf = Memory(shape=data.ArrayLayout(signed(8), BEAT_BYTES),
                                                     depth=2 * half_depth, init=[])
            rd = wbuf.read_port()
            wbuf_wr.append(wbuf.write_port())
            m.d.comb += [rd.addr.eq(self.w_addr), rd.en.eq(self.w_en),
                         self.w_data.as_value()[b * 8 * BEAT_BYTES:(b + 1) * 8 * BEAT_BYTES].eq(rd.data)]
        m.submodules.pbuf = pbuf = Memory(shape=unsigned(8 * BEAT_BYTES), depth=2 * self.param_beats, init=[])
        pbuf_rd, pbuf_wr = pbuf.read_port(domain="comb"), pbuf.write_port()
        m.d.comb += [pbuf_rd.addr.eq(self.param_half * self.param_beats + self.param_col // records_per_beat),
                     self.param.eq(pbuf_rd.data.word_select(self.param_col % records_per_beat, TileParams.size))]

        tile_full, w_spent, fill_half = Signal(2), Signal(2), Signal(2)
        m.d.sync += [tile_full.eq((tile_full | fill_half) & ~self.release),
                     w_spent.eq((w_spent | self.spend) & ~fill_half)]
        m.d.comb += self.readable.eq(tile_full & ~w_spent)

        # Per half, the ports whose part of its fetch is still to come (issued or not yet).
        parts = [Signal(P, name=f"parts{h}") for h in range(2)]
        last_row = [Signal(16, name=f"last_row{h}") for h in range(2)]
        arrived = [Signal(P, name=f"arrived{h}") for h in range(2)]
        f_busy = Cat(*parts).any()
        cur, cur_valid, cur_done = Signal(Fetch), Signal(), Signal()
        m.d.comb += [self.fetch.ready.eq(~cur_valid), self.idle.eq(~self.fetch.valid & ~cur_valid & ~f_busy)]
        with m.If(self.fetch.valid & ~cur_valid):
            m.d.sync += [cur.eq(self.fetch.payload), cur_valid.eq(1)]
        with m.Elif(cur_done):
            m.d.sync += cur_valid.eq(0)
        claim = self._issue(m, tile_full, parts, cur, cur_valid, cur_done)
        for h in range(2):
            mine = claim & (cur.half == h)
            m.d.sync += parts[h].eq((parts[h] | Mux(mine, (1 << P) - 1, 0)) & ~arrived[h])
            with m.If(mine):
                m.d.sync += last_row[h].eq(cur.rows - 1)
            # Full once every port's part has arrived, the last of them in the cycle before.
            m.d.comb += fill_half[h].eq(arrived[h].any() & ~(parts[h] & ~arrived[h]).any())
        for p, (first, count) in enumerate(self.spans):
            self._receive(m, p, wbuf_wr[first:first + count], pbuf_wr if p == 0 else None, parts, last_row,
                          arrived)
        return m

    def _issue(self, m, tile_full, parts, f_t, f_valid, f_done):
        """Offer each port's command of the fetch held (``f_t`` while ``f_valid``; ``f_done``
        once every port has taken its command); returns the pulse that claims its half (the
        first cycle it is offered)."""
        P = self.ports
        claimed = Signal()        # the fetch at the head has claimed its half; commands going out
        issued, took = Signal(P), Signal(P)
        f_pending = Cat(parts[0].any(), parts[1].any())
        free = ~(tile_full | f_pending).bit_select(f_t.half, 1)
        go, claim = Signal(), Signal()
        m.d.comb += [go.eq(f_valid & (free | claimed)), claim.eq(go & ~claimed)]
        for p, (first, count) in enumerate(self.spans):
            cmd = self.rd_cmd[p]
            if P == 1:
                offset, beats = 0, f_t.beats
            elif p == 0:
                offset, beats = 0, self.param_beats + count * f_t.rows
            else:
                offset, beats = (self.param_beats + first * f_t.rows) * BEAT_BYTES, count * f_t.rows
            m.d.comb += [cmd.valid.eq(go & ~issued[p]), cmd.payload.addr.eq(self.weights_base + f_t.addr + offset),
                         cmd.payload.beats.eq(beats), took[p].eq(cmd.valid & cmd.ready)]
        done = (issued | took).all()
        m.d.comb += f_done.eq(go & done)
        with m.If(go):
            m.d.sync += [claimed.eq(~done), issued.eq(Mux(done, 0, issued | took))]
        return claim

    def _receive(self, m, p, banks, pbuf_wr, parts, last_row, arrived):
        """Port ``p``'s beats into its ``banks`` (write ports), and for port 0 the parameters
        into ``pbuf_wr`` first."""
        rd = self.rd_data[p]
        half = Signal(name=f"f_half{p}")
        row = Signal(range(self.half_depth + 1), name=f"f_row{p}")
        bank = Signal(range(len(banks)), name=f"f_bank{p}")
        beat = rd.payload.data
        m.d.comb += rd.ready.eq(parts[0][p] | parts[1][p])
        take = rd.valid & rd.ready
        weights = take
        if pbuf_wr is not None:
            # The parameters lead port 0's part; the first record carries the gate's (mult, shift).
            f_beat = Signal(range(self.param_beats + 1))
            with m.If(take & (f_beat < self.param_beats)):
                m.d.comb += [pbuf_wr.en.eq(1), pbuf_wr.addr.eq(half * self.param_beats + f_beat),
                             pbuf_wr.data.eq(beat)]
                m.d.sync += f_beat.eq(f_beat + 1)
                with m.If((f_beat == 0) & self.capture_gate):
                    first = TileParams(beat[:TileParams.size])
                    m.d.sync += [self.gate_mult.eq(first.mult), self.gate_shift.eq(first.shift)]
            weights = take & (f_beat == self.param_beats)
            with m.If(take & rd.payload.last):
                m.d.sync += f_beat.eq(0)
        with m.If(weights):
            # Bank after bank, each ``rows`` beats; counters, not a divider, say where.
            for j, wr in enumerate(banks):
                m.d.comb += [wr.en.eq(bank == j), wr.data.eq(beat), wr.addr.eq(half * self.half_depth + row)]
            if len(banks) > 1:
                at_end = row == Mux(half, last_row[1], last_row[0])
                m.d.sync += [row.eq(Mux(at_end, 0, row + 1)), bank.eq(bank + at_end)]
            else:
                m.d.sync += row.eq(row + 1)
        # A part's arrival is registered: the read beats' handshake (behind the DMA's fault
        # flush) then stops at a register instead of running on into the parts still to come
        # and the half's fill (9 levels on the board top). The port stays ready a cycle longer,
        # which takes only beats of commands already issued, as ever.
        for h in range(2):
            m.d.sync += arrived[h][p].eq(take & rd.payload.last & (half == h))
        with m.If(take & rd.payload.last):
            m.d.sync += [half.eq(~half), row.eq(0), bank.eq(0)]
