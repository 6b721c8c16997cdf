"""The attention buffers on their own: K and V words written as the QKV GEMM's writer does, read
back G banks at a time where QK^T and A.V read them, against numpy."""

import numpy as np
import pytest

from gateware.kv_buffers import KVBuffers
from gateware.program import Capacity
from golden.fixedpoint import ACT_BITS
from tests.sim_helpers import run_simulation


@pytest.mark.parametrize("cols", [8, 32])
def test_wide_reads_see_the_written_words(cols):
    """Every token's K and V words written in a random order; then each K read (tile ``cb``, lane
    ``lane``, word ``c``) holds token block ``cb * G + g`` in bank ``g``, and each V read (token,
    tile ``cb``) holds words ``cb * G + g``, as saturated activations."""
    cap = Capacity(lanes=8, cols=cols, act_words=64, max_tokens=40, max_k_chunks=4, max_dim_chunks=4,
                   num_experts=4, top_k=2, max_program=8)
    N, G, D = cap.lanes, cap.groups, cap.max_dim_chunks
    dut = KVBuffers(cap)
    rng = np.random.default_rng(cols)
    lim = 1 << (ACT_BITS - 1)
    tokens = cap.max_tokens
    k = rng.integers(-lim, lim, (tokens, D, N))
    v = rng.integers(-lim, lim, (tokens, D, N))
    writes = [(is_v, t, c) for is_v in (0, 1) for t in range(tokens) for c in range(D)]
    order = rng.permutation(len(writes))

    async def testbench(ctx):
        for i in order:
            is_v, t, c = writes[i]
            ctx.set(dut.write.valid, 1)
            ctx.set(dut.write.payload, {"v": is_v, "tb": t // N, "lane": t % N, "chunk": c,
                                        "data": [int(x) for x in (v if is_v else k)[t, c]]})
            await ctx.tick()
        ctx.set(dut.write.valid, 0)
        await ctx.tick()                    # the last write lands a cycle later
        ctx.set(dut.read_en, 1)
        for cb in range(-(-tokens // (N * G))):
            for lane in range(N):
                for c in range(D):
                    ctx.set(dut.read_v, 0)
                    ctx.set(dut.read_addr, (cb * N + lane) * dut.k_stride + c)
                    await ctx.tick()
                    got = np.array([int(x) for x in ctx.get(dut.read_data)]).reshape(G, N)
                    for g in range(G):
                        t = (cb * G + g) * N + lane
                        if t < tokens:
                            np.testing.assert_array_equal(got[g], k[t, c])
        for t in range(tokens):
            for cb in range(D // G):
                ctx.set(dut.read_v, 1)
                ctx.set(dut.read_addr, t * dut.v_stride + cb)
                await ctx.tick()
                got = np.array([int(x) for x in ctx.get(dut.read_data)]).reshape(G, N)
                np.testing.assert_array_equal(got, v[t, cb * G:(cb + 1) * G])

    run_simulation(dut, testbench)
