"""SeqDivider against Python's ``//`` and ``%``."""

import random

import pytest

from gateware.seq_divider import SeqDivider
from tests.sim_helpers import run_simulation, stream_get, stream_put


def _check(dut, cases):
    results = []

    async def tb(ctx):
        for dividend, divisor in cases:
            await stream_put(ctx, dut.i, {"dividend": dividend, "divisor": divisor})
            start = ctx.get(dut.i.valid)  # quiet: the transfer already happened
            del start
            cycles = 0
            ctx.set(dut.o.ready, 1)
            while not ctx.get(dut.o.valid):
                await ctx.tick()
                cycles += 1
            results.append((ctx.get(dut.o.payload.quotient), ctx.get(dut.o.payload.remainder),
                            cycles))
            await ctx.tick()
            ctx.set(dut.o.ready, 0)

    run_simulation(dut, tb)
    for (dividend, divisor), (q, r, cycles) in zip(cases, results):
        assert (q, r) == divmod(dividend, divisor), (dividend, divisor)
        assert cycles == dut.latency - 1
