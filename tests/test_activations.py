"""The activation store on its own: random writes and two readers at once, against numpy."""

import numpy as np

from gateware.activations import ActivationStore
from tests.sim_helpers import run_simulation

N, DEPTH = 4, 16


def test_two_readers_see_every_write():
    """Each cycle a random write (or none) and a read on each of A and R at its own address:
    every read returns the word as it was before the previous cycle's write (writes are
    registered on the way in), the cycle after the read, and a port not enabled keeps its last
    word."""
    dut = ActivationStore(N, DEPTH)
    rng = np.random.default_rng(0)
    mem = np.zeros((DEPTH, N), dtype=np.int64)
    ports = [dut.a, dut.r]

    async def testbench(ctx):
        held = [mem[0].copy() for _ in ports]
        pending = None
        for cycle in range(200):
            write = rng.random() < 0.6
            addr, word = int(rng.integers(DEPTH)), rng.integers(-32768, 32768, N)
            ctx.set(dut.write.valid, write)
            ctx.set(dut.write.payload, {"addr": addr, "data": [int(v) for v in word]})
            reads = []
            for port in ports:
                en, at = rng.random() < 0.8, int(rng.integers(DEPTH))
                ctx.set(port.en, en)
                ctx.set(port.addr, at)
                reads.append(at if en else None)
            await ctx.tick()
            for k, (port, at) in enumerate(zip(ports, reads)):
                if at is not None:
                    held[k] = mem[at].copy()
                got = [int(v) for v in ctx.get(port.data)]
                assert got == held[k].tolist(), f"cycle {cycle}, port {'ar'[k]}"
            if pending is not None:
                mem[pending[0]] = pending[1]
            pending = (addr, word) if write else None

    run_simulation(dut, testbench)
