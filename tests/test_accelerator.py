"""The whole accelerator on whole frames, bit-exact with golden (tiny config in pysim)."""

import dataclasses

import numpy as np
import pytest

from golden.backbone import run_backbone
from gateware.program import Capacity, CapacityError, check_capacity, compile_frame
from model.config import get_config
from model.quantize import calibration_images, quantize_model
from model.weights import default_image, default_weights, image_to_pixels
from sim.accelerator import frame_report, simulate_frame


def _artifact(cfg):
    weights = default_weights(cfg)
    image = default_image(cfg)
    return quantize_model(cfg, weights.tensors, calibration_images(image)), image_to_pixels(image)


@pytest.fixture(scope="module")
def tiny():
    return _artifact(get_config("tiny"))


def test_tiny_frame_bit_exact_pysim(tiny):
    artifact, pixels = tiny
    cap = Capacity.for_config(artifact.config, 8)
    golden = run_backbone(artifact, pixels, 1)
    result = simulate_frame(artifact, pixels, 1, cap=cap, engine="pysim")
    mismatch = np.argwhere(result.output != golden.output)
    assert mismatch.size == 0, f"{len(mismatch)} features differ, first at {mismatch[:3].tolist()}"
    report = frame_report(artifact, 1, result, golden, cap)
    assert report["bit_exact"] and report["cycles"] == result.cycles
    # Each weight byte the frame needs streams about once (plus the program and the gate's
    # re-reads); measured 1.0x-1.1x, see the README.
    assert report["dram_bytes_min"] <= report["dram_bytes"] <= 1.25 * report["dram_bytes_min"]
    assert result.dram_written == artifact.config.tokens * artifact.config.dim * 2


def test_capacity_errors(tiny):
    artifact, _ = tiny
    cfg = artifact.config
    with pytest.raises(CapacityError, match="activation words"):
        compile_frame(artifact, Capacity.for_config(cfg, 8, act_words=100))
    with pytest.raises(CapacityError, match="router takes"):
        compile_frame(artifact, Capacity.for_config(cfg, 8, num_experts=8))
    with pytest.raises(CapacityError, match="tokens"):
        compile_frame(artifact, Capacity.for_config(cfg, 8, max_tokens=4))
    with pytest.raises(CapacityError, match="lanes"):
        Capacity(lanes=12)
    wide = dataclasses.replace(cfg, dim=36, heads=2)
    with pytest.raises(CapacityError, match="multiple"):
        check_capacity(wide, Capacity(lanes=8))
