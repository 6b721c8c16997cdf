"""The tile fetcher on its own: one tile from DRAM stand-ins (one per read port) into a slot of
its buffer."""

import numpy as np
import pytest

from gateware.fetcher import TileFetcher, port_banks
from gateware.phase import SLOTS
from gateware.program import _tiles
from gateware.records import BEAT_BYTES

from tests.sim_helpers import run_simulation, stream_put, stream_send

KMAX, K = 16, 4


def test_port_banks():
    """Contiguous ranges, sizes within one bank, the longer ones on the last ports."""
    assert port_banks(1, 1) == [(0, 1)]
    assert port_banks(4, 2) == [(0, 2), (2, 2)]
    assert port_banks(5, 4) == [(0, 1), (1, 1), (2, 1), (3, 2)]
    assert port_banks(6, 4) == [(0, 1), (1, 1), (2, 2), (4, 2)]
    with pytest.raises(ValueError):
        port_banks(2, 4)


@pytest.mark.parametrize("N, ports", [(8, 1), (32, 1), (32, 2), (64, 2), (48, 2)])
def test_fetch_fills_slot_until_spent(N, ports):
    """Half a beat per tile row (8 columns); a row of several beats in as many memories, the
    tile in one command (one port) or its banks shared among ports, one command each (port 0
    with the parameters), answered with gaps and in any order between the ports."""
    rng = np.random.default_rng(N + ports)
    bias = rng.integers(-2**31, 2**31, N)
    mult, shift = rng.integers(0, 2**16, N), rng.integers(0, 40, N)
    weights = rng.integers(-128, 128, (K, N)).astype(np.int8)
    tile = _tiles(weights.T, bias, mult, shift, N)
    dut = TileFetcher(N, KMAX, ports)
    # A bank is its 16 channels' records (8 beats) and its K rows.
    bank_beats = 8 + K
    # What each port must ask for: (byte offset in the tile, beats).
    want = [(0, len(tile) // BEAT_BYTES)] if ports == 1 else [
        (first * bank_beats * BEAT_BYTES, count * bank_beats)
        for p, (first, count) in enumerate(port_banks(N // BEAT_BYTES, ports))]
    served = []

    async def testbench(ctx):
        ctx.set(dut.weights_base, 0x1000)
        ctx.set(dut.capture_gate, 1)
        assert ctx.get(dut.idle)
        # The first fetch of a frame fills slot 0 (the slots are taken in turn from there).
        await stream_put(ctx, dut.fetch, {"addr": 0x40, "beats": len(tile) // BEAT_BYTES, "slot": 0, "rows": K})
        await ctx.tick().until(dut.readable != 0)
        await ctx.tick()
        assert ctx.get(dut.readable) == 0b01 and ctx.get(dut.idle) and len(served) == ports
        assert ctx.get(dut.gate_mult) == mult[0] and ctx.get(dut.gate_shift) == shift[0]
        ctx.set(dut.param_slot, 0)
        for j in range(N):
            ctx.set(dut.param_col, j)
            p = ctx.get(dut.param)
            assert (p.bias, p.mult, p.shift) == (bias[j], mult[j], shift[j])
        ctx.set(dut.w_en, 1)
        words = K // (BEAT_BYTES // N) if N < BEAT_BYTES else K
        for word in range(words):
            ctx.set(dut.w_addr, word)                     # slot 0: rows 2w, 2w + 1, or row w
            await ctx.tick()
            expect = weights[2 * word:2 * word + 2].ravel() if N < BEAT_BYTES else weights[word]
            assert [ctx.get(dut.w_data[i]) for i in range(max(N, BEAT_BYTES))] == expect.tolist(), word
        ctx.set(dut.spend, 0b01)
        await ctx.tick()
        ctx.set(dut.spend, 0)
        assert ctx.get(dut.readable) == 0             # streamed: the W reader may not read it again

    def dram(p):
        cmd_port, data_port = dut.rd_cmd[p], dut.rd_data[p]

        async def process(ctx):
            # The ports take their commands at different times, so the fetch waits for the last.
            if p:
                await ctx.tick().repeat(7 * p)
            ctx.set(cmd_port.ready, 1)
            *_, valid, cmd = await ctx.tick().sample(cmd_port.valid, cmd_port.payload)
            while not valid:
                *_, valid, cmd = await ctx.tick().sample(cmd_port.valid, cmd_port.payload)
            ctx.set(cmd_port.ready, 0)
            offset, beats = want[p]
            assert (cmd.addr, cmd.beats) == (0x1040 + offset, beats), p
            part = tile[offset:offset + beats * BEAT_BYTES]
            payloads = [{"data": int.from_bytes(part[i * BEAT_BYTES:(i + 1) * BEAT_BYTES], "little"),
                         "last": i == beats - 1} for i in range(beats)]
            await stream_send(ctx, data_port, payloads, gaps=np.random.default_rng(p))
            served.append(p)
        return process

    run_simulation(dut, testbench, *(dram(p) for p in range(ports)))


def test_slots_fill_ahead_until_released():
    """Fetches take the slots in turn and run ahead of the array by every slot, no further: with
    all of them full the next fetch's command waits until the column stage releases the oldest,
    and then refills that slot with the new tile."""
    N = 32
    rng = np.random.default_rng(5)
    tiles, weights = [], []
    for _ in range(SLOTS + 1):
        w = rng.integers(-128, 128, (K, N)).astype(np.int8)
        bias = rng.integers(-2**31, 2**31, N)
        mult, shift = rng.integers(0, 2**16, N), rng.integers(0, 40, N)
        tiles.append(_tiles(w.T, bias, mult, shift, N))
        weights.append((w, bias))
    size = len(tiles[0])
    dram = b"".join(tiles)
    dut = TileFetcher(N, KMAX, 1)
    commands = []

    async def read_back(ctx, slot, tile):
        w, bias = weights[tile]
        ctx.set(dut.param_slot, slot)
        for j in range(N):
            ctx.set(dut.param_col, j)
            assert ctx.get(dut.param).bias == bias[j], (slot, tile, j)
        ctx.set(dut.w_en, 1)
        for row in range(K):
            ctx.set(dut.w_addr, slot * KMAX + row)
            await ctx.tick()
            assert [ctx.get(dut.w_data[i]) for i in range(N)] == w[row].tolist(), (slot, tile, row)
        ctx.set(dut.w_en, 0)

    async def testbench(ctx):
        for tile in range(SLOTS + 1):
            await stream_put(ctx, dut.fetch, {"addr": tile * size, "beats": size // BEAT_BYTES,
                                              "slot": tile % SLOTS, "rows": K})
        await ctx.tick().until(dut.readable == (1 << SLOTS) - 1)
        await ctx.tick().repeat(50)
        assert len(commands) == SLOTS, "a fetch went out with every slot full"
        for slot in range(SLOTS):
            await read_back(ctx, slot, slot)
        ctx.set(dut.spend, 1)
        ctx.set(dut.release, 1)
        await ctx.tick()
        ctx.set(dut.spend, 0)
        ctx.set(dut.release, 0)
        await ctx.tick().until(dut.readable[0])
        assert commands == [(tile * size, size // BEAT_BYTES) for tile in range(SLOTS + 1)]
        await read_back(ctx, 0, SLOTS)
        assert ctx.get(dut.idle)

    async def memory(ctx):
        cmd_port, data_port = dut.rd_cmd[0], dut.rd_data[0]
        while len(commands) < SLOTS + 1:
            ctx.set(cmd_port.ready, 1)
            *_, valid, cmd = await ctx.tick().sample(cmd_port.valid, cmd_port.payload)
            if not valid:
                continue
            ctx.set(cmd_port.ready, 0)
            commands.append((cmd.addr, cmd.beats))
            part = dram[cmd.addr:cmd.addr + cmd.beats * BEAT_BYTES]
            await stream_send(ctx, data_port, [{"data": int.from_bytes(part[i * BEAT_BYTES:(i + 1) * BEAT_BYTES], "little"),
                                                "last": i == cmd.beats - 1} for i in range(cmd.beats)])

    run_simulation(dut, testbench, memory)
