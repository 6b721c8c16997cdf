"""The Verilator engine against Amaranth's simulator, and its ports, cache, hooks and errors."""

import ctypes
import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from sim.verilator_engine import VerilatorError, VerilatorModel
from tests.sim_helpers import run_simulation

ROM_SOURCE = Path(__file__).with_name("verilator_rom.cpp")
STATUS = data.StructLayout({"count": unsigned(12), "negative": 1})


class Accumulator(wiring.Component):
    """Registered and combinational outputs, a synchronous clear and a struct-shaped port."""

    x: In(signed(8))
    en: In(1)
    clear: In(1)
    acc: Out(signed(16))
    peek: Out(signed(17))
    status: Out(STATUS)

    def elaborate(self, platform):
        m = Module()
        count = Signal(12, init=5)
        with m.If(self.clear):
            m.d.sync += [self.acc.eq(0), count.eq(0)]
        with m.Elif(self.en):
            m.d.sync += [self.acc.eq(self.acc + self.x), count.eq(count + 1)]
        m.d.comb += [
            self.peek.eq(self.acc + self.x),
            self.status.count.eq(count),
            self.status.negative.eq(self.acc < 0),
        ]
        return m


class WidePorts(wiring.Component):
    """Ports across Verilator's 8/16/32/64-bit and multi-word storage, and a zero-width one."""

    a: In(100)
    b: In(signed(100))
    c: In(signed(33))
    d: In(64)
    s: In(data.StructLayout({"lo": unsigned(60), "hi": signed(40)}))
    nothing: In(0)
    a_q: Out(100)
    b_q: Out(signed(100))
    c_neg: Out(signed(34))
    d_q: Out(64)
    s_q: Out(data.StructLayout({"lo": unsigned(60), "hi": signed(40)}))

    def elaborate(self, platform):
        m = Module()
        m.d.sync += [self.a_q.eq(self.a), self.b_q.eq(self.b), self.d_q.eq(self.d),
                     self.s_q.eq(self.s)]
        m.d.comb += self.c_neg.eq(-self.c)
        return m


class RomReader(wiring.Component):
    """Walks addresses one per cycle and sums the words a C++ ROM answers."""

    addr: Out(10)
    data: In(32)
    total: Out(48)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += [self.addr.eq(self.addr + 1), self.total.eq(self.total + self.data)]
        return m


def _stimulus(cycles, seed):
    rng = random.Random(seed)
    return [(rng.randrange(-128, 128), int(rng.random() < 0.8), int(rng.random() < 0.02))
            for _ in range(cycles)]


def test_matches_pysim_cycle_by_cycle():
    stimulus = _stimulus(3000, seed=1)
    dut = Accumulator()
    expected = []

    async def tb(ctx):
        for x, en, clear in stimulus:
            ctx.set(dut.x, x)
            ctx.set(dut.en, en)
            ctx.set(dut.clear, clear)
            expected.append((ctx.get(dut.acc), ctx.get(dut.peek),
                             ctx.get(dut.status.as_value())))
            await ctx.tick()

    run_simulation(dut, tb)

    vdut = Accumulator()
    model = VerilatorModel(vdut, name="test_accumulator")
    got = []
    for x, en, clear in stimulus:
        model.set("x", x)
        model.set(("en",), en)
        model.set(vdut.clear, clear)
        got.append((model.get("acc"), model.get("peek"), model.get(vdut.status)))
        model.tick()
    assert got == expected
    assert model.cycle == len(stimulus)


def test_starts_from_init_and_reset_restarts():
    model = VerilatorModel(Accumulator(), name="test_accumulator")
    assert STATUS.from_bits(model.get("status")).count == 5
    model.set("en", 1)
    model.set("x", -3)
    model.tick(10)
    assert (model.get("acc"), model.cycle) == (-30, 10)
    assert STATUS.from_bits(model.get("status")).negative == 1
    model.reset()
    assert (model.get("acc"), model.cycle) == (0, 0)
    assert STATUS.from_bits(model.get("status")).count == 5, "reset restores init"


def test_port_errors():
    model = VerilatorModel(Accumulator(), name="test_accumulator")
    with pytest.raises(ValueError, match="output"):
        model.set("acc", 1)
    with pytest.raises(ValueError, match="does not fit"):
        model.set("x", 256)
    with pytest.raises(KeyError, match="no port"):
        model.get("nonexistent")


def test_wide_and_signed_ports_round_trip():
    dut = WidePorts()
    model = VerilatorModel(dut, name="test_wide_ports")
    rng = random.Random(2)
    layout = dut.s.shape()
    edge_values = {100: [0, 1, (1 << 100) - 1, 1 << 99, 0xDEADBEEF << 64],
                   64: [0, (1 << 64) - 1, 1 << 63, 1 << 32]}
    for trial in range(200):
        a = edge_values[100][trial] if trial < 5 else rng.randrange(1 << 100)
        b = [-(1 << 99), (1 << 99) - 1, -1][trial] if trial < 3 else \
            rng.randrange(-(1 << 99), 1 << 99)
        c = rng.randrange(-(1 << 32), 1 << 32)
        d = edge_values[64][trial] if trial < 4 else rng.randrange(1 << 64)
        lo, hi = rng.randrange(1 << 60), rng.randrange(-(1 << 39), 1 << 39)
        model.set("a", a)
        model.set(dut.b, b)
        model.set("c", c)
        model.set("d", d)
        model.set("s", layout.const({"lo": lo, "hi": hi}))
        assert model.get("c_neg") == -c
        model.tick()
        assert (model.get("a_q"), model.get("b_q"), model.get("d_q")) == (a, b, d)
        s_q = layout.from_bits(model.get(("s_q",)))
        assert (s_q.lo, s_q.hi) == (lo, hi)
    model.set("a", -1)
    model.tick()
    assert model.get("a_q") == (1 << 100) - 1, "negative values are two's complement"
    model.set("nothing", 0)
    assert model.get("nothing") == 0


def test_build_cache_skips_recompiling(tmp_path, capsys):
    start = time.perf_counter()
    first = VerilatorModel(Accumulator(), name="cached", build_dir=tmp_path)
    cold = time.perf_counter() - start
    built = (first.build_path / "model.so").stat().st_mtime_ns
    start = time.perf_counter()
    second = VerilatorModel(Accumulator(), name="cached", build_dir=tmp_path)
    warm = time.perf_counter() - start
    assert first.compiled and not second.compiled
    assert first.build_path == second.build_path
    assert (second.build_path / "model.so").stat().st_mtime_ns == built
    with capsys.disabled():
            print(f"\nVerilator build of a small design: {first.compile_seconds:.1f} s compiling "
              f"(runtime included), construction {cold:.1f} s cold, {warm:.2f} s from the cache")


def test_throughput(capsys):
    model = VerilatorModel(Accumulator(), name="test_accumulator")
    model.set("en", 1)
    model.set("x", 1)
    cycles = 2_000_000
    start = time.perf_counter()
    model.tick(cycles)
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nVerilator: {cycles / elapsed / 1e6:.1f} M cycles/s for the accumulator "
              f"(tick({cycles}) in C++)")


def test_extra_cpp_device_drives_ports():
    functions = {
        "rom_attach": (ctypes.c_int, [ctypes.c_uint32]),
        "rom_write": (None, [ctypes.c_uint32, ctypes.c_uint32]),
        "rom_sampled_addr": (ctypes.c_uint64, [ctypes.c_uint32]),
    }
    model = VerilatorModel(RomReader(), name="test_rom_reader", extra_sources=[ROM_SOURCE],
                           extra_functions=functions)
    assert model.extra.rom_attach(1024) == 0
    assert model.extra.rom_attach(1024) == -1, "a device name is attached once"
    rng = random.Random(3)
    words = [rng.randrange(1 << 32) for _ in range(1024)]
    for index, word in enumerate(words):
        model.extra.rom_write(index, word)
    cycles = 3000
    model.tick(cycles)
    assert model.get("total") == sum(words[i % 1024] for i in range(cycles)) % (1 << 48)
    assert [model.extra.rom_sampled_addr(i) for i in (0, 1, 1023, 1024, 2999)] == \
        [0, 1, 1023, 0, 2999 % 1024]

    with pytest.raises(VerilatorError, match="not exported"):
        VerilatorModel(RomReader(), name="test_rom_reader", extra_sources=[ROM_SOURCE],
                       extra_functions={"rom_missing": (None, [])})


def test_compile_error_reports_compiler_output(tmp_path):
    bad = tmp_path / "bad.cpp"
    bad.write_text('#include "vm.h"\n'
                   'extern "C" int broken(vm_ctx *ctx) { return undeclared_name; }\n')
    with pytest.raises(VerilatorError, match="undeclared_name") as info:
        VerilatorModel(RomReader(), name="test_bad_source", extra_sources=[bad],
                       build_dir=tmp_path / "build")
    assert "make failed" in str(info.value)


def test_missing_verilator_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "verilator", None)
    with pytest.raises(VerilatorError, match="not installed"):
        VerilatorModel(Accumulator())


def test_mac_array_matches_pysim_cycle_by_cycle():
    """The project's MAC array under both engines: random operands, random valid/ready."""
    from gateware.mac_array import MACArray

    rows, cols, cycles = 3, 4, 600
    rng = np.random.default_rng(7)
    dut = MACArray(rows, cols)
    a_half, w_half = 1 << (dut.a_bits - 1), 1 << (dut.w_bits - 1)
    stimulus = [(rng.integers(-a_half, a_half, rows).tolist(), rng.integers(-w_half, w_half, cols).tolist(),
                 int(rng.random() < 0.15), int(rng.random() < 0.8), int(rng.random() < 0.7))
                for _ in range(cycles)]

    def payload(dut, a, w, last):
        return dut.i.payload.shape().const({"a": a, "w": w, "last": last})

    expected = []

    async def tb(ctx):
        for a, w, last, valid, ready in stimulus:
            ctx.set(dut.i.payload, payload(dut, a, w, last))
            ctx.set(dut.i.valid, valid)
            ctx.set(dut.o.ready, ready)
            expected.append((ctx.get(dut.i.ready), ctx.get(dut.o.valid),
                             ctx.get(dut.o.payload.as_value())))
            await ctx.tick()

    run_simulation(dut, tb)

    vdut = MACArray(rows, cols)
    model = VerilatorModel(vdut, name="test_mac_array")
    got = []
    for a, w, last, valid, ready in stimulus:
        model.set(vdut.i.payload, payload(vdut, a, w, last))
        model.set(vdut.i.valid, valid)
        model.set(vdut.o.ready, ready)
        got.append((model.get(vdut.i.ready), model.get(vdut.o.valid), model.get(vdut.o.payload)))
        model.tick()
    assert sum(v for _, v, _ in got) > 20, "the stimulus must drain several columns"
    assert got == expected
