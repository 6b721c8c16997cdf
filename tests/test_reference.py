"""The float model and golden against an independent implementation of M³ViT on the real weights.

``../shared/data/edge-moe/reference/`` holds Edge-MoE's own fixed-point C++ outputs on the real
weights and image (see ``model/reference.py``). These tests are what a misread weight layout
cannot pass: reading the gates as [dim, experts] agrees with the reference's layer-1 routing on
0 of 129 tokens (task 0).
"""

import numpy as np
import pytest

from model.config import get_config
from model.numerics import compare_with_reference
from model.quantize import calibration_images, quantize_model
from model.reference import load_reference
from model.weights import WeightError, load_image, load_weight_folder

CFG = get_config("edge-moe")

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def against_reference(real_data):
    if not (real_data / "reference").is_dir():
        pytest.skip(f"no reference outputs at {real_data / 'reference'}")
    weights = load_weight_folder(real_data, CFG).tensors
    image = load_image(real_data / "image.float32.bin", CFG)
    artifact = quantize_model(CFG, weights, calibration_images(image))
    reference = load_reference(real_data / "reference", CFG)
    return compare_with_reference(CFG, weights, image, reference, artifact)


def test_float_residual_streams_match_the_reference(against_reference):
    """Measured: cosine >= 0.999995, max abs error <= 0.011 (the reference is fixed point)."""
    streams, _ = against_reference
    assert {s["stream"] for s in streams} == {"x_embed", "x_l0", "x_l1_attn"}
    for s in streams:
        assert s["cosine"] >= 0.9999 and s["max_abs_err"] <= 0.05, s


def test_float_routing_matches_the_reference(against_reference):
    """Top-2 expert sets equal on >= 128 of 129 tokens per task (measured 128 / 128: the one
    other token has a 0.0007 gap between its 2nd and 3rd logits); gate probabilities of the
    chosen experts within 0.01 (measured 0.0010 / 0.0015)."""
    _, routing = against_reference
    assert len(routing) == CFG.num_tasks
    for r in routing:
        assert r["float"] * CFG.tokens >= 128 - 1e-9, r
        assert r["float_gate_weight_max_err"] <= 0.01, r


def test_golden_routing_against_the_reference(against_reference):
    """Golden's layer-1 routing against the reference, reported per task (measured 0.977 / 0.984);
    bounded by its agreement with the float model (>= 0.97) and the float model's (>= 128/129)."""
    _, routing = against_reference
    for r in routing:
        print(f"layer {r['layer']} task {r['task']}: golden vs reference {r['golden']:.3f}, "
              f"float vs reference {r['float']:.3f}")
        assert r["golden"] >= 0.96, r


def test_reference_loader_errors(tmp_path, real_data):
    with pytest.raises(WeightError, match="does not exist"):
        load_reference(tmp_path / "nope", CFG)
    with pytest.raises(WeightError, match="missing reference file .*x_embed"):
        load_reference(tmp_path, CFG)
    with pytest.raises(WeightError, match=r"x_embed.float32.bin holds 99072 bytes, expected 1152"):
        load_reference(real_data / "reference", get_config("tiny"))
    short = tmp_path / "short"
    short.mkdir()
    for f in (real_data / "reference").iterdir():
        (short / f.name).write_bytes(f.read_bytes()[: -4 if f.name.startswith("x_l0") else None])
    with pytest.raises(WeightError, match="x_l0.float32.bin holds 99068 bytes"):
        load_reference(short, CFG)
