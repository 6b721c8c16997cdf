"""The routing recorder against ``runtime.layout.RoutingLayout.encode`` (the layout the host
decodes): random routings, record sizes 1, 2 and 4 bytes, layers back to back, tokens in any
order, gaps on the input, back-pressure on the output, and its latency in clock edges."""

import gc

import numpy as np
import pytest

from gateware.routing import RoutingRecorder
from runtime.layout import RoutingLayout
from tests.sim_helpers import run_simulation, stream_receive


def _layer(rng, tokens, num_experts, k):
    return np.array([rng.choice(num_experts, k, replace=False) for _ in range(tokens)]).reshape(tokens, k)


def _record(dut, layers, seed):
    """Feed each ``(experts [T, k], token order)`` to the tap, then take the layer's words.

    Returns per layer the bytes read and the edges from the ``last`` token's transfer to the
    first word being valid; asserts ``o`` is never valid while tokens arrive."""
    rng = np.random.default_rng(seed)
    results = []

    async def tb(ctx):
        for experts, order in layers:
            for n, t in enumerate(order):
                while rng.random() < 0.3:
                    ctx.set(dut.i.valid, 0)
                    await ctx.tick()
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, {"token": int(t), "expert": [int(e) for e in experts[t]],
                                        "last": n == len(order) - 1})
                await ctx.tick()
                assert n == 0 or not ctx.get(dut.o.valid), "words offered while a layer is written"
            ctx.set(dut.i.valid, 0)
            edges = 0
            while not ctx.get(dut.o.valid):
                await ctx.tick()
                edges += 1
            beats = RoutingLayout(1, len(experts), dut.k).layer_bytes // dut.beat_bytes
            words = await stream_receive(ctx, dut.o, beats, stalls=rng)
            blob = b"".join(int(w).to_bytes(dut.beat_bytes, "little") for w in words)
            results.append((np.frombuffer(blob, np.uint8), edges))

    run_simulation(dut, tb)
    return results


@pytest.mark.parametrize("tokens, num_experts, k", [(9, 4, 2), (129, 16, 2), (21, 64, 3), (5, 8, 1)])
def test_recorder_matches_layout(tokens, num_experts, k):
    rng = np.random.default_rng(tokens * num_experts + k)
    dut = RoutingRecorder(tokens, num_experts, k)
    layout = RoutingLayout(1, tokens, k)
    layers = [(_layer(rng, tokens, num_experts, k), np.arange(tokens)) for _ in range(2)]
    # Byte enables: a layer whose tokens arrive out of order lands in the same places.
    layers.append((_layer(rng, tokens, num_experts, k), rng.permutation(tokens)))
    for (experts, _), (got, edges) in zip(layers, _record(dut, layers, seed=k)):
        want = layout.encode(experts)
        assert np.array_equal(got, want), f"first differing byte {np.flatnonzero(got != want)[:4]}"
        assert np.array_equal(layout._replace(layers=1).decode(got)[0], experts)
        assert edges == 2


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_recorder_refuses_what_a_byte_or_a_beat_cannot_hold():
    with pytest.raises(ValueError, match="num_experts must lie in 1..256"):
        RoutingRecorder(9, 300, 2)
    with pytest.raises(ValueError, match="k must lie in"):
        RoutingRecorder(9, 64, 17)
    assert [RoutingLayout(1, 9, k).record_bytes for k in (1, 2, 3, 4, 5, 9, 16)] == [1, 2, 4, 4, 8, 16, 16]
    gc.collect()     # the half-built objects warn when collected; let that happen under the filter
