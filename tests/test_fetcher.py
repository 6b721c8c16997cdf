"""The tile fetcher on its own: one tile from DRAM stand-ins (one per read port) into a half of
its buffer."""

import numpy as np
import pytest

from gateware.fetcher import TileFetcher, port_banks
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
def test_fetch_fills_half_until_spent(N, ports):
    """Half a beat per tile row (8 columns); a row of several beats in as many memories, the
    tile in one command (one port) or its banks shared among ports, one command each (port 0
    with the parameters), answered with gaps and in any order between the ports."""
    rng = np.random.default_rng(N + ports)
    bias = rng.integers(-2**31, 2**31, N)
    mult, shift = rng.integers(0, 2**16, N), rng.integers(0, 40, N)
    weights = rng.integers(-128, 128, (K, N)).astype(np.int8)
    tile = _tiles(weights.T, bias, mult, shift, N)
    dut = TileFetcher(N, KMAX, ports)
    param_beats = N * 8 // BEAT_BYTES
    # What each port must ask for: (byte offset in the tile, beats).
    want = [(0, len(tile) // BEAT_BYTES)] if ports == 1 else [
        (0 if p == 0 else (param_beats + first * K) * BEAT_BYTES, (param_beats if p == 0 else 0) + count * K)
        for p, (first, count) in enumerate(port_banks(N // BEAT_BYTES, ports))]
    served = []

    async def testbench(ctx):
        ctx.set(dut.weights_base, 0x1000)
        ctx.set(dut.capture_gate, 1)
        assert ctx.get(dut.idle)
        # The first fetch of a frame fills half 0 (halves alternate from there).
        await stream_put(ctx, dut.fetch, {"addr": 0x40, "beats": len(tile) // BEAT_BYTES, "half": 0, "rows": K})
        await ctx.tick().until(dut.readable != 0)
        await ctx.tick()
        assert ctx.get(dut.readable) == 0b01 and ctx.get(dut.idle) and len(served) == ports
        assert ctx.get(dut.gate_mult) == mult[0] and ctx.get(dut.gate_shift) == shift[0]
        ctx.set(dut.param_half, 0)
        for j in range(N):
            ctx.set(dut.param_col, j)
            p = ctx.get(dut.param)
            assert (p.bias, p.mult, p.shift) == (bias[j], mult[j], shift[j])
        ctx.set(dut.w_en, 1)
        words = K // (BEAT_BYTES // N) if N < BEAT_BYTES else K
        for word in range(words):
            ctx.set(dut.w_addr, word)                     # half 0: rows 2w, 2w + 1, or row w
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
