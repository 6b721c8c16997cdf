"""The residual reader on its own: each tile's destination words, transposed, against numpy."""

import numpy as np
import pytest

from gateware.residual import ResidualReader
from tests.sim_helpers import memory_port, run_simulation, stream_put, stream_receive

N = 4


@pytest.mark.parametrize("groups", [1, 2])
def test_tiles_read_the_destination_transposed(groups):
    """Two tiles of a destination region with an offset: element ``j`` of a tile is channel
    ``j`` of its token block (``groups`` words per tile); tokens past ``rows`` read as zero;
    random back-pressure."""
    rng = np.random.default_rng(3)
    mem = rng.integers(-32768, 32768, size=(96, N))
    dest = {"base": 5, "stride": 3, "chunk0": 1, "rows": 6, "offset": 2}
    tiles = [(0, 1), (1, 0)]
    dut = ResidualReader(N, groups)
    out = []

    async def testbench(ctx):
        ctx.set(dut.dest, dest)
        for tb, cb in tiles:
            await stream_put(ctx, dut.tiles, {"tb": tb, "cb": cb})

    async def sink(ctx):
        out.extend(await stream_receive(ctx, dut.o, groups * N * len(tiles), stalls=np.random.default_rng(4)))

    run_simulation(dut, testbench, sink, processes=[memory_port(dut, mem)])
    got = np.array([[int(v) for v in p.data] for p in out])
    want = []
    for tb, cb in tiles:
        for g in range(groups):
            block = np.zeros((N, N), np.int64)           # [token, channel]
            for i in range(N):
                t = tb * N + i
                if t < dest["rows"]:
                    block[i] = mem[dest["base"] + (t + dest["offset"]) * dest["stride"] + dest["chunk0"]
                                   + groups * cb + g]
            want.extend(block.T)
    np.testing.assert_array_equal(got, np.array(want))


def test_final_pass_addresses_the_combined_word():
    """During the MoE combine's last pass every cycle reads word ``final.addr`` of ``dest``."""
    dut = ResidualReader(N)

    async def testbench(ctx):
        ctx.set(dut.dest, {"base": 40, "stride": 2, "chunk0": 0, "rows": 4, "offset": 0})
        ctx.set(dut.final, {"active": 1, "addr": 0})
        for addr in (0, 7, 3):
            ctx.set(dut.final.addr, addr)
            await ctx.tick()
            assert (ctx.get(dut.mem_en), ctx.get(dut.mem_addr)) == (1, 40 + addr)
        assert not ctx.get(dut.o.valid)

    run_simulation(dut, testbench)
