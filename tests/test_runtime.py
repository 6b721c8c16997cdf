"""The host runtime: bundle, driver, PYNQ and simulator backends, ``m3vit run``, all on the tiny
config in pysim (both tasks back to back bit-exact with golden), and every bad input."""

import dataclasses
import gc
import hashlib
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from golden.backbone import run_backbone
from gateware.control import ControlRegisters
from gateware.program import Capacity
from model.config import get_config
from model.quantize import calibration_images, quantize_model
from model.weights import default_image, default_weights, image_to_pixels
from runtime import Accelerator, BuildMismatchError, InputError, PynqBackend
from runtime.image import pixels_from_image
from runtime.regs import (CAPACITY_FIELDS, CAPACITY_REGS, CLOCK_HZ, CONTROL_START, CTRL_BASE, ID_VALUE, VERSION,
                          Reg)
from sim.accelerator import golden_routing
from sim.axil import axil_read
from sim.session import PysimSession
from tests.cli_helpers import run_m3vit
from tests.sim_helpers import run_simulation

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny bundle (with a stand-in bitstream), its image, and golden's features per task."""
    tmp = tmp_path_factory.mktemp("runtime")
    cfg = get_config("tiny")
    image = default_image(cfg)
    artifact = quantize_model(cfg, default_weights(cfg).tensors, calibration_images(image))
    artifact.save(tmp / "tiny.npz")
    np.save(tmp / "image.npy", image)
    (tmp / "top.bit").write_bytes(b"stand-in bitstream")
    (tmp / "top.hwh").write_bytes(b"<hwh/>")
    r = run_m3vit("bundle", "--config", "tiny", "--artifact", str(tmp / "tiny.npz"), "--bitstream",
                  str(tmp / "top.bit"), "--out", str(tmp / "bundle"))
    assert r.returncode == 0, r.stderr
    pixels = image_to_pixels(image)
    runs = {task: run_backbone(artifact, pixels, task) for task in range(cfg.num_tasks)}
    return {"dir": tmp, "bundle": tmp / "bundle", "image": tmp / "image.npy",
            "golden": {task: run.output for task, run in runs.items()},
            "routing": {task: golden_routing(cfg, run) for task, run in runs.items()},
            "scale": artifact.scales["residual"], "cap": Capacity.for_config(cfg, 8)}


def test_bundle_contents(tiny):
    b = tiny["bundle"]
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["config"]["name"] == "tiny"
    assert manifest["capacity"] == dataclasses.asdict(tiny["cap"])
    assert tuple(manifest["register_map"]) == VERSION
    assert manifest["output"]["scale"] == tiny["scale"]
    cfg = get_config("tiny")
    assert manifest["routing"] == {"moe_layers": cfg.moe_layers, "top_k": cfg.top_k, "num_experts": cfg.num_experts,
                                   "patch": cfg.patch}
    assert set(manifest["files"]) == {"frame.bin", "top.bit", "top.hwh"}
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((b / name).read_bytes()).hexdigest() == entry["sha256"]


def test_bundle_from_before_cols_and_ports(tiny, tmp_path):
    """A manifest without ``cols`` (before the rectangular array) or ``ports`` (before the weight
    ports) reads as the square, one-port build it was."""
    from runtime.bundle import Bundle

    old = tmp_path / "old"
    shutil.copytree(tiny["bundle"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    for name in ("cols", "ports"):
        del manifest["capacity"][name]
    (old / "manifest.json").write_text(json.dumps(manifest))
    capacity = Bundle.load(old).capacity
    assert capacity == dataclasses.asdict(tiny["cap"]) and capacity["ports"] == 1


def test_run_simulated_both_tasks_bit_exact(tiny):
    """Features and routing equal golden's for both tasks on one load; the routing map drawn
    from the same run."""
    out, picture = tiny["dir"] / "features.npz", tiny["dir"] / "routing.png"
    r = run_m3vit("run", "--bundle", str(tiny["bundle"]), "--image", str(tiny["image"]), "--task", "0", "1",
                  "--simulate", "--engine", "pysim", "--out", str(out), "--routing-map", str(picture))
    assert r.returncode == 0, r.stderr
    assert "TASK register only" in r.stdout
    assert f"wrote {picture} (layer 1)" in r.stdout
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000
    assert not list(tiny["dir"].glob("*.partial"))
    with np.load(out) as f:
        assert list(f["tasks"]) == [0, 1]
        assert list(f["moe_layers"]) == get_config("tiny").moe_layers
        for task in (0, 1):
            routing = f[f"routing_task{task}"]
            assert routing.dtype == np.uint8 and routing.shape == tiny["routing"][task].shape
            wrong = np.argwhere((routing != tiny["routing"][task]).any(axis=-1))
            assert wrong.size == 0, f"task {task}: (layer, token) {wrong[:3].tolist()} routed unlike golden"
        # What the map is there to show: the two tasks' gates route the same image differently.
        assert not np.array_equal(f["routing_task0"], f["routing_task1"])
        for i, task in enumerate((0, 1)):
            raw = f[f"features_task{task}"]
            assert raw.dtype == np.int16
            mismatch = np.argwhere(raw != tiny["golden"][task])
            assert mismatch.size == 0, f"task {task}: {len(mismatch)} features differ, first {mismatch[:3].tolist()}"
            assert np.array_equal(f[f"values_task{task}"], (raw * tiny["scale"]).astype(np.float32))
            cycles = int(f["cycles"][i])
            assert 0 < int(f["stalls"][i]) < cycles
            assert f"task {task}: {cycles} cycles" in r.stdout and f"{cycles / 3e5:.3f} ms at 300 MHz" in r.stdout
    # The two tasks route differently, so their features and cycle counts differ.
    assert not np.array_equal(tiny["golden"][0], tiny["golden"][1])


@pytest.mark.slow
@pytest.mark.xdist_group("verilator-accelerator")
def test_run_edge_moe_verilator_both_tasks(tmp_path):
    """Edge-moe under Verilator through the same driver and command: both tasks back to back on
    one load, features equal to golden word for word, on the bundle's own build: the board's."""
    cfg = get_config("edge-moe")
    image = default_image(cfg)
    artifact = quantize_model(cfg, default_weights(cfg).tensors, calibration_images(image))
    artifact.save(tmp_path / "edge-moe.npz")
    np.save(tmp_path / "image.npy", image)
    r = run_m3vit("bundle", "--config", "edge-moe", "--artifact", str(tmp_path / "edge-moe.npz"),
                  "--out", str(tmp_path / "bundle"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "features.npz"
    r = run_m3vit("run", "--bundle", str(tmp_path / "bundle"), "--image", str(tmp_path / "image.npy"),
                  "--task", "1", "0", "--simulate", "--engine", "verilator", "--out", str(out),
                  timeout=1800)
    assert r.returncode == 0, r.stderr
    pixels = image_to_pixels(image)
    with np.load(out) as f:
        assert list(f["tasks"]) == [1, 0]
        for task in (1, 0):
            run = run_backbone(artifact, pixels, task)
            mismatch = np.argwhere(f[f"features_task{task}"] != run.output)
            assert mismatch.size == 0, f"task {task}: {len(mismatch)} features differ, first {mismatch[:3].tolist()}"
            assert np.array_equal(f[f"routing_task{task}"], golden_routing(cfg, run)), f"task {task}: routing"


class _Buffer(np.ndarray):
    """``pynq.allocate``'s buffer: a numpy array with a physical address and cache syncs."""

    def sync_to_device(self):
        self.owner.session.dram.write(self.physical_address, self.tobytes())

    def sync_from_device(self):
        self[:] = np.frombuffer(self.owner.session.dram.read(self.physical_address, self.nbytes), np.uint8)

    def freebuffer(self):
        self.owner.freed = True


class StandInPynq:
    """A stand-in for the ``pynq`` module whose Overlay/allocate/MMIO calls reach the simulated
    accelerator: MMIO at ``CTRL_BASE`` is its register port, allocated buffers live in its DRAM
    model at a nonzero physical address."""

    PHYSICAL = 0x10_0000

    def __init__(self, cap):
        self.cap, self.session, self.loaded, self.freed, self.writes = cap, None, [], False, []
        owner = self

        class Overlay:
            def __init__(self, path):
                owner.loaded.append(Path(path))

        class MMIO:
            def __init__(self, base, length):
                assert (base, length) == (CTRL_BASE, 0x1000)

            def read(self, offset):
                return owner.session.read(offset)

            def write(self, offset, value):
                owner.writes.append((Reg(offset), value))
                owner.session.write(offset, value)

        self.Overlay, self.MMIO = Overlay, MMIO

    def allocate(self, shape, dtype):
        assert np.dtype(dtype) == np.uint8 and len(shape) == 1
        self.session = PysimSession(self.cap, self.PHYSICAL + shape[0])
        buf = np.zeros(shape, np.uint8).view(_Buffer)
        buf.physical_address, buf.owner = self.PHYSICAL, self
        return buf


def test_pynq_backend_through_stand_in(tiny):
    pynq = StandInPynq(tiny["cap"])

    class Backend(PynqBackend):
        # The board's clock runs while the host sleeps between polls; here, the simulation's, so
        # that the timeout counts accelerator time however slowly the simulator runs.
        def wait(self):
            pynq.session.tick(512)

        def clock(self):
            return pynq.session.cycle / CLOCK_HZ

    with Accelerator(tiny["bundle"], Backend(pynq=pynq), timeout=60) as acc:
        assert pynq.loaded == [tiny["bundle"] / "top.bit"]
        assert dict(pynq.writes)[Reg.WEIGHTS_LO] == StandInPynq.PHYSICAL
        with pytest.raises(InputError, match="no image given yet"):
            acc.run(1)
        acc.set_image(np.load(tiny["image"]))
        pynq.writes.clear()
        features = acc.run(1)
        # Switching task writes TASK and the start bit, nothing else.
        assert pynq.writes == [(Reg.TASK, 1), (Reg.CONTROL, CONTROL_START)]
    assert pynq.freed
    assert np.array_equal(features.raw, tiny["golden"][1])
    assert np.array_equal(features.routing, tiny["routing"][1]) and features.moe_layers == (1,)
    assert features.values.dtype == np.float32 and features.cycles > 0


def test_driver_watchdog_fault_and_soft_reset(tiny):
    """The driver arms the watchdog; a frame that runs past it raises AcceleratorFault naming the
    code; a soft reset mid-frame returns the accelerator to idle."""
    from runtime import AcceleratorFault, SimulatorBackend
    from runtime.regs import STATUS_BUSY, ErrorCode

    with Accelerator(tiny["bundle"], SimulatorBackend("pysim"), timeout=60, watchdog=2_000) as acc:
        acc.set_image(np.load(tiny["image"]))
        with pytest.raises(AcceleratorFault, match=r"stopped task 0 on an error: WATCHDOG \(code 5\)") as err:
            acc.run(0)
        assert (err.value.code, err.value.addr) == (ErrorCode.WATCHDOG, 0)
        be = acc.backend
        be.write(Reg.WATCHDOG, 0)
        be.write(Reg.CONTROL, CONTROL_START)
        be.wait()
        assert be.read(Reg.STATUS) & STATUS_BUSY
        acc.soft_reset()
        assert be.read(Reg.STATUS) == 0
    with pytest.raises(InputError, match="the watchdog counts"):
        Accelerator(tiny["bundle"], SimulatorBackend("pysim"), watchdog=-1)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_capacity_registers_report_the_build():
    assert CAPACITY_FIELDS == tuple(f.name for f in dataclasses.fields(Capacity))
    cap = dataclasses.asdict(Capacity.board())
    dut = ControlRegisters(capacity=cap)

    async def tb(ctx):
        for name, reg in CAPACITY_REGS.items():
            assert (await axil_read(ctx, dut.bus, reg))[0] == cap[name]
        assert (await axil_read(ctx, dut.bus, Reg.ID))[0] == ID_VALUE

    run_simulation(dut, tb)
    with pytest.raises(ValueError, match="capacity must give each of"):
        ControlRegisters(capacity={"lanes": 8})
    gc.collect()     # the half-built object warns when collected; let that happen under the filter


def test_pixels_round_half_up_and_clip():
    """q = round(256 x) - 128, halves up, 1.0 clipped to 127; int8 for the board, int64 for golden."""
    image = np.array([0.0, 0.5 / 256, 1.5 / 256, 0.5, 255 / 256, 1.0], dtype=np.float32)
    want = [-128, -127, -126, 0, 127, 127]
    assert pixels_from_image(image).dtype == np.int8 and pixels_from_image(image).tolist() == want
    assert image_to_pixels(image).dtype == np.int64 and image_to_pixels(image).tolist() == want


class _Registers:
    """A register file that answers like an accelerator of build ``capacity``, for the
    driver's checks without a simulator."""

    def __init__(self, capacity, ident=ID_VALUE):
        self.regs = {Reg.ID: ident, Reg.VERSION: VERSION[0] << 16 | VERSION[1]}
        self.regs.update({CAPACITY_REGS[name]: v for name, v in capacity.items()})

    def read(self, offset):
        return self.regs.get(offset, 0)

    def write(self, offset, value):
        self.regs[offset] = value


class _RegisterOnlyPynq:
    """A ``pynq`` stand-in whose MMIO is ``registers`` and whose buffers go nowhere."""

    def __init__(self, registers):
        self.registers, self.freed = registers, False

    def Overlay(self, path):
        pass

    def MMIO(self, base, length):
        return self.registers

    def allocate(self, shape, dtype):
        buf = np.zeros(shape, np.uint8).view(_Buffer)
        buf.physical_address, buf.owner = 0, self
        return buf


def test_driver_refuses_another_build(tiny):
    other = dataclasses.asdict(Capacity.for_config(get_config("tiny"), 16))
    for registers, message in (
            (_Registers(other), r"compiled for the build \[lanes=8 .*the accelerator is the build \[lanes=16 "),
            (_Registers(dataclasses.asdict(tiny["cap"]), ident=0), "no M3ViT accelerator answers"),
            (_Registers({}), r"the accelerator is the build \[lanes=0 ")):
        pynq = _RegisterOnlyPynq(registers)
        with pytest.raises(BuildMismatchError, match=message):
            Accelerator(tiny["bundle"], PynqBackend(pynq=pynq))
        assert pynq.freed


_BLOCKER = """
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "amaranth"):
            raise ImportError(f"{name} is hidden from this test")
sys.meta_path.insert(0, Blocker())
"""


def test_runtime_needs_neither_torch_nor_amaranth(tiny):
    script = _BLOCKER + textwrap.dedent(f"""
        import numpy as np
        import cli, cli.runtime
        from runtime import Accelerator, Bundle, PynqBackend, AcceleratorError
        from runtime.image import load_image
        from runtime.layout import dram_layout
        b = Bundle.load({str(tiny["bundle"])!r})
        assert b.input_shape == (3, 32, 64) and b.output_shape == (9, 32) and b.bitstream.name == "top.bit"
        assert load_image({str(tiny["image"])!r}, b.input_shape).dtype == np.int8
        layout = dram_layout(len(b.frame), 3 * 32 * 64, 2 * 9 * 32)
        assert layout.weights == 0 < len(b.frame) <= layout.image < layout.output < layout.size
        assert all(v % 4096 == 0 for v in layout)
        try:
            Accelerator(b, PynqBackend())
        except AcceleratorError as err:
            print("error:", err)
        code = cli.main(["run", "--bundle", {str(tiny["bundle"])!r}, "--image", {str(tiny["image"])!r},
                         "--task", "0"])
        print("exit", code)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "amaranth", "gateware", "golden")
                     or m in ("sim.session", "sim.accelerator")))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "error: the board backend needs PYNQ" in r.stdout
    assert "exit 2" in r.stdout and "m3vit run: error: the board backend needs PYNQ" in r.stderr
    assert r.stdout.strip().endswith("[]")


def _corrupt(bundle):
    frame = bundle / "frame.bin"
    blob = bytearray(frame.read_bytes())
    blob[100] ^= 1
    frame.write_bytes(bytes(blob))


def _truncate(bundle):
    frame = bundle / "frame.bin"
    frame.write_bytes(frame.read_bytes()[:-16])


@pytest.mark.parametrize("case, args, message", [
    ("unknown task", {"--task": ["0", "2"]}, "unknown task 2: bundle"),
    ("image shape", {"--image": ["{tmp}/small.npy"]}, "has shape [3, 16, 16]; the bundle's model takes [3, 32, 64]"),
    ("no image", {"--image": ["{tmp}/none.npy"]}, "none.npy does not exist"),
    ("corrupt", {}, "frame.bin does not match its sha256 in the manifest (corrupt)"),
    ("truncated", {}, "the manifest says"),
    ("no bundle", {"--bundle": ["{tmp}/nowhere"]}, "does not exist or is not a folder"),
    ("out folder", {"--out": ["{tmp}/no/such/f.npz"]}, "its folder is missing"),
    ("engine without simulate", {"--engine": ["pysim"]}, "apply only with --simulate"),
    ("another build", {"--simulate": [], "--sim-lanes": ["16"]}, "was compiled for the build [lanes=8 "),
    ("timeout", {"--simulate": [], "--timeout": ["1e-6"]}, "did not finish task 0 within 1e-06 s"),
    ("map layer", {"--routing-map": ["{tmp}/map.png"], "--routing-layer": ["0"]},
     "--routing-layer 0 is not a MoE layer of config 'tiny'; its MoE layers are 1"),
    ("map suffix", {"--routing-map": ["{tmp}/map.jpg"]}, "--routing-map {tmp}/map.jpg must name a .png file"),
    ("map folder", {"--routing-map": ["{tmp}/no/such/map.png"]}, "its folder is missing"),
    ("layer without map", {"--routing-layer": ["1"]}, "--routing-layer applies only with --routing-map"),
    # The image read answered SLVERR: the accelerator stops with ERROR early in the frame.
    ("bus error", {"--simulate": [], "--sim-bus-error": ["image"]},
     "stopped task 0 on an error: READ_SLVERR (code 1): SLVERR answered to the read burst at 0x"),
    ("bus error without simulate", {"--sim-bus-error": ["image"]}, "apply only with --simulate"),
    ("bad watchdog", {"--watchdog": ["-1"]}, "--watchdog counts 0.."),
])
def test_run_bad_input(tiny, tmp_path, case, args, message):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny["bundle"], bundle)
    {"corrupt": _corrupt, "truncated": _truncate}.get(case, lambda b: None)(bundle)
    np.save(tmp_path / "small.npy", np.zeros((3, 16, 16), np.float32))
    argv = {"--bundle": [str(bundle)], "--image": [str(tiny["image"])], "--task": ["0"],
            "--out": [str(tmp_path / "f.npz")]} | args
    r = run_m3vit("run", *[a.format(tmp=tmp_path) for flag, values in argv.items() for a in (flag, *values)])
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message.format(tmp=tmp_path) in r.stderr, r.stderr
    # One error line; besides it only the progress lines of the stages that ran ("... failed in").
    errors = [line for line in r.stderr.splitlines() if not re.fullmatch(r".* \.\.\. (done|failed) in [0-9.]+ s", line)]
    assert "Traceback" not in r.stderr + r.stdout and len(errors) == 1, r.stderr
    assert errors[0].startswith("m3vit run: error:")
    assert not list(tmp_path.glob("**/f.npz*")) and not list(tmp_path.glob("**/map.*"))
