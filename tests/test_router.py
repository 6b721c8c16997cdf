"""Router gateware against ``golden.moe.route`` (and golden topk/requantize/softmax composed as
``route`` composes them): random sizes and layers, partial last groups, ties, saturation, a
dominant expert, k = E, back-pressure; latency and cycles per group counted in clock edges."""

import numpy as np
import pytest

from amaranth.hdl import Fragment, Module
from amaranth.lib import wiring

from gateware.expert_queue import ExpertQueueBuilder
from gateware.router import Router
from golden.expert_queue import build_expert_queues
from golden.fixedpoint import RES_BITS, requantize
from golden.moe import GATE_FRAC, route
from golden.softmax import softmax
from golden.topk import topk
from tests.sim_helpers import (run_simulation, stream_get, stream_put, stream_receive, stream_send,
                               stream_through, watchdog)

I32 = (-(1 << 31), (1 << 31) - 1)


def _expected(logits, mult, shift, k):
    """golden ``route`` from its logits on: ``(indices, weights)``, each ``[T, k]``."""
    indices, _ = topk(logits, k)
    probs = softmax(requantize(logits, mult, shift, RES_BITS), GATE_FRAC)
    return indices, np.take_along_axis(probs, indices, axis=-1)


def _beats(layers, lanes, rng):
    """Input transfers for ``layers`` (each ``[T, E]`` logits), lanes beyond a partial last
    group filled with random junk; returns the beats and the groups per layer."""
    beats = []
    for logits in layers:
        tokens, num_experts = logits.shape
        groups = -(-tokens // lanes)
        for g in range(groups):
            block = rng.integers(*I32, (lanes, num_experts), endpoint=True)
            valid = min(lanes, tokens - g * lanes)
            block[:valid] = logits[g * lanes:g * lanes + valid]
            for e in range(num_experts):
                beats.append({"logits": [int(v) for v in block[:, e]], "last": e == num_experts - 1,
                              "token_base": g * lanes, "valid_lanes": valid,
                              "final": g == groups - 1})
    return beats


def _run(lanes, k, layers, mult, shift, *, max_tokens=None, in_gaps=None, out_stalls=None,
         stall_rate=0.3, seed=0):
    """Stream ``layers`` through a Router and check every emitted field against golden.

    Returns the router and the edges of every input and output transfer."""
    num_experts = layers[0].shape[1]
    max_tokens = max_tokens or max(len(x) for x in layers)
    dut = Router(lanes, num_experts, k, max_tokens)
    beats = _beats(layers, lanes, np.random.default_rng(seed))
    count = sum(len(x) for x in layers)
    outs, in_cycles, out_cycles = stream_through(
        dut, beats, count, settings=[(dut.gate_mult, mult), (dut.gate_shift, shift)],
        in_gaps=in_gaps, out_stalls=out_stalls, stall_rate=stall_rate,
        timeout=100 * (len(beats) + count) + 2000)
    got = iter(outs)
    for n, logits in enumerate(layers):
        indices, weights = _expected(logits, mult, shift, k)
        for t in range(len(logits)):
            p = next(got)
            what = f"layer {n} token {t}: logits {logits[t]}"
            assert int(p.token) == t, what
            assert [int(v) for v in p.expert] == list(indices[t]), what
            assert [int(v) for v in p.weight] == list(weights[t]), what
            assert int(p.last) == (t == len(logits) - 1), what
    return dut, in_cycles, out_cycles


def _gate_logits(rng, tokens, num_experts, spread):
    return rng.integers(-spread, spread, (tokens, num_experts), endpoint=True)


def test_default_size_matches_expert_queue():
    """At the default size (16 lanes, 16 experts, k 2, 256 tokens) ``o`` is the queue's ``i``."""
    r = Router(16, 16, 2, 256)
    q = ExpertQueueBuilder(16, 256, 2)
    assert r.o.signature == q.i.signature.flip()
    top = Module()
    top.submodules.router, top.submodules.queues = r, q
    wiring.connect(top, r.o, q.i)
    Fragment.get(top, None)


def test_feeds_expert_queue():
    """Router into ExpertQueueBuilder: the queues equal golden's counting sort of ``route``."""
    rng = np.random.default_rng(5)
    lanes, num_experts, k, tokens = 3, 5, 2, 10
    logits = _gate_logits(rng, tokens, num_experts, 1 << 20)
    mult, shift = 50000, 26
    queues = build_expert_queues(*_expected(logits, mult, shift, k), num_experts)
    top = Module()
    top.submodules.router = r = Router(lanes, num_experts, k, tokens)
    top.submodules.queues = q = ExpertQueueBuilder(num_experts, tokens, k)
    wiring.connect(top, r.o, q.i)
    listed, got = [], {}

    async def producer(ctx):
        ctx.set(r.gate_mult, mult)
        ctx.set(r.gate_shift, shift)
        await stream_send(ctx, r.i, _beats([logits], lanes, rng), gaps=np.random.default_rng(6))

    async def reader(ctx):
        while not listed or not listed[-1][2]:
            p = await stream_get(ctx, q.experts)
            listed.append((int(p.expert), int(p.count), int(p.last)))
        for e, count, _ in listed:
            await stream_put(ctx, q.read, e)
            entries = await stream_receive(ctx, q.queue, count)
            got[e] = [(int(x.token), int(x.weight)) for x in entries]
        done.append(True)

    done = []
    run_simulation(top, producer, reader, processes=[watchdog(5000, done)])
    assert [e for e, _, _ in listed] == list(queues.active)
    for e in queues.active:
        assert [c for x, c, _ in listed if x == e] == [queues.counts[e]]
        want_t, want_w = queues.queue(e)
        assert got[e] == list(zip(want_t.tolist(), want_w.tolist()))


@pytest.mark.parametrize("seed", range(5))
def test_random_sizes(seed):
    """Random lanes, experts, k and token counts (not multiples of lanes), two layers back to
    back, random stalls on both sides."""
    rng = np.random.default_rng(seed)
    lanes = int(rng.integers(2, 5))
    num_experts = int(rng.integers(4, 9))
    k = int(rng.integers(1, 4))
    layers = []
    for _ in range(2):
        tokens = int(rng.integers(1, 4)) * lanes + int(rng.integers(1, lanes))
        # Spreads a few log2 units wide after requantisation: probabilities far from 0 and 1.
        layers.append(_gate_logits(rng, tokens, num_experts, 1 << 20))
    mult, shift = int(rng.integers(1 << 14, 1 << 16)), int(rng.integers(24, 28))
    _run(lanes, k, layers, mult, shift, in_gaps=np.random.default_rng(seed + 10),
         out_stalls=np.random.default_rng(seed + 20), seed=seed)


def test_against_route():
    """int10 tokens and int8 gate weights through golden ``route`` itself."""
    rng = np.random.default_rng(42)
    tokens, dim, num_experts, k, lanes = 11, 24, 6, 2, 4
    x = rng.integers(-512, 512, (tokens, dim))
    gate_w = rng.integers(-128, 128, (num_experts, dim))
    mult, shift = 23000, 16
    indices, weights, logits = route(x, gate_w, mult, shift, k)
    want = _expected(logits, mult, shift, k)
    np.testing.assert_array_equal(want[0], indices)
    np.testing.assert_array_equal(want[1], weights)
    _run(lanes, k, [logits], mult, shift, out_stalls=np.random.default_rng(1))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_edge_logits(k):
    """Ties (all equal, equal pairs), int32 extremes saturating the requantisation both ways,
    one expert dominating, and k = E with 5 experts."""
    e, big = 5, 1 << 30
    logits = np.array([
        [7] * e,
        [I32[0]] * e,
        [I32[1]] * e,
        [3, 5, 5, 1, 5],
        [I32[0], I32[1], 0, I32[1], I32[0]],
        [0, 0, big, 0, 0],
        [-big, -big, -big, -big, big],
        [I32[1], I32[0], I32[1], I32[0], I32[1]],
        [1, 2, 3, 4, 5],
        [5, 4, 3, 2, 1],
        [-1, -1, 0, -1, -1],
    ], dtype=np.int64)
    # Large multiplier, small shift: everything beyond a few units saturates to int16.
    _run(3, k, [logits], 65535, 20, in_gaps=np.random.default_rng(k),
         out_stalls=np.random.default_rng(k + 1))
    # No shift: every nonzero logit saturates.
    _run(3, k, [logits], 65535, 0)


def test_heavy_backpressure():
    """The consumer rarely ready: groups pile up in every stage without loss or reordering."""
    rng = np.random.default_rng(9)
    layers = [_gate_logits(rng, 13, 4, 1 << 16), _gate_logits(rng, 5, 4, 1 << 16)]
    _run(4, 2, layers, 40000, 18, out_stalls=np.random.default_rng(3), stall_rate=0.9)
    _run(2, 2, layers, 40000, 18, in_gaps=np.random.default_rng(4), seed=1)


@pytest.mark.parametrize("lanes,num_experts,k", [
    (2, 4, 1), (4, 8, 3),   # the softmax's reciprocal divider bounds the rate
    (16, 16, 2),            # default size: the softmax's input, 2 cycles per expert: 32
    (2, 28, 2),             # likewise, 56 cycles per group (its row banks would allow 113/3)
    (32, 4, 1),             # the serialiser: one token per cycle
])
def test_latency_and_throughput(lanes, num_experts, k):
    """One group alone: logits taken one per 2 cycles (the softmax's input rate), first token
    ``latency`` edges after the last, then one token per cycle. Back to back: groups settle to
    ``steady_period`` cycles each (exactly, over any three consecutive groups)."""
    rng = np.random.default_rng(lanes + num_experts)
    dut, in_cycles, out_cycles = _run(lanes, k, [_gate_logits(rng, lanes, num_experts, 1 << 20)],
                                      30000, 24)
    assert in_cycles == list(range(1, 2 * num_experts, 2))
    assert out_cycles == list(range(out_cycles[0], out_cycles[0] + lanes))
    print(f"router lanes={lanes} E={num_experts} k={k}: latency "
          f"{out_cycles[0] - in_cycles[-1]} edges")
    assert out_cycles[0] - in_cycles[-1] == dut.latency

    groups = 12
    dut, in_cycles, out_cycles = _run(lanes, k,
                                      [_gate_logits(rng, groups * lanes, num_experts, 1 << 20)],
                                      30000, 24)
    starts = out_cycles[::lanes]
    periods = [b - a for a, b in zip(starts, starts[1:])]
    print(f"router lanes={lanes} E={num_experts} k={k}: group periods {periods}, "
          f"steady_period {dut.steady_period()}")
    steady = periods[4:]
    windows = {sum(steady[j:j + 3]) for j in range(len(steady) - 2)}
    assert windows == {3 * dut.steady_period()}
