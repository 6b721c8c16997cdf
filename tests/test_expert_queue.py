"""Expert queue builder gateware against ``golden.expert_queue.build_expert_queues``: random
routings, empty experts, every token to one expert, reuse over layers; cycles per token and per
entry counted in clock edges."""

import numpy as np
import pytest

from gateware.expert_queue import ExpertQueueBuilder
from golden.expert_queue import build_expert_queues
from tests.sim_helpers import (run_simulation, stream_get_timed, stream_put, stream_receive,
                               stream_send)


def _routing(rng, tokens, num_experts, k, weight_bits=16, experts=None):
    """Random distinct ``k`` experts per token (from ``experts`` if given) and weights."""
    pool = np.arange(num_experts) if experts is None else np.asarray(experts)
    indices = np.array([rng.choice(pool, k, replace=False) for _ in range(tokens)])
    weights = rng.integers(0, 1 << weight_bits, (tokens, k))
    return indices.reshape(tokens, k), weights


def _simulate(dut, layers, *, in_gaps=None, out_stalls=None):
    """Build and read each layer ``(indices, weights, requests)`` in turn on one ``dut``.

    Returns per layer: the ``experts`` transfers ``(expert, count, last)``, the queue entries
    per request ``[(token, weight), ...]``, and the edges of token and entry transfers."""
    results = []
    entries = []          # every queue transfer, all layers, in order
    entry_edges = []      # edges counted from the start of each layer's reads
    expected = [sum(int(build_expert_queues(i, w, dut.num_experts).counts[r]) for r in req)
                for i, w, req in layers]

    async def producer(ctx):
        done = 0
        for (indices, weights, requests), count in zip(layers, expected):
            beats = [{"token": t, "expert": [int(e) for e in indices[t]],
                      "weight": [int(x) for x in weights[t]], "last": t == len(indices) - 1}
                     for t in range(len(indices))]
            token_edges = []
            await stream_send(ctx, dut.i, beats, gaps=in_gaps, cycles=token_edges)
            active = len(np.unique(indices))
            listed = await stream_receive(ctx, dut.experts, active, stalls=out_stalls)
            # read_count names each listed expert's count by index, as the experts stream did.
            for p in listed:
                ctx.set(dut.read.payload, int(p.expert))
                assert ctx.get(dut.read_count) == int(p.count)
            await stream_send(ctx, dut.read, [int(r) for r in requests], gaps=in_gaps)
            done += count
            while len(entries) < done:
                await ctx.tick()
            assert not ctx.get(dut.experts.valid)
            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
            results.append(([(int(p.expert), int(p.count), int(p.last)) for p in listed],
                             token_edges))

    async def consumer(ctx):
        for count in expected:
            entries.extend(await stream_receive(ctx, dut.queue, count, stalls=out_stalls,
                                                cycles=entry_edges))

    run_simulation(dut, producer, consumer)
    out, at = [], 0
    for (indices, weights, requests), (listed, token_edges), count in zip(layers, results,
                                                                          expected):
        got = entries[at:at + count]
        edges = entry_edges[at:at + count]
        at += count
        out.append((listed, got, token_edges, edges))
    return out


def _check(num_experts, max_tokens, k, layers, **kw):
    dut = ExpertQueueBuilder(num_experts, max_tokens, k)
    results = _simulate(dut, layers, **kw)
    for (indices, weights, requests), (listed, got, _, _) in zip(layers, results):
        q = build_expert_queues(indices, weights, num_experts)
        want_listed = [(int(e), int(q.counts[e]), int(j == len(q.active) - 1))
                       for j, e in enumerate(q.active)]
        assert listed == want_listed
        want = []
        for r in requests:
            tokens, w = q.queue(int(r))
            want += [(int(t), int(x), int(j == len(tokens) - 1))
                     for j, (t, x) in enumerate(zip(tokens, w))]
        assert [(int(p.token), int(p.weight), int(p.last)) for p in got] == want
    return dut, results


def _active(indices):
    return [int(e) for e in np.unique(indices)]


@pytest.mark.parametrize("num_experts,max_tokens,k,tokens", [(16, 129, 2, 40), (4, 8, 1, 8),
                                                             (5, 20, 5, 20), (8, 16, 3, 1)])
def test_random_routing(num_experts, max_tokens, k, tokens):
    rng = np.random.default_rng(num_experts * 7 + k)
    indices, weights = _routing(rng, tokens, num_experts, k)
    _check(num_experts, max_tokens, k, [(indices, weights, _active(indices))])


def test_empty_experts_and_one_expert_for_all():
    """Most experts empty; every token to expert 3 (queue at full capacity); requests for
    empty experts yield nothing; queues read out of order and twice."""
    rng = np.random.default_rng(2)
    e, cap = 8, 12
    one = (np.full((cap, 1), 3), rng.integers(0, 1 << 16, (cap, 1)))
    few = _routing(rng, cap, e, 1, experts=[1, 6])
    last_only = (np.full((cap, 1), e - 1), rng.integers(0, 1 << 16, (cap, 1)))
    layers = [(*one, [3, 0, 7, 3]), (*few, [6, 2, 1, 6]), (*last_only, [e - 1])]
    _check(e, cap, 1, layers)


def test_reuse_over_layers_with_backpressure():
    rng = np.random.default_rng(3)
    layers = []
    for tokens in (30, 7, 30):
        indices, weights = _routing(rng, tokens, 6, 2)
        layers.append((indices, weights, _active(indices)[::-1]))
    _check(6, 30, 2, layers, in_gaps=np.random.default_rng(4), out_stalls=np.random.default_rng(5))


def test_cycles_per_token_and_entry():
    """One cycle per token to build; one cycle per entry to read, with no gap between queues
    requested back to back."""
    rng = np.random.default_rng(6)
    tokens, num_experts, k = 64, 16, 2
    indices, weights = _routing(rng, tokens, num_experts, k)
    active = _active(indices)
    _, [(listed, _, token_edges, edges)] = _check(num_experts, tokens, k,
                                                  [(indices, weights, active)])
    build = token_edges[-1] - token_edges[0] + 1
    read = edges[-1] - edges[0] + 1
    print(f"ExpertQueueBuilder E={num_experts} k={k}: {tokens} tokens built in {build} cycles "
          f"({build / tokens:g} per token); {len(edges)} entries of {len(active)} queues read in "
          f"{read} cycles ({read / len(edges):g} per entry)")
    assert token_edges == list(range(token_edges[0], token_edges[0] + tokens))
    assert edges == list(range(edges[0], edges[0] + len(edges)))


def test_read_latency():
    dut = ExpertQueueBuilder(4, 4, 2)

    async def tb(ctx):
        await stream_put(ctx, dut.i, {"token": 0, "expert": [2, 1], "weight": [5, 6], "last": 1})
        await ctx.tick()
        await stream_put(ctx, dut.read, 2)
        entry, edges = await stream_get_timed(ctx, dut.queue)
        assert (entry.token, entry.weight, entry.last) == (0, 5, 1)
        assert edges + 1 == dut.read_latency

    run_simulation(dut, tb)
