"""The writer on its own: plain stores, and the MoE combine with its final rounding against golden."""

import dataclasses

import numpy as np
import pytest

from gateware.program import Capacity
from gateware.writer import Writer
from golden.fixedpoint import RES_BITS, rshift_round, saturate
from golden.moe import GATE_FRAC
from tests.sim_helpers import run_simulation, stream_send

CAP = Capacity(lanes=8, act_words=64, max_tokens=16, max_k_chunks=2, max_dim_chunks=2, num_experts=4,
               top_k=2, max_program=8)
N = CAP.lanes


def _writes(dut, log):
    """A background process logging every ``act_write`` as ``(addr, [data])``."""
    async def process(ctx):
        async for _, _, valid, payload in ctx.tick().sample(dut.act_write.valid, dut.act_write.payload):
            if valid:
                log.append((int(payload.addr), [int(v) for v in payload.data]))
    return process


def _words(rng, count):
    return [[int(v) for v in rng.integers(-32768, 32768, N)] for _ in range(count)]


@pytest.mark.parametrize("groups", [1, 2])
def test_store_walks_the_destination(groups):
    """Tiles of one or two column blocks (the last channel block of a wide array may be partly
    empty): token ``t``'s word of column block ``blk`` goes to ``base + (t + offset) * stride +
    chunk0 + groups * cb + blk``; tokens past ``rows`` are dropped; a tile retires with its last
    word."""
    rng = np.random.default_rng(1)
    dest = {"base": 3, "stride": 4, "chunk0": 1, "rows": 11, "offset": 1}
    tiles = [(0, 0, 2), (1, 2, 2), (1, 3, 1)]
    words = _words(rng, sum(blocks for _, _, blocks in tiles) * N)
    dut = Writer(dataclasses.replace(CAP, cols=groups * N))
    log, retired = [], []

    async def testbench(ctx):
        ctx.set(dut.dest, dest)
        sent = 0
        for tb, cb, blocks in tiles:
            ctx.set(dut.tiles.payload, {"tb": tb, "cb": cb, "blocks": blocks})
            ctx.set(dut.tiles.valid, 1)
            tile_words, sent = words[sent:sent + blocks * N], sent + blocks * N
            await stream_send(ctx, dut.i, [{"data": w, "last": 0} for w in tile_words], gaps=rng)
        ctx.set(dut.tiles.valid, 0)
        await ctx.tick()

    async def retire(ctx):
        async for _, _, pulse in ctx.tick().sample(dut.retire):
            retired.extend([1] if pulse else [])

    run_simulation(dut, testbench, processes=[_writes(dut, log), retire])
    expected, word = [], iter(words)
    for tb, cb, blocks in tiles:
        for blk in range(blocks):
            for r in range(N):
                w, t = next(word), tb * N + r
                if t < dest["rows"]:
                    addr = (dest["base"] + (t + dest["offset"]) * dest["stride"] + dest["chunk0"] + groups * cb
                            + blk)
                    expected.append((addr, w))
    assert log == expected
    assert len(retired) == len(tiles)


def test_combine_then_final_rounding():
    """Two experts' results added into the accumulator with their gate weights (the tokens from
    the expert queue), then the final pass: ``sat16(residual + round(acc / 2**GATE_FRAC))``
    into the destination, as golden ``moe`` rounds."""
    rng = np.random.default_rng(2)
    stride, chunk0 = 2, 1
    dest = {"base": 20, "stride": stride, "chunk0": chunk0, "rows": 0, "offset": 0}
    queues = [([1, 4, 6, 15], [30000, 500, 32768, 9]),
              ([4, 0, 6, 7, 2, 9, 10, 11, 12, 13], [2767, 100, 1, 32768, 7, 1, 2, 3, 4, 5])]
    words = [_words(rng, N * -(-len(tokens) // N)) for tokens, _ in queues]
    words[0][0] = [32767, -32768] * (N // 2)
    residual = rng.integers(-32768, 32768, size=(CAP.max_tokens * stride, N))
    residual[chunk0 + stride * 6] = [32767, -32768, 0, 1] * (N // 4)
    dut = Writer(CAP)
    log, listing = [], {}

    def look_up(ctx, addr):
        # The queue is read combinationally, as from the queue memory's comb read port.
        tokens, weights = listing.get("queue", ([], []))
        if addr < len(tokens):
            ctx.set(dut.list_token, tokens[addr])
            ctx.set(dut.list_weight, weights[addr])

    async def expert_queue(ctx):
        async for addr, in ctx.changed(dut.list_addr):
            look_up(ctx, addr)

    async def testbench(ctx):
        ctx.set(dut.dest, dest)
        ctx.set(dut.combine, 1)
        for (tokens, weights), tile_words in zip(queues, words):
            listing["queue"] = (tokens, weights)
            look_up(ctx, ctx.get(dut.list_addr))
            ctx.set(dut.dest.rows, len(tokens))
            for tb in range(-(-len(tokens) // N)):
                ctx.set(dut.tiles.payload, {"tb": tb, "cb": 0, "blocks": 1})
                ctx.set(dut.tiles.valid, 1)
                await stream_send(ctx, dut.i, [{"data": w, "last": 0} for w in tile_words[tb * N:(tb + 1) * N]])
                ctx.set(dut.tiles.valid, 0)
            await ctx.tick().repeat(3)          # a phase barrier
        ctx.set(dut.combine, 0)
        ctx.set(dut.final.active, 1)
        for word in range(CAP.max_tokens * stride + 1):
            if word:
                ctx.set(dut.final.valid, 1)
                ctx.set(dut.final.word, word - 1)
                ctx.set(dut.residual, [int(v) for v in residual[word - 1]])
            ctx.set(dut.final.addr, word)
            await ctx.tick()
        ctx.set(dut.final.active, 0)
        ctx.set(dut.final.valid, 0)
        await ctx.tick()

    run_simulation(dut, testbench, processes=[_writes(dut, log), expert_queue])
    acc = np.zeros((CAP.max_tokens * stride, N), np.int64)
    for (tokens, weights), tile_words in zip(queues, words):
        for t, g, w in zip(tokens, weights, tile_words):
            acc[t * stride + chunk0] += g * np.array(w)
    want = saturate(rshift_round((residual << GATE_FRAC) + acc, GATE_FRAC), RES_BITS)
    assert log == [(dest["base"] + k, want[k].tolist()) for k in range(len(want))]
