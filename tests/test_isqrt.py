"""SeqIsqrt against ``math.isqrt``, with its latency checked edge by edge."""

import math
import random

import pytest

from gateware.isqrt import SeqIsqrt
from tests.sim_helpers import run_simulation, stream_get_timed, stream_put


def _run(dut, values):
    results = []

    async def tb(ctx):
        for x in values:
            await stream_put(ctx, dut.i, x)
            results.append(await stream_get_timed(ctx, dut.o))

    run_simulation(dut, tb)
    for x, (root, edges) in zip(values, results):
        assert root == math.isqrt(x), x
        assert edges == dut.latency


@pytest.mark.parametrize("width", [1, 2, 7, 16])
def test_exhaustive_small_and_random(width):
    rng = random.Random(width)
    values = list(range(min(1 << width, 40))) + [(1 << width) - 1]
    values += [rng.randrange(1 << width) for _ in range(20)]
    _run(SeqIsqrt(width), values)


def test_layernorm_width():
    """The 65-bit radicand ``2**64 // V`` of LayerNorm, with perfect squares and their neighbours."""
    rng = random.Random(65)
    values = [1 << 64, (1 << 64) - 1, 0, 1, 2, 3, 4]
    for _ in range(10):
        r = rng.randrange(1 << 32)
        values += [r * r - 1 if r else 0, r * r, r * r + 1]
    values += [rng.randrange(1 << 65) for _ in range(10)]
    _run(SeqIsqrt(65), values)
