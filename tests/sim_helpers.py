"""Testbench helpers shared by the gateware tests (Amaranth 0.5 async testbenches)."""

import numpy as np
from amaranth.sim import Simulator

__all__ = ["run_simulation", "watchdog", "memory_port", "signature_of", "stream_put", "stream_get",
           "stream_get_timed", "stream_send", "stream_receive", "stream_through", "row_beats",
           "row_outputs", "check_lone_row", "check_steady_period"]


def run_simulation(dut, *testbenches, processes=(), models=(), vcd=None):
    """Simulate ``dut`` with a 100 MHz clock until every testbench returns.

    ``models`` are callables that add their own processes to the ``Simulator`` (a DRAM model).
    """
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for model in models:
        model(sim)
    for tb in testbenches:
        sim.add_testbench(tb)
    for proc in processes:
        sim.add_process(proc)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()


def watchdog(edges, done=None):
    """A background process failing the run after ``edges`` clock edges (unless ``done``, a
    list, has an entry by then), so a lost or extra transfer fails the test instead of hanging it.
    """
    async def process(ctx):
        for _ in range(edges):
            if done:
                return
            await ctx.tick()
        raise AssertionError(f"no completion within {edges} clock edges")
    return process


def memory_port(dut, mem, prefix="mem"):
    """A background process acting as a read port with one cycle of latency over ``mem``
    (``[words, lanes]``) on ``dut``'s ``{prefix}_addr``, ``{prefix}_en`` and ``{prefix}_data``."""
    addr, en, data = (getattr(dut, f"{prefix}_{name}") for name in ("addr", "en", "data"))

    async def process(ctx):
        while True:
            *_, enabled, address = await ctx.tick().sample(en, addr)
            if enabled:
                ctx.set(data, [int(v) for v in mem[address % len(mem)]])
    return process


def signature_of(component):
    """``component``'s signature, for a component built only for it: the component and the
    elaboratables it holds are marked so, or Amaranth warns when they are collected (possibly
    during another test) that they were never elaborated."""
    for obj in (component, *vars(component).values()):
        if hasattr(obj, "elaborate"):
            obj._MustUse__silence = True
    return component.signature


async def stream_put(ctx, stream, payload):
    """Offer ``payload`` on a ``lib.stream`` sink until it is taken (valid never waits for ready)."""
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, payload)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream):
    """Take one payload from a ``lib.stream`` source."""
    ctx.set(stream.ready, 1)
    payload, = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload


async def stream_get_timed(ctx, stream):
    """Take one payload from a ``lib.stream`` source; also return the clock edges waited.

    Called right after an input transfer, the count is the source's latency in edges.
    """
    ctx.set(stream.ready, 1)
    edges = 0
    while not ctx.get(stream.valid):
        await ctx.tick()
        edges += 1
    payload = ctx.get(stream.payload)
    await ctx.tick()
    ctx.set(stream.ready, 0)
    return payload, edges


async def stream_send(ctx, stream, payloads, *, gaps=None, gap_rate=0.3, cycles=None):
    """Offer each of ``payloads`` on a sink in turn, counting clock edges from the call.

    With a ``numpy`` Generator as ``gaps``, idles a cycle before a transfer with probability
    ``gap_rate`` (repeatedly). ``ready`` is sampled at the edge, so it may follow the DUT's own
    output ready combinationally. Appends each transfer's edge number to ``cycles`` if given.
    """
    edge = 0
    for payload in payloads:
        while gaps is not None and gaps.random() < gap_rate:
            ctx.set(stream.valid, 0)
            await ctx.tick()
            edge += 1
        ctx.set(stream.valid, 1)
        ctx.set(stream.payload, payload)
        while True:
            *_, ready = await ctx.tick().sample(stream.ready)
            edge += 1
            if ready:
                break
        if cycles is not None:
            cycles.append(edge)
    ctx.set(stream.valid, 0)


async def stream_receive(ctx, stream, count, *, stalls=None, stall_rate=0.3, cycles=None):
    """Take ``count`` payloads from a source and return them, counting clock edges from the call.

    With a ``numpy`` Generator as ``stalls``, holds ``ready`` low for a cycle with probability
    ``stall_rate``. Appends each transfer's edge number to ``cycles`` if given.
    """
    edge, payloads = 0, []
    while len(payloads) < count:
        ready = stalls is None or stalls.random() >= stall_rate
        ctx.set(stream.ready, ready)
        *_, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        edge += 1
        if valid and ready:
            payloads.append(payload)
            if cycles is not None:
                cycles.append(edge)
    ctx.set(stream.ready, 0)
    return payloads


def stream_through(dut, beats, count, *, i=None, o=None, settings=(), prelude=None,
                   in_gaps=None, gap_rate=0.3, out_stalls=None, stall_rate=0.3, drain=0,
                   timeout=None, processes=(), models=()):
    """Send ``beats`` into ``i`` and take ``count`` payloads from ``o``, concurrently.

    ``i`` and ``o`` default to ``dut.i`` and ``dut.o``. ``settings`` is ``(signal, value)``
    pairs for the DUT's static inputs, set before the first beat; ``prelude``, an async
    function of ``ctx``, runs after them and before either side starts (loading parameters).
    ``in_gaps``/``out_stalls`` are seeded generators (see :func:`stream_send` and
    :func:`stream_receive`). After the last payload the consumer watches ``o`` for ``drain``
    more edges and fails if anything more comes; with ``timeout`` edges a :func:`watchdog`
    fails a run that does not finish. ``processes`` and ``models`` go to
    :func:`run_simulation`. Returns the payloads and the edge numbers of every input and
    output transfer, counted from the same start.
    """
    i = dut.i if i is None else i
    o = dut.o if o is None else o
    in_cycles, out_cycles, outs, started, done = [], [], [], [], []

    async def producer(ctx):
        for signal, value in settings:
            ctx.set(signal, value)
        if prelude is not None:
            await prelude(ctx)
        started.append(True)
        await stream_send(ctx, i, beats, gaps=in_gaps, gap_rate=gap_rate, cycles=in_cycles)

    async def consumer(ctx):
        while not started:
            await ctx.tick()
        outs.extend(await stream_receive(ctx, o, count, stalls=out_stalls, stall_rate=stall_rate,
                                         cycles=out_cycles))
        ctx.set(o.ready, 1)
        for _ in range(drain):
            await ctx.tick()
            assert not ctx.get(o.valid), f"more than {count} transfers on the output"
        done.append(True)

    background = list(processes)
    if timeout is not None:
        background.append(watchdog(timeout, done))
    run_simulation(dut, producer, consumer, processes=background, models=models)
    return outs, in_cycles, out_cycles


def row_beats(rows, field):
    """Transfers of row groups ``rows`` (groups, lanes, n): element ``e`` of every lane in one
    transfer (``{field: [...], "last": ...}``), ``last`` on each row's final element."""
    groups, _, n = rows.shape
    return [{field: [int(v) for v in rows[g, :, e]], "last": int(e == n - 1)}
            for g in range(groups) for e in range(n)]


def row_outputs(payloads, field, shape):
    """The inverse of :func:`row_beats` on a unit's outputs, as an array of ``shape`` (groups,
    lanes, n); checks that ``last`` marks exactly each row's final element."""
    groups, lanes, n = shape
    values = np.array([[int(p[field][k]) for k in range(lanes)] for p in payloads], dtype=np.int64)
    last = np.array([int(p.last) for p in payloads]).reshape(groups, n)
    assert (last == (np.arange(n) == n - 1)).all(), "last must mark exactly each row's final element"
    return values.reshape(groups, n, lanes).transpose(0, 2, 1)


def check_lone_row(dut, in_cycles, out_cycles, n, what):
    """One row group alone through a two-pass unit: ``n`` inputs, one per ``input_period``
    cycles, ``latency`` edges, then ``n`` output cycles back to back."""
    step = dut.input_period
    assert in_cycles == list(range(in_cycles[0], in_cycles[0] + step * n, step))
    assert out_cycles == list(range(out_cycles[0], out_cycles[0] + n))
    gap = out_cycles[0] - in_cycles[-1]
    print(f"{what} n={n}: last input -> first output {gap} edges, "
          f"row total {out_cycles[-1] - in_cycles[0] + 1} cycles")
    assert gap == dut.latency
    assert out_cycles[-1] - in_cycles[0] + 1 == dut.input_span(n) + n + dut.latency - 1


def check_steady_period(dut, out_cycles, n, what):
    """Back-to-back row groups: after the first ``banks``, every ``banks`` consecutive row
    periods sum to ``banks * steady_period(n)``, exactly."""
    starts = out_cycles[::n]
    periods = [b - a for a, b in zip(starts, starts[1:])]
    print(f"{what} banks={dut.banks} n={n}: row periods {periods}, "
          f"steady_period {dut.steady_period(n)}")
    steady = periods[dut.banks:]
    windows = {sum(steady[k:k + dut.banks]) for k in range(len(steady) - dut.banks + 1)}
    assert windows == {dut.banks * dut.steady_period(n)}
