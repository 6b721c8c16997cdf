"""The sequencer on its own: small programs from a DRAM stand-in, its writes and tile descriptors."""

import numpy as np

from gateware.expert_queue import ExpertQueueBuilder
from gateware.layernorm import LayerNorm
from gateware.program import Capacity, encode_instr
from gateware.records import BEAT_BYTES, INSTR_BYTES, PROGRAM_MAGIC, Header, Op, OutMode, encode
from gateware.sequencer import Sequencer

from tests.sim_helpers import run_simulation, signature_of, stream_send

CAP = Capacity(lanes=8, act_words=64, max_tokens=16, max_k_chunks=4, max_dim_chunks=2, num_experts=4,
               top_k=2, max_program=8)


def _sequencer():
    queues = signature_of(ExpertQueueBuilder(CAP.num_experts, CAP.max_tokens, CAP.top_k))
    ln_params = signature_of(LayerNorm(CAP.lanes, CAP.max_dim_chunks * CAP.lanes)).members["params"].signature
    return Sequencer(CAP, queues=queues, ln_params=ln_params)


def _image(instrs, data=b""):
    """Header, program, then ``data`` at the returned offset."""
    prog = b"".join(encode_instr(i) for i in instrs)
    data_at = BEAT_BYTES + len(prog)
    header = encode(Header, {"magic": PROGRAM_MAGIC, "count": len(instrs), "program": BEAT_BYTES}, BEAT_BYTES)
    return header + prog + data, data_at


def _dram(dut, image):
    """Answers the sequencer's reads from ``image``, one beat per cycle."""
    async def process(ctx):
        while True:
            ctx.set(dut.rd_cmd.ready, 1)
            *_, valid, cmd = await ctx.tick().sample(dut.rd_cmd.valid, dut.rd_cmd.payload)
            if not valid:
                continue
            ctx.set(dut.rd_cmd.ready, 0)
            beats = [image[cmd.addr + i * BEAT_BYTES:cmd.addr + (i + 1) * BEAT_BYTES] for i in range(cmd.beats)]
            await stream_send(ctx, dut.rd_data, [{"data": int.from_bytes(b.ljust(BEAT_BYTES, b"\0"), "little"),
                                                  "last": i == len(beats) - 1} for i, b in enumerate(beats)])
    return process


async def _start(ctx, dut):
    ctx.set(dut.start, 1)
    await ctx.tick()
    ctx.set(dut.start, 0)


def test_load16_writes_words_then_done():
    dut = _sequencer()
    words = np.arange(2 * CAP.lanes, dtype="<i2") * 37 - 100
    data_at = BEAT_BYTES + 2 * INSTR_BYTES
    image, at = _image([dict(op=Op.LOAD16, dram0=data_at, rows=2, k_chunks=1, dst_base=5, dst_stride=1),
                        dict(op=Op.END)], words.tobytes())
    assert at == data_at
    writes, cycles = [], []

    async def testbench(ctx):
        await _start(ctx, dut)
        for cycle in range(200):
            _, _, valid, payload, done = await ctx.tick().sample(dut.act_write.valid, dut.act_write.payload, dut.done)
            if valid:
                writes.append((payload.addr, [payload.data[i] for i in range(CAP.lanes)]))
            if done:
                cycles.append(cycle)
                break
        assert not ctx.get(dut.busy) and ctx.get(dut.cycles) > 0

    run_simulation(dut, testbench, processes=[_dram(dut, image)])
    assert cycles, "never done"
    assert writes == [(5, words[:8].tolist()), (6, words[8:].tolist())]


def test_gemm_tiles_fetches_and_barrier():
    """Two token blocks by two channel blocks: channel block outer, a fetch per channel block into
    successive slots, ``release`` on a slot's last tile; done only after every tile retires."""
    dut = _sequencer()
    k, n = 1, CAP.lanes
    image, _ = _image([dict(op=Op.GEMM, out_mode=OutMode.WRITE, dram0=0x100, rows=10, k_chunks=k, n_out=16,
                            src_stride=1, dst_stride=2),
                       dict(op=Op.END)])
    tiles, fetches = [], []

    async def testbench(ctx):
        for unit in "awco":
            ctx.set(getattr(dut, f"{unit}_tile").ready, 1)
        ctx.set(dut.fetch.ready, 1)
        await _start(ctx, dut)
        for _ in range(300):
            _, _, a_valid, tile, f_valid, fetch, c_valid, o_valid, r_valid, done = await ctx.tick().sample(
                dut.a_tile.valid, dut.a_tile.payload, dut.fetch.valid, dut.fetch.payload, dut.c_tile.valid,
                dut.o_tile.valid, dut.r_tile.valid, dut.done)
            assert not done, "done before the tiles retired"
            assert not r_valid and c_valid == a_valid == o_valid
            if a_valid:
                tiles.append((tile.tb, tile.cb, tile.slot, tile.release, tile.last))
            if f_valid:
                fetches.append((fetch.addr, fetch.beats, fetch.slot))
            if len(tiles) == 4:
                break
        assert ctx.get(dut.phase.n_cb) == 2 and ctx.get(dut.phase.d.stride) == 2
        ctx.set(dut.fetch_idle, 1)
        for _ in range(4):
            ctx.set(dut.retire, 1)
            await ctx.tick()
        ctx.set(dut.retire, 0)
        for _ in range(20):
            _, _, done = await ctx.tick().sample(dut.done)
            if done:
                return
        raise AssertionError("never done")

    run_simulation(dut, testbench, processes=[_dram(dut, image)])
    tile_bytes = 8 * n + k * n * n
    assert fetches == [(0x100, tile_bytes // BEAT_BYTES, 0), (0x100 + tile_bytes, tile_bytes // BEAT_BYTES, 1)]
    assert tiles == [(0, 0, 0, 0, 0), (1, 0, 0, 1, 0), (0, 1, 1, 0, 0), (1, 1, 1, 1, 1)]


def test_routes_writes_the_recorders_beats():
    """ROUTES: one write command of ``count`` beats at ``output_base + dram0``, the routing
    stream's words as its data (exactly ``count``, however many are offered), and done only
    once the DMA's write has finished."""
    dut = _sequencer()
    image, _ = _image([dict(op=Op.ROUTES, dram0=0x1040, rows=9, count=3), dict(op=Op.END)])
    rng = np.random.default_rng(15)
    offered = [int(v) for v in rng.integers(0, 1 << 63, 5)]
    offered = [v << 64 | v >> 7 for v in offered]
    commands, written, log = [], [], {}

    async def routes(ctx):
        await stream_send(ctx, dut.routes, offered, gaps=rng)

    async def testbench(ctx):
        ctx.set(dut.output_base, 0x2_0000_0000)
        ctx.set(dut.wr_cmd.ready, 1)
        await _start(ctx, dut)
        idle = None
        for cycle in range(300):
            ready = bool(rng.random() >= 0.3)
            ctx.set(dut.wr_data.ready, ready)
            _, _, c_valid, cmd, d_valid, beat, done = await ctx.tick().sample(
                dut.wr_cmd.valid, dut.wr_cmd.payload, dut.wr_data.valid, dut.wr_data.payload, dut.done)
            if done:
                log["done"] = cycle
                break
            if c_valid:
                commands.append((cmd.addr, cmd.beats))
                ctx.set(dut.wr_busy, 1)     # as the DMA: busy from the command to its last response
            if d_valid and ready:
                written.append(beat)
                if len(written) == 3:
                    idle = cycle + 6
            if idle is not None and cycle == idle:
                log["idle"] = cycle
                ctx.set(dut.wr_busy, 0)

    run_simulation(dut, testbench, processes=[_dram(dut, image), routes])
    assert commands == [(0x2_0000_0000 + 0x1040, 3)]
    assert written == offered[:3]
    assert "done" in log, "never done"
    assert "idle" in log and log["done"] > log["idle"], "done before the write finished"
