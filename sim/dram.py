"""A DRAM behind one or more AXI4 subordinate ports, for both simulation engines.

:class:`DRAMModel` serves a design's AXI4 manager ports in Amaranth's simulator;
``sim/dram_model.cpp`` is the same model for the Verilator engine, attached with
:func:`attach_verilator_dram`. Both have the same timing, cycle for cycle.

One memory answers every port, as the Zynq PS's one DDR controller answers its four HP ports.
Each port has its own bursts, in order on that port, and its own pacing; a shared bucket caps
all ports together.

By default the memory is *polite*:

* AR and AW are always ready. A read burst's first beat is valid ``latency`` cycles after the
  cycle of its AR handshake; bursts follow one another without gaps, in order.
* Read beats are paced per port by a token bucket: every cycle adds ``beats_per_cycle`` tokens
  (in units of 1/65536), a beat costs one, and while no beat can go out (none due, or one held
  by RREADY) the bucket keeps at most what lets one beat go the next cycle: ``1.0`` is a beat
  every cycle, ``0.5`` every other, also after a stall. A beat once valid stays valid until
  RREADY takes it.
* The memory's bandwidth is a second bucket, shared by the ports: every cycle adds
  ``bytes_per_cycle`` bytes' worth of beats (in the same units), and each read beat any port
  sends costs one. When more ports could send a beat than the bucket holds, the ports are served
  round-robin, starting after the last port served; a port left out sends nothing this cycle
  and keeps one beat banked in its own bucket. When every port that could send did, the shared
  bucket too keeps at most what lets one beat go the next cycle, so over any ``n`` cycles all
  ports together read at most ``n * bytes_per_cycle`` bytes plus one beat. The default, 51.2
  bytes per cycle, is 15.36 GB/s at 300 MHz: the ZCU104's PS DDR4 (64-bit DDR4-2400: 2400 MT/s x
  8 bytes = 19.2 GB/s peak) at an assumed 80 % sustained (the project's planning figure, not a
  measurement). With one 16-byte port it never binds. Writes are not charged to it (a frame
  writes its features and routing, well under 1 % of its traffic).
* W is ready from the cycle after its burst's AW handshake, one beat per cycle, bytes stored as
  WSTRB says. The B response is valid the cycle after the last beat, one at a time, in order.
* Every response is OKAY.
* The counters ``bytes_read``/``bytes_written`` count whole beats moved on the bus (all ports);
  ``read_bursts``/``write_bursts`` count address handshakes.

An :class:`Impolite` setting makes it behave like an interconnect and DDR controller under load,
with every random choice drawn from one seeded splitmix64 generator that both models step in
the same order (a draw happens only where its option is on, so the polite model draws nothing):

* each cycle AR, AW and W are not ready with probabilities ``ar_drop``, ``aw_drop``,
  ``w_drop`` (W only while a burst's address has been taken, as in the polite model);
* a read burst's latency is drawn at its AR handshake, uniformly from ``latency`` to
  ``latency_max``; bursts still come back in order;
* every ``refresh_period`` cycles the memory refreshes for ``refresh_length`` cycles: no new
  read beat is made valid and W is not ready;
* all of this runs on a clock of its own that counts only the cycles in which the bus is in use
  (a transfer offered or a burst outstanding): while the bus is idle nothing is drawn and the
  refresh timer stands still, so the host's register accesses and polling (which take different
  numbers of cycles under the two engines) never shift a frame's random choices;
* a read beat that could go out is held back a cycle with probability ``r_gap`` (before the
  shared bucket is asked);
* bursts that touch ``error_range`` are answered ``error_resp`` (SLVERR or DECERR): every beat of
  such a read carries it on RRESP (with the memory's data), a write gets it on BRESP and stores
  nothing.

Every option acts on each port on its own (each draws its own choices), except refresh, which
stops the whole memory, and ``error_range``, which holds for all ports. Per clock edge the draws
come in this order: for each port in turn a read latency (at an AR handshake) and the R gap;
then for each port in turn AR ready, AW ready and W ready for the next cycle.

The model checks the protocol the accelerator must keep, on every port, and raises (pysim) or records (C++)
:class:`AXIProtocolError` on a burst that crosses a 4 KiB boundary, a misaligned address,
AxSIZE other than the bus width, a burst type other than INCR, an access past the memory's
end, WLAST on the wrong beat, or an AR, AW or W transfer that is withdrawn or changed while it
waits for READY. A rejected burst is not served.

For fault tests it also notes ``error_cycle``, the first cycle an error response was on R or B
(``None`` until then), and ``late_writes``, the write beats with any strobe set that were first
offered after that cycle: a manager that stops writing on a fault keeps it at 0.
"""

import ctypes
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from amaranth.hdl import Value

__all__ = ["AXIProtocolError", "DRAMModel", "Impolite", "REGIONS", "VerilatorDRAM", "attach_verilator_dram",
           "VERILATOR_OPTIONS", "CPP_SOURCE", "SLVERR", "DECERR", "DEFAULT_BYTES_PER_CYCLE"]

_PAGE = 4096
_INCR = 1
_ONE = 1 << 16      # a read beat's cost in tokens
_MASK = (1 << 64) - 1
#: The frame's DRAM regions an ``Impolite.error_range`` may name.
REGIONS = ("weights", "image", "output")
#: RRESP/BRESP codes the model can answer with.
SLVERR, DECERR = 2, 3


def _tokens(beats_per_cycle):
    """Tokens added per cycle: integers, so that both models pace beats identically."""
    return max(1, int(beats_per_cycle * _ONE + 0.5))


def _shared_tokens(bytes_per_cycle, beat):
    """Tokens the shared bucket gains per cycle (an integer, handed to the C++ model as such)."""
    return max(1, int(bytes_per_cycle * _ONE / beat + 0.5))


#: The shared bucket's default, bytes per 300 MHz cycle: the ZCU104's PS DDR4 is 64-bit DDR4-2400,
#: 2400 MT/s x 8 bytes = 19.2 GB/s peak; at an assumed 80 % sustained (an assumption, not a
#: measurement) 15.36 GB/s, which is 51.2 bytes per cycle at 300 MHz.
DEFAULT_BYTES_PER_CYCLE = 51.2
#: The C++ model, for ``VerilatorModel(extra_sources=...)``.
CPP_SOURCE = Path(__file__).with_name("dram_model.cpp")


class AXIProtocolError(RuntimeError):
    """The design broke a rule of the AXI4 protocol, or addressed memory that does not exist."""


@dataclass(frozen=True)
class Impolite:
    """How far the DRAM model departs from a polite memory (the module docstring says how).

    The defaults are polite: a model given ``Impolite()`` behaves, cycle for cycle, as one given
    nothing.

    Parameters
    ----------
    seed : int
        Seed of the random choices (any integer; taken modulo 2**64).
    ar_drop, aw_drop, w_drop : float
        Probability, each cycle, that AR / AW / W is not ready; in ``[0, 1)``.
    r_gap : float
        Probability that a read beat which could go out is held back a cycle; in ``[0, 1)``.
    latency_max : int, optional
        Read latency is drawn per burst from ``latency..latency_max`` (the model's ``latency``
        is the low end); ``None`` keeps it fixed.
    refresh_period, refresh_length : int
        Every ``refresh_period`` cycles, ``refresh_length`` cycles without new read beats or
        WREADY; 0 and 0 for none. The length must be shorter than the period.
    error_range : (int, int) or str, optional
        Byte addresses ``[lo, hi)``: a burst touching them is answered ``error_resp``. The frame
        runner (``sim.accelerator.simulate_frames``) also takes a region's name, ``"weights"``,
        ``"image"`` or ``"output"``, and replaces it by the region's addresses.
    error_resp : int
        :data:`SLVERR` (2) or :data:`DECERR` (3).
    """

    seed: int = 1
    ar_drop: float = 0.0
    aw_drop: float = 0.0
    w_drop: float = 0.0
    r_gap: float = 0.0
    latency_max: int = None
    refresh_period: int = 0
    refresh_length: int = 0
    error_range: tuple = None
    error_resp: int = SLVERR

    def check(self, latency, *, names_ok=False):
        """Raise ``ValueError`` for settings that make no sense with read latency ``latency``
        (``names_ok``: an ``error_range`` may still be a region's name)."""
        for name in ("ar_drop", "aw_drop", "w_drop", "r_gap"):
            p = getattr(self, name)
            if not (isinstance(p, (int, float)) and 0 <= p < 1):
                raise ValueError(f"{name} is a probability in [0, 1) (1 would never let a transfer "
                                 f"through), not {p!r}")
        if self.latency_max is not None and self.latency_max < latency:
            raise ValueError(f"read latency range {latency}..{self.latency_max} is empty")
        if self.refresh_period < 0 or self.refresh_length < 0:
            raise ValueError(f"refresh period and length must not be negative, not "
                             f"{self.refresh_period!r} and {self.refresh_length!r}")
        if self.refresh_length and self.refresh_length >= self.refresh_period:
            raise ValueError(f"a refresh of {self.refresh_length} cycles every {self.refresh_period} "
                             f"cycles leaves no time to serve: the length must be below the period")
        if isinstance(self.error_range, str):
            if not names_ok or self.error_range not in REGIONS:
                raise ValueError(f"error range {self.error_range!r} is not a pair of addresses"
                                 + (f" or one of {', '.join(REGIONS)}" if names_ok else ""))
        elif self.error_range is not None:
            lo, hi = self.error_range
            if not 0 <= lo < hi:
                raise ValueError(f"error range [{lo:#x}, {hi:#x}) is empty or negative")
        if self.error_resp not in (SLVERR, DECERR):
            raise ValueError(f"error_resp must be SLVERR ({SLVERR}) or DECERR ({DECERR}), not "
                             f"{self.error_resp!r}")

    def thresholds(self):
        """The probabilities as 32-bit thresholds: a draw's high half below one is a hit."""
        return tuple(int(getattr(self, name) * (1 << 32))
                     for name in ("ar_drop", "aw_drop", "w_drop", "r_gap"))


class _SplitMix64:
    """splitmix64 (Steele, Lea, Flood 2014), stepped exactly as ``dram_model.cpp`` steps it."""

    def __init__(self, seed):
        self.state = seed & _MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return (z ^ (z >> 31)) >> 32      # the high half: the better mixed bits


def _check_params(size, data_width, latency, beats_per_cycle, impolite, bytes_per_cycle=DEFAULT_BYTES_PER_CYCLE):
    if size < 1:
        raise ValueError(f"DRAM size must be positive, not {size!r}")
    if data_width not in {8 << i for i in range(8)}:
        raise ValueError(f"data width must be a power of two from 8 to 1024, not {data_width!r}")
    if latency < 1:
        raise ValueError(f"read latency must be at least 1 cycle, not {latency!r}")
    if not 0 < beats_per_cycle <= 1:
        raise ValueError(f"beats_per_cycle must lie in (0, 1], not {beats_per_cycle!r}")
    if not (isinstance(bytes_per_cycle, (int, float)) and 0 < bytes_per_cycle < 1e6):
        raise ValueError(f"bytes_per_cycle must be a positive number of bytes, not {bytes_per_cycle!r}")
    if impolite is not None:
        if not isinstance(impolite, Impolite):
            raise TypeError(f"impolite must be an Impolite, not {impolite!r}")
        impolite.check(latency)


def _check_range(what, addr, n, size):
    if addr < 0 or n < 0 or addr + n > size:
        raise ValueError(f"{what} of {n} bytes at {addr:#x} is outside the {size}-byte DRAM")


class DRAMModel:
    """Byte-addressed memory with AXI4 subordinate ports for Amaranth's simulator.

    Timing and checks are described in the module docstring. The ports have no ID signals (all
    transfers of a port in order); :meth:`add_to` says how many there are.

    Parameters
    ----------
    size : int
        Bytes of memory, initially zero.
    data_width : int
        AXI data width in bits (the port's width must match).
    latency : int
        Cycles from a read burst's AR handshake to its first valid beat, at least 1 (the low end
        of the range when ``impolite.latency_max`` is set).
    beats_per_cycle : float
        Sustained read beats per cycle of each port, ``0 < beats_per_cycle <= 1``.
    bytes_per_cycle : float
        Read bytes per cycle of all ports together (the shared bucket); the default,
        :data:`DEFAULT_BYTES_PER_CYCLE` (51.2), is the PS DDR4's sustained rate at 300 MHz.
    impolite : Impolite, optional
        Back-pressure, latency jitter, refresh stalls, error responses; polite without.

    Attributes
    ----------
    size, data_width, latency, beats_per_cycle, bytes_per_cycle, impolite
        As given.
    mem : bytearray
        The contents (:meth:`write` and :meth:`read` check bounds; this does not).
    bytes_read, bytes_written : int
        Bytes moved by completed R and W beats (whole beats, whatever the strobes).
    read_bursts, write_bursts : int
        AR and AW handshakes accepted.
    read_log : list of (int, int)
        Every accepted read burst as ``(byte address, bytes)``, in order: what a test needs to
        tell which weights were fetched, and how often.
    cycle : int
        Clock edges served.
    error_cycle : int or None
        The first cycle an error response was offered on R or B.
    late_writes : int
        Write beats with strobes set, first offered after ``error_cycle``.
    """

    def __init__(self, size, *, data_width=128, latency=40, beats_per_cycle=1.0,
                 bytes_per_cycle=DEFAULT_BYTES_PER_CYCLE, impolite=None):
        _check_params(size, data_width, latency, beats_per_cycle, impolite, bytes_per_cycle)
        self.size, self.data_width = size, data_width
        self.latency, self.beats_per_cycle, self.bytes_per_cycle = latency, beats_per_cycle, bytes_per_cycle
        self.impolite = impolite
        self.beat = data_width // 8
        self.mem = bytearray(size)
        self.bytes_read = self.bytes_written = self.read_bursts = self.write_bursts = 0
        self.read_log = []
        self.cycle = 0
        self.error_cycle = None
        self.late_writes = 0

    def write(self, addr, blob):
        """Store ``blob`` (bytes-like or a uint8 array) at byte ``addr``."""
        view = memoryview(blob).cast("B")
        _check_range("write", addr, view.nbytes, self.size)
        self.mem[addr:addr + view.nbytes] = view

    def read(self, addr, n):
        """The ``n`` bytes at byte ``addr``."""
        _check_range("read", addr, n, self.size)
        return bytes(self.mem[addr:addr + n])

    def _check_burst(self, kind, addr, beats, size, burst):
        if burst != _INCR:
            raise AXIProtocolError(f"{kind} burst at {addr:#x}: burst type {burst} is not INCR (1)")
        if 1 << size != self.beat:
            raise AXIProtocolError(f"{kind} burst at {addr:#x}: AxSIZE {size} ({1 << size} bytes) "
                                   f"is not the {self.beat}-byte bus width")
        if addr % self.beat:
            raise AXIProtocolError(f"{kind} burst at {addr:#x} is not aligned to the "
                                   f"{self.beat}-byte beat")
        end = addr + beats * self.beat
        if addr // _PAGE != (end - 1) // _PAGE:
            raise AXIProtocolError(f"{kind} burst at {addr:#x} of {beats} beats crosses the 4 KiB "
                                   f"boundary at {(addr // _PAGE + 1) * _PAGE:#x}")
        if end > self.size:
            raise AXIProtocolError(f"{kind} burst at {addr:#x} of {beats} beats runs past the end "
                                   f"of the {self.size}-byte DRAM")

    def add_to(self, sim, *ports):
        """Serve ``ports`` (a design's AXI4 manager ports, port 0 first) in simulator ``sim``
        from one process."""
        async def process(ctx):
            await self.serve(ctx, *ports)
        sim.add_process(process)

    async def serve(self, ctx, *ports):
        """Answer every channel of ``ports`` forever, one loop iteration per clock edge.

        Meant for ``sim.add_process`` (see :meth:`add_to`): the outputs then change with the
        clock edge like registers, and the design settles once per cycle. Also works under
        ``sim.add_testbench(..., background=True)``.
        """
        if not ports:
            raise ValueError("no AXI4 port to serve")
        for axi in ports:
            if len(axi.rdata) != self.data_width:
                raise ValueError(f"port is {len(axi.rdata)} bits wide, the DRAM {self.data_width}")
        edge = _Edge(self)
        states = [_Port(axi) for axi in ports]
        sampled = []
        for st in states:
            ctx.set(st.axi.arready, 1)
            ctx.set(st.axi.awready, 1)
            sampled += st.sampled
        n = len(sampled) // len(ports)
        async for values in ctx.tick().sample(*sampled):
            values = values[2:]
            for i, st in enumerate(states):
                st.take(values[i * n:(i + 1) * n])
            edge.step(ctx, states)


class _Port:
    """One AXI4 port's side of :meth:`DRAMModel.serve`: what it offered at the edge, its bursts,
    its R beat and its own bucket (``PortState`` in ``dram_model.cpp``)."""

    def __init__(self, axi):
        self.axi = axi
        self.sampled = [Value.cast(sig) for sig in (
            axi.arvalid, axi.araddr, axi.arlen, axi.arsize, axi.arburst, axi.rready,
            axi.awvalid, axi.awaddr, axi.awlen, axi.awsize, axi.awburst,
            axi.wvalid, axi.wdata, axi.wstrb, axi.wlast, axi.bready)]
        self.reads, self.writes, self.responses = deque(), deque(), deque()   # bursts accepted; B owed
        self.r_addr = self.r_left = self.r_resp = 0        # the read burst being sent
        self.r_valid = False                               # a beat is on R
        self.credit = 0
        self.w_addr = self.w_left = self.w_resp = 0        # the write burst being received
        self.arready = self.awready = True
        self.wready = False
        self.held = {}                                     # AR/AW/W transfers offered, not yet taken
        self.w_first = 0        # the cycle the W beat now offered was first offered

    def take(self, values):
        """What the port offers at this edge (``sampled``'s values)."""
        (self.arvalid, self.araddr, self.arlen, self.arsize, self.arburst, self.rready,
         self.awvalid, self.awaddr, self.awlen, self.awsize, self.awburst,
         self.wvalid, self.wdata, self.wstrb, self.wlast, self.bready) = values

    def active(self):
        """A transfer offered, a burst accepted and not yet finished, or a B response owed."""
        return bool(self.arvalid or self.awvalid or self.wvalid or self.reads or self.r_left or self.writes
                    or self.w_left or self.responses)

    def hold(self, ch, valid, ready, payload):
        """A transfer offered must stay offered, unchanged, until it is taken."""
        held = self.held
        if ch in held and held[ch] != (valid, payload):
            raise AXIProtocolError(f"{ch.upper()} transfer {'changed' if valid else 'withdrawn'} "
                                   f"before READY took it (offered {held[ch][1]}, now "
                                   f"{payload if valid else 'nothing'})")
        if valid and not ready:
            held[ch] = (valid, payload)
        else:
            held.pop(ch, None)

    def check_holds(self):
        if self.held or not (self.arready and self.awready):
            self.hold("ar", self.arvalid, self.arready,
                      (self.araddr, self.arlen, self.arsize, self.arburst) if self.arvalid else None)
            self.hold("aw", self.awvalid, self.awready,
                      (self.awaddr, self.awlen, self.awsize, self.awburst) if self.awvalid else None)
        if "w" in self.held or (self.wvalid and not self.wready):
            self.hold("w", self.wvalid, self.wready, (self.wdata, self.wstrb, self.wlast) if self.wvalid else None)


class _Edge:
    """What :meth:`DRAMModel.serve` does at each clock edge, for all ports at once (``after_edge``
    in ``dram_model.cpp``, step by step)."""

    def __init__(self, dram):
        self.dram, self.mem, self.beat = dram, dram.mem, dram.beat
        self.latency, self.rate = dram.latency - 1, _tokens(dram.beats_per_cycle)
        self.shared_rate = _shared_tokens(dram.bytes_per_cycle, self.beat)
        # What the shared bucket keeps when every port that could send did: enough for one beat
        # the next cycle, no more (the per-port rule, for the whole memory).
        self.shared_keep = max(0, _ONE - self.shared_rate)
        self.shared = 0                       # the memory's tokens, shared by all ports
        self.last_served = None               # round-robin: the next search starts after it
        imp = self.imp = dram.impolite or Impolite()
        self.rng = _SplitMix64(imp.seed)
        self.ar_thr, self.aw_thr, self.w_thr, self.gap_thr = imp.thresholds()
        self.spread = 0 if imp.latency_max in (None, dram.latency) else imp.latency_max - dram.latency + 1
        self.err_lo, self.err_hi = imp.error_range or (0, 0)
        self.impolite = dram.impolite is not None and dram.impolite != Impolite(seed=imp.seed)
        self.bus_cycle = 0

    def touches_error(self, addr, nbytes):
        return addr < self.err_hi and addr + nbytes > self.err_lo

    def step(self, ctx, states):
        dram = self.dram
        dram.cycle += 1
        cycle, imp = dram.cycle, self.imp
        # The impolite clock runs only while the bus is in use, so that idle time (the host's
        # register accesses, its polling) never shifts a frame's random choices.
        active = self.impolite and any(st.active() for st in states)
        if active:
            self.bus_cycle += 1
        refreshing = active and imp.refresh_period and self.bus_cycle % imp.refresh_period < imp.refresh_length
        # Reads, port by port up to each port's bucket; then the shared bucket, round-robin from
        # the port after the last one served.
        candidates = [i for i, st in enumerate(states) if self.read_side(st, cycle, refreshing)]
        if self.last_served is None:
            self.last_served = len(states) - 1
        after = self.last_served
        self.shared += self.shared_rate
        refused = False
        for i in sorted(candidates, key=lambda i: (i - after - 1) % len(states)):
            if self.shared < _ONE:
                states[i].credit = _ONE - self.rate     # refused: it keeps one beat banked, no more
                refused = True
                continue
            self.shared -= _ONE
            self.send_beat(ctx, states[i], cycle)
            self.last_served = i
        if not refused and self.shared > self.shared_keep:
            self.shared = self.shared_keep
        for st in states:
            self.write_side(ctx, st, cycle, active, refreshing)

    def read_side(self, st, cycle, refreshing):
        """One port's read channels up to its own bucket: whether it could send a beat now."""
        dram, beat, rate = self.dram, self.beat, self.rate
        st.check_holds()
        if st.arvalid and st.arready:
            dram._check_burst("read", st.araddr, st.arlen + 1, st.arsize, st.arburst)
            delay = self.latency + (self.rng.next() % self.spread if self.spread else 0)
            nbytes = (st.arlen + 1) * beat
            st.reads.append((cycle + delay, st.araddr, st.arlen + 1,
                             self.imp.error_resp if self.touches_error(st.araddr, nbytes) else 0))
            dram.read_log.append((st.araddr, nbytes))
            dram.read_bursts += 1
        if st.r_valid and st.rready:
            st.r_valid = False
            st.r_addr += beat
            st.r_left -= 1
            dram.bytes_read += beat
        if not st.r_left and st.reads and st.reads[0][0] <= cycle:
            _, st.r_addr, st.r_left, st.r_resp = st.reads.popleft()
        st.credit += rate
        if not st.r_valid and st.r_left and not refreshing:
            if st.credit >= _ONE:
                if self.gap_thr and self.rng.next() < self.gap_thr:
                    st.credit = _ONE     # held back: still one beat banked, no more
                else:
                    return True
        elif st.credit > _ONE - rate:
            # Idle or held by RREADY: bank one beat, no more.
            st.credit = _ONE - rate
        return False

    def send_beat(self, ctx, st, cycle):
        st.credit -= _ONE
        st.r_valid = True
        axi = st.axi
        ctx.set(axi.rdata, int.from_bytes(self.mem[st.r_addr:st.r_addr + self.beat], "little"))
        ctx.set(axi.rlast, st.r_left == 1)
        ctx.set(axi.rresp, st.r_resp)
        if st.r_resp and self.dram.error_cycle is None:
            self.dram.error_cycle = cycle + 1

    def write_side(self, ctx, st, cycle, active, refreshing):
        """One port's write channels, then its ready draws for the next cycle."""
        dram, beat, mem, axi, rng = self.dram, self.beat, self.mem, st.axi, self.rng
        ctx.set(axi.rvalid, st.r_valid)
        if st.awvalid and st.awready:
            dram._check_burst("write", st.awaddr, st.awlen + 1, st.awsize, st.awburst)
            nbytes = (st.awlen + 1) * beat
            st.writes.append((st.awaddr, st.awlen + 1,
                              self.imp.error_resp if self.touches_error(st.awaddr, nbytes) else 0))
            dram.write_bursts += 1
        if st.responses and st.bready:
            st.responses.popleft()
        if st.wvalid and st.wready:
            first = st.w_first or cycle
            st.w_first = 0
            if st.wstrb and dram.error_cycle is not None and first > dram.error_cycle:
                dram.late_writes += 1
            w_addr, wstrb = st.w_addr, st.wstrb
            if st.w_resp:
                pass                  # an erroneous burst stores nothing
            elif wstrb == (1 << beat) - 1:
                mem[w_addr:w_addr + beat] = st.wdata.to_bytes(beat, "little")
            else:
                raw = st.wdata.to_bytes(beat, "little")
                for b in range(beat):
                    if wstrb >> b & 1:
                        mem[w_addr + b] = raw[b]
            st.w_left -= 1
            if bool(st.wlast) != (st.w_left == 0):
                raise AXIProtocolError(
                    f"write burst: WLAST {'set' if st.wlast else 'missing'} on the beat at "
                    f"{w_addr:#x} with {st.w_left} beats of the burst to go")
            st.w_addr += beat
            dram.bytes_written += beat
            if not st.w_left:
                st.responses.append(st.w_resp)
        elif st.wvalid and not st.w_first:
            st.w_first = cycle
        if not st.w_left and st.writes:
            st.w_addr, st.w_left, st.w_resp = st.writes.popleft()
        if self.ar_thr and active:
            st.arready = rng.next() >= self.ar_thr
            ctx.set(axi.arready, st.arready)
        if self.aw_thr and active:
            st.awready = rng.next() >= self.aw_thr
            ctx.set(axi.awready, st.awready)
        st.wready = st.w_left != 0 and not refreshing
        if self.w_thr and st.wready and active:
            st.wready = rng.next() >= self.w_thr
        ctx.set(axi.wready, st.wready)
        ctx.set(axi.bvalid, bool(st.responses))
        if st.responses:
            ctx.set(axi.bresp, st.responses[0])
            if st.responses[0] and dram.error_cycle is None:
                dram.error_cycle = cycle + 1


class VerilatorDRAM:
    """Host-side handle of ``sim/dram_model.cpp`` attached to a ``VerilatorModel``: the
    ``write``/``read`` and counters of :class:`DRAMModel`, plus :meth:`check`.

    Returned by :func:`attach_verilator_dram`.
    """

    def __init__(self, model, size):
        self.model, self.size = model, size

    def write(self, addr, blob):
        """Store ``blob`` (bytes-like or a uint8 array) at byte ``addr``."""
        data = bytes(memoryview(blob).cast("B"))
        _check_range("write", addr, len(data), self.size)
        self.model.extra.dram_write(addr, data, len(data))

    def read(self, addr, n):
        """The ``n`` bytes at byte ``addr``."""
        _check_range("read", addr, n, self.size)
        buf = ctypes.create_string_buffer(n)
        self.model.extra.dram_read(addr, buf, n)
        return buf.raw

    def faults(self):
        """``(cycle, error_cycle, late_writes)`` as :class:`DRAMModel` names them."""
        out = (ctypes.c_uint64 * 3)()
        self.model.extra.dram_faults(out)
        return out[0], (out[1] - 1 if out[1] else None), out[2]

    cycle = property(lambda self: self.faults()[0])
    error_cycle = property(lambda self: self.faults()[1])
    late_writes = property(lambda self: self.faults()[2])

    @property
    def error(self):
        """The first protocol violation seen, or ``""``."""
        return self.model.extra.dram_error().decode()

    def check(self):
        """Raise :class:`AXIProtocolError` if the model has seen a protocol violation."""
        if self.error:
            raise AXIProtocolError(self.error)

    def stats(self):
        """``(bytes_read, bytes_written, read_bursts, write_bursts)``."""
        out = (ctypes.c_uint64 * 4)()
        self.model.extra.dram_stats(out)
        return tuple(out)

    bytes_read = property(lambda self: self.stats()[0])
    bytes_written = property(lambda self: self.stats()[1])
    read_bursts = property(lambda self: self.stats()[2])
    write_bursts = property(lambda self: self.stats()[3])


#: ``VerilatorModel`` keyword arguments that compile the C++ DRAM model in.
VERILATOR_OPTIONS = {
    "extra_sources": [CPP_SOURCE],
    "extra_functions": {
        "dram_attach": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint32,
                                       ctypes.c_double, ctypes.c_uint64]),
        "dram_write": (None, [ctypes.c_uint64, ctypes.c_char_p, ctypes.c_uint64]),
        "dram_read": (None, [ctypes.c_uint64, ctypes.c_char_p, ctypes.c_uint64]),
        "dram_stats": (None, [ctypes.POINTER(ctypes.c_uint64)]),
        "dram_error": (ctypes.c_char_p, []),
        "dram_impolite": (ctypes.c_int, [ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint32), ctypes.c_uint32,
                                         ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64,
                                         ctypes.c_uint32]),
        "dram_faults": (None, [ctypes.POINTER(ctypes.c_uint64)]),
    },
}


def attach_verilator_dram(model, prefix, size, latency=40, beats_per_cycle=1.0, impolite=None,
                          bytes_per_cycle=DEFAULT_BYTES_PER_CYCLE):
    """Attach the C++ DRAM to one or more AXI4 ports of a Verilator model.

    Parameters
    ----------
    model : sim.verilator_engine.VerilatorModel
        Built with ``**VERILATOR_OPTIONS``. One DRAM per model.
    prefix : str or sequence of str
        Each port's member path, ``"__"``-joined (``"axi"`` for ``dut.axi``; ``""`` when the AXI
        signals are top-level ports); several ports (port 0 first) share the one memory.
    size, latency, beats_per_cycle, impolite, bytes_per_cycle
        As for :class:`DRAMModel`; the data width is the ports'.

    Returns
    -------
    VerilatorDRAM
        ``write``, ``read``, ``check``, ``error`` and the counters of :class:`DRAMModel`.
        Protocol errors are recorded, not raised: call ``check()`` after running.
    """
    prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
    if not prefixes or any("," in p for p in prefixes):
        raise ValueError(f"AXI4 port prefixes must be names without commas, not {prefix!r}")
    widths = set()
    for name in prefixes:
        rdata = f"{name}__rdata" if name else "rdata"
        if rdata not in model.ports:
            axi_ports = sorted(port for port in model.ports if port.endswith("rdata"))
            raise ValueError(f"no AXI4 port {name!r} in the model (ports ending in rdata: {axi_ports})")
        widths.add(model.ports[rdata].width)
    if len(widths) != 1:
        raise ValueError(f"the ports {prefixes} differ in data width ({sorted(widths)} bits)")
    width = widths.pop()
    _check_params(size, width, latency, beats_per_cycle, impolite, bytes_per_cycle)
    if not hasattr(model.extra, "dram_attach"):
        raise ValueError("the model was not built with sim.dram.VERILATOR_OPTIONS")
    status = model.extra.dram_attach(",".join(prefixes).encode(), size, latency, beats_per_cycle,
                                     _shared_tokens(bytes_per_cycle, width // 8))
    if status != 0:
        raise RuntimeError(f"cannot attach the DRAM model to ports {prefixes} (status {status}: "
                           f"-1 a signal is missing, -2 already attached, -3 bad parameters)")
    if impolite is not None:
        thresholds = (ctypes.c_uint32 * 4)(*impolite.thresholds())
        lo, hi = impolite.error_range or (0, 0)
        latency_max = latency if impolite.latency_max is None else impolite.latency_max
        if model.extra.dram_impolite(impolite.seed & _MASK, thresholds, latency_max, impolite.refresh_period,
                                     impolite.refresh_length, lo, hi, impolite.error_resp) != 0:
            raise RuntimeError("the C++ DRAM model refused the impolite settings")
    return VerilatorDRAM(model, size)
