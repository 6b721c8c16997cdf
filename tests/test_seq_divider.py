"""SeqDivider against Python's ``divmod``, with its latency checked edge by edge."""

import random

import pytest

from gateware.seq_divider import SeqDivider
from tests.sim_helpers import run_simulation, stream_get_timed, stream_put, stream_through


def _run(dut, cases):
    results = []

    async def tb(ctx):
        for dividend, divisor in cases:
            await stream_put(ctx, dut.i, {"dividend": dividend, "divisor": divisor})
            payload, edges = await stream_get_timed(ctx, dut.o)
            results.append((payload.quotient, payload.remainder, edges))

    run_simulation(dut, tb)
    for (dividend, divisor), (q, r, edges) in zip(cases, results):
        assert (q, r) == divmod(dividend, divisor), (dividend, divisor)
        assert edges == dut.latency


def test_full_quotient_random():
    rng = random.Random(1)
    dut = SeqDivider(20, 12)
    cases = [(rng.randrange(1 << 20), rng.randrange(1, 1 << 12)) for _ in range(40)]
    cases += [(0, 1), ((1 << 20) - 1, 1), ((1 << 20) - 1, (1 << 12) - 1), (5, 7), (7, 7)]
    _run(dut, cases)


@pytest.mark.parametrize("divisor", [1, 2, 3, 7, (1 << 46) - 1, 12345678901])
def test_layernorm_reciprocal(divisor):
    """``2**64 // V`` as LayerNorm asks it: a 65-bit quotient."""
    _run(SeqDivider(65, 47), [(1 << 64, divisor)])


def test_narrow_quotient_softmax_reciprocal():
    """``2**40 // S`` with ``S >= 2**15`` fits 26 quotient bits: 26 iterations suffice."""
    rng = random.Random(2)
    dut = SeqDivider(41, 28, quotient_width=26)
    divisors = [1 << 15, (1 << 15) + 1, (1 << 28) - 1] + [rng.randrange(1 << 15, 1 << 28)
                                                        for _ in range(20)]
    _run(dut, [(1 << 40, s) for s in divisors])


def test_back_to_back_throughput():
    """With ``o`` always ready, a new division starts every ``quotient_width + 2`` cycles."""
    dut = SeqDivider(16, 8)
    cases = [(1000 + 37 * k, 3 + k) for k in range(8)]
    outs, starts, _ = stream_through(dut, [{"dividend": a, "divisor": b} for a, b in cases],
                                     len(cases))
    assert [int(p.quotient) for p in outs] == [a // b for a, b in cases]
    periods = {b - a for a, b in zip(starts, starts[1:])}
    print(f"SeqDivider(16, 8): one division every {periods} cycles")
    assert periods == {dut.quotient_width + 2}
