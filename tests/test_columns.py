"""The column path on its own: a tile's columns by sink (store, residual add, router) against
golden's post-processing, with the tile's parameter records read from a stand-in buffer."""

import numpy as np
import pytest

from gateware.columns import ColumnPath
from gateware.layernorm import LayerNorm
from gateware.phase import Sink
from gateware.router import Router
from golden.postprocess import postprocess
from tests.sim_helpers import run_simulation, signature_of, stream_receive, stream_send

N, MAX_TOKENS = 4, 8


def _column_path():
    router = signature_of(Router(N, 4, 2, MAX_TOKENS)).members["i"].signature.flip()
    ln = signature_of(LayerNorm(N, 2 * N)).members["o"].signature
    return ColumnPath(N, MAX_TOKENS, router=router, ln=ln)


def _run(dut, phase, tile, columns, *, records=None, residual=None, out=None, count=0):
    """One tile: ``columns`` ``[N channels, N tokens]`` from the MAC array, ``residual`` (same
    shape) on its stream; returns ``count`` transfers of ``out`` and the release and retire
    pulses seen."""
    got, pulses = [], {"release": [], "retire": [], "skip_rest": []}

    async def testbench(ctx):
        for field, value in phase.items():
            ctx.set(dut.phase[field], value)
        await ctx.tick()    # the column path takes its sink from the phase a cycle after it is set
        ctx.set(dut.tiles.payload, tile)
        if records is not None:
            ctx.set(dut.param, records[tile["slot"]][0])
        ctx.set(dut.tiles.valid, 1)
        await stream_send(ctx, dut.i, [{"data": [int(v) for v in col], "last": c == N - 1}
                                       for c, col in enumerate(columns)], gaps=np.random.default_rng(1))
        ctx.set(dut.tiles.valid, 0)

    async def residual_source(ctx):
        if residual is not None:
            await stream_send(ctx, dut.residual, [{"data": [int(v) for v in col], "last": 0}
                                                  for col in residual])

    async def sink(ctx):
        got.extend(await stream_receive(ctx, out(dut), count, stalls=np.random.default_rng(2)))

    async def tile_records(ctx):
        # The weight buffer's records are read combinationally, by slot and column.
        async for slot, col in ctx.changed(dut.param_slot, dut.param_col):
            if records is not None:
                ctx.set(dut.param, records[slot][col])

    async def watch(ctx):
        col = 0
        async for _, _, release, retire, skip, valid, ready in ctx.tick().sample(
                dut.release, dut.retire, dut.skip_rest, dut.i.valid, dut.i.ready):
            pulses["release"].extend([release] if release else [])
            pulses["retire"].extend([1] if retire else [])
            if valid and ready:
                # The column (of this tile) taken with skip_rest.
                pulses["skip_rest"].extend([col] if skip else [])
                col += 1

    run_simulation(dut, testbench, residual_source, sink, processes=[tile_records, watch])
    return got, pulses


def _tokens(words):
    return np.array([[int(v) for v in p.data] for p in words])


def test_store_with_the_tile_records():
    """WRITE: each column through its channel's bias and requantisation (from buffer slot 1),
    saturated to 16 bits, and back into token words; the tile releases its slot."""
    rng = np.random.default_rng(5)
    columns = rng.integers(-(1 << 20), 1 << 20, (N, N))
    bias = rng.integers(-(1 << 16), 1 << 16, N)
    mult = rng.integers(1 << 15, 1 << 16, N)
    shift = rng.integers(22, 26, N)
    columns[0, 0], columns[1, 1] = 1 << 30, -(1 << 30)         # saturate both ways
    unused = {"bias": 0, "mult": 0, "shift": 0}
    records = [[unused] * N, [{"bias": int(b), "mult": int(m), "shift": int(s)}
                              for b, m, s in zip(bias, mult, shift)]]
    phase = {"sink": Sink.WRITE, "n_cols": 2 * N, "n_cb": 2, "fix_params": 0, "narrow": 0}
    tile = {"tb": 0, "cb": 1, "slot": 1, "release": 1, "last": 1, "cols": N}
    words, pulses = _run(_column_path(), phase, tile, columns, records=records,
                         out=lambda d: d.o, count=N)
    want = postprocess(columns.T, bias, mult, shift, 16)       # [token, channel]
    np.testing.assert_array_equal(_tokens(words), want)
    assert pulses == {"release": [1 << 1], "retire": [], "skip_rest": []}


@pytest.mark.parametrize("narrow", [0, 1])
def test_residual_add_with_fixed_requantisation(narrow):
    """RESIDUAL: the phase's own (mult, shift) without bias, the residual's column added before
    the one saturation (``narrow`` saturates to the activations' 13 bits)."""
    rng = np.random.default_rng(6 + narrow)
    columns = rng.integers(-(1 << 16), 1 << 16, (N, N))
    residual = rng.integers(-8000, 8000, (N, N))
    residual[1] = 32767
    mult, shift = 40000, 18
    phase = {"sink": Sink.RESIDUAL, "n_cols": N, "n_cb": 1, "fix_params": 1, "fix_mult": mult,
             "fix_shift": shift, "narrow": narrow}
    tile = {"tb": 0, "cb": 0, "slot": 0, "release": 0, "last": 1, "cols": N}
    words, pulses = _run(_column_path(), phase, tile, columns, residual=residual,
                         out=lambda d: d.o, count=N)
    bits = 13 if narrow else 16
    want = postprocess(columns.T, 0, mult, shift, bits, residual.T)
    np.testing.assert_array_equal(_tokens(words), want)
    assert pulses == {"release": [], "retire": [], "skip_rest": []}


def test_router_columns_past_n_cols_dropped():
    """ROUTER: the tile's columns go out as gate logits with the token block's base and valid
    lanes; the first column past the tile's ``cols`` is taken from the array with ``skip_rest``
    (the array drops the others) and not sent; the tile retires."""
    rng = np.random.default_rng(7)
    columns = rng.integers(-(1 << 31), 1 << 31, (N, N))
    phase = {"sink": Sink.ROUTER, "n_cols": N + 2, "n_cb": 2,
             "d": {"base": 0, "stride": 0, "chunk0": 0, "rows": 6, "offset": 0}}
    tile = {"tb": 1, "cb": 1, "slot": 0, "release": 0, "last": 1, "cols": 2}
    sent, pulses = _run(_column_path(), phase, tile, columns[:3], out=lambda d: d.router, count=2)
    assert [[int(v) for v in p.logits] for p in sent] == columns[:2].tolist()
    assert [(int(p.token_base), int(p.valid_lanes), int(p.final), int(p.last)) for p in sent] == \
        [(N, 2, 1, 0), (N, 2, 1, 1)]
    assert pulses == {"release": [], "retire": [1], "skip_rest": [2]}
