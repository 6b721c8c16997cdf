"""The weight-tile fetcher and its double buffer."""

from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .dma import command_layout
from .phase import Fetch
from .records import ADDR_BITS, BEAT_BYTES, PARAM_BYTES, TileParams

__all__ = ["TileFetcher"]


class TileFetcher(wiring.Component):
    """Fetches weight tiles from DRAM into two halves of a buffer, one tile ahead of the array.

    A tile's read command goes out as soon as its half is free, while the other half's data may
    still be arriving: the DRAM latency then overlaps the previous transfer instead of adding
    to every tile. Fetches alternate halves (the sequencer flips ``half`` on each), and DRAM
    answers in order, so the half being received flips after each tile.

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

    Attributes
    ----------
    fetch : In(stream.Signature(Fetch))
        Taken when its read command is.
    weights_base : In(ADDR_BITS)
    rd_cmd, rd_data
        The DMA read channel, as ``gateware.dma.DMA`` names it, flipped. A fetch's beats are its
        tile's :data:`~gateware.records.TileParams` records, then its weights.
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

    Throughput: one DRAM beat per cycle into the buffer.
    """

    def __init__(self, cols, kmax):
        self.cols = cols
        # A tile row spans ``banks`` beats (one memory each), or a beat holds ``pack`` rows.
        self.banks, self.pack = max(1, cols // BEAT_BYTES), max(1, BEAT_BYTES // cols)
        self.half_depth = kmax // self.pack
        super().__init__({
            "fetch": In(stream.Signature(Fetch)), "weights_base": In(ADDR_BITS),
            "rd_cmd": Out(stream.Signature(command_layout(ADDR_BITS))),
            "rd_data": In(stream.Signature(data.StructLayout({"data": unsigned(8 * BEAT_BYTES), "last": 1}))),
            "idle": Out(1), "readable": Out(2), "release": In(2), "spend": In(2),
            "w_addr": In(range(2 * self.half_depth)), "w_en": In(1),
            "w_data": Out(data.ArrayLayout(signed(8), self.banks * BEAT_BYTES)),
            "param_half": In(1), "param_col": In(range(cols)), "param": Out(TileParams),
            "capture_gate": In(1), "gate_mult": Out(16), "gate_shift": Out(6),
        })

    def elaborate(self, platform):
        m = Module()
        C, banks, half_depth = self.cols, self.banks, self.half_depth
        records_per_beat = BEAT_BYTES // PARAM_BYTES
        param_beats = C // records_per_beat
        wbuf_rd, wbuf_wr = [], []
        for b in range(banks):
            m.submodules[f"wbuf{b}"] = wbuf = Memory(shape=data.ArrayLayout(signed(8), BEAT_BYTES),
                                                     depth=2 * half_depth, init=[])
            wbuf_rd.append(wbuf.read_port())
            wbuf_wr.append(wbuf.write_port())
            m.d.comb += [wbuf_rd[b].addr.eq(self.w_addr), wbuf_rd[b].en.eq(self.w_en),
                         self.w_data.as_value()[b * 8 * BEAT_BYTES:(b + 1) * 8 * BEAT_BYTES].eq(wbuf_rd[b].data)]
        m.submodules.pbuf = pbuf = Memory(shape=unsigned(8 * BEAT_BYTES), depth=2 * param_beats, init=[])
        pbuf_rd, pbuf_wr = pbuf.read_port(domain="comb"), pbuf.write_port()
        m.d.comb += [pbuf_rd.addr.eq(self.param_half * param_beats + self.param_col // records_per_beat),
                     self.param.eq(pbuf_rd.data.word_select(self.param_col % records_per_beat, TileParams.size))]

        tile_full, w_spent, fill_half = Signal(2), Signal(2), Signal(2)
        m.d.sync += [tile_full.eq((tile_full | fill_half) & ~self.release),
                     w_spent.eq((w_spent | self.spend) & ~fill_half)]
        m.d.comb += self.readable.eq(tile_full & ~w_spent)

        f_beat, f_half = Signal(16), Signal()
        f_bank, f_row = Signal(range(banks)), Signal(range(half_depth + 1))
        f_pending = Signal(2)     # per half: a read command issued, its last beat not yet received
        f_issued, f_received = Signal(2), Signal(2)
        f_busy = f_pending.any()
        m.d.comb += self.idle.eq(~self.fetch.valid & ~f_busy)
        m.d.sync += f_pending.eq((f_pending | f_issued) & ~f_received)
        f_t = self.fetch.payload
        free = ~(tile_full | f_pending).bit_select(f_t.half, 1)
        with m.If(self.fetch.valid & free):
            m.d.comb += [self.rd_cmd.valid.eq(1), self.rd_cmd.payload.addr.eq(self.weights_base + f_t.addr),
                         self.rd_cmd.payload.beats.eq(f_t.beats)]
            with m.If(self.rd_cmd.ready):
                m.d.comb += [self.fetch.ready.eq(1), f_issued.eq(1 << f_t.half)]
        beat = self.rd_data.payload.data
        m.d.comb += self.rd_data.ready.eq(f_busy)
        with m.If(f_busy & self.rd_data.valid):
            m.d.sync += f_beat.eq(f_beat + 1)
            with m.If(f_beat < param_beats):
                m.d.comb += [pbuf_wr.en.eq(1), pbuf_wr.addr.eq(f_half * param_beats + f_beat), pbuf_wr.data.eq(beat)]
                with m.If((f_beat == 0) & self.capture_gate):
                    first = TileParams(beat[:TileParams.size])
                    m.d.sync += [self.gate_mult.eq(first.mult), self.gate_shift.eq(first.shift)]
            with m.Else():
                # The weight beats fill a row bank by bank; counters, not a divider, say where.
                for b in range(banks):
                    m.d.comb += [wbuf_wr[b].en.eq(f_bank == b), wbuf_wr[b].data.eq(beat),
                                 wbuf_wr[b].addr.eq(f_half * half_depth + f_row)]
                with m.If(f_bank == banks - 1):
                    m.d.sync += [f_bank.eq(0), f_row.eq(f_row + 1)]
                with m.Else():
                    m.d.sync += f_bank.eq(f_bank + 1)
            with m.If(self.rd_data.payload.last):
                m.d.sync += [f_beat.eq(0), f_half.eq(~f_half), f_bank.eq(0), f_row.eq(0)]
                m.d.comb += [fill_half.eq(1 << f_half), f_received.eq(1 << f_half)]
        return m
