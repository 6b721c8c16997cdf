"""The tile fetcher on its own: one tile from a DRAM stand-in into a half of its buffer."""

import numpy as np
import pytest

from gateware.fetcher import TileFetcher
from gateware.records import BEAT_BYTES, TileParams, pack_records

from tests.sim_helpers import run_simulation, stream_put, stream_send

KMAX, K = 16, 4


@pytest.mark.parametrize("N", [8, 32])
def test_fetch_fills_half_until_spent(N):
    """Half a beat per tile row (8 columns), or a row of two beats in two memories (32)."""
    rng = np.random.default_rng(0)
    bias = rng.integers(-2**31, 2**31, N)
    mult, shift = rng.integers(0, 2**16, N), rng.integers(0, 40, N)
    weights = rng.integers(-128, 128, (K, N)).astype(np.int8)
    tile = pack_records(TileParams, bias=bias, mult=mult, shift=shift) + weights.tobytes()
    beats = [int.from_bytes(tile[i:i + BEAT_BYTES], "little") for i in range(0, len(tile), BEAT_BYTES)]
    dut = TileFetcher(N, KMAX)

    async def testbench(ctx):
        ctx.set(dut.weights_base, 0x1000)
        ctx.set(dut.capture_gate, 1)
        assert ctx.get(dut.idle)
        # The first fetch of a frame fills half 0 (halves alternate from there).
        await stream_put(ctx, dut.fetch, {"addr": 0x40, "beats": len(beats), "half": 0})
        for _ in range(len(beats) + 10):
            await ctx.tick()
        assert ctx.get(dut.readable) == 0b01 and ctx.get(dut.idle)
        assert ctx.get(dut.gate_mult) == mult[0] and ctx.get(dut.gate_shift) == shift[0]
        ctx.set(dut.param_half, 0)
        for j in range(N):
            ctx.set(dut.param_col, j)
            p = ctx.get(dut.param)
            assert (p.bias, p.mult, p.shift) == (bias[j], mult[j], shift[j])
        ctx.set(dut.w_en, 1)
        ctx.set(dut.w_addr, 1)                            # half 0, word 1: rows k = 2, 3 or row k = 1
        await ctx.tick()
        want = weights[2:4].ravel() if N < BEAT_BYTES else weights[1]
        assert [ctx.get(dut.w_data[i]) for i in range(max(N, BEAT_BYTES))] == want.tolist()
        ctx.set(dut.spend, 0b01)
        await ctx.tick()
        ctx.set(dut.spend, 0)
        assert ctx.get(dut.readable) == 0             # streamed: the W reader may not read it again

    async def dram(ctx):
        ctx.set(dut.rd_cmd.ready, 1)
        *_, valid, cmd = await ctx.tick().sample(dut.rd_cmd.valid, dut.rd_cmd.payload)
        while not valid:
            *_, valid, cmd = await ctx.tick().sample(dut.rd_cmd.valid, dut.rd_cmd.payload)
        ctx.set(dut.rd_cmd.ready, 0)
        assert (cmd.addr, cmd.beats) == (0x1040, len(beats))
        await stream_send(ctx, dut.rd_data, [{"data": b, "last": i == len(beats) - 1} for i, b in enumerate(beats)])

    run_simulation(dut, testbench, dram)
