"""Float model, importer, quantised artifact, and golden vs float error bounds."""

import numpy as np
import pytest
import torch

from golden.backbone import run_backbone
from model.artifact import Artifact, ArtifactError
from model.config import M3ViTConfig, get_config
from model.m3vit import M3ViT
from model.numerics import compare
from model.quantize import calibration_images, quantize_model
from model.weights import (WeightError, default_image, default_weights, image_to_pixels, load_image,
                           load_weight_folder)

TINY = get_config("tiny")


@pytest.fixture(scope="module")
def tiny_artifact():
    w = default_weights(TINY).tensors
    return quantize_model(TINY, w, calibration_images(default_image(TINY)))


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of the patch"):
        M3ViTConfig("bad", 30, 64, 3, 16, 32, 2, 2, 64, 4, 2, 32, 2)
    with pytest.raises(ValueError, match="top_k"):
        M3ViTConfig("bad", 32, 64, 3, 16, 32, 2, 2, 64, 4, 5, 32, 2)
    with pytest.raises(KeyError, match="unknown config"):
        get_config("huge")


def test_routing_ties_and_weights():
    """Equal gate logits pick the lower expert; weights are the softmax over all experts."""
    w = default_weights(TINY).tensors
    w["l1_w_gate_T_task0"] = np.zeros_like(w["l1_w_gate_T_task0"])
    model = M3ViT(TINY, w)
    idx, gate, _ = model.route(1, torch.randn(5, TINY.dim), 0)
    assert idx.tolist() == [[0, 1]] * 5
    assert torch.allclose(gate, torch.full((5, 2), 1 / TINY.num_experts))


def test_importer_reads_folder_and_generates_missing_experts(tmp_path):
    w = default_weights(TINY).tensors
    for name, t in w.items():
        if "htoh4_weight" not in name and "h4toh_weight" not in name:
            t.astype("<f4").tofile(tmp_path / f"{name}.float32.bin")
    imported = load_weight_folder(tmp_path, TINY)
    assert sorted(imported.generated) == ["l1_h4toh_weight", "l1_htoh4_weight"]
    assert np.array_equal(imported.tensors["l0_qkv_weight"], w["l0_qkv_weight"])
    again = load_weight_folder(tmp_path, TINY)
    assert np.array_equal(imported.tensors["l1_htoh4_weight"], again.tensors["l1_htoh4_weight"])
    fc1 = w["l0_fc1_weight"]
    gen = imported.tensors["l1_htoh4_weight"]
    assert gen.shape == (4, 32, 32) and abs(gen.std() - fc1.std()) < 0.1 * fc1.std()


def test_importer_errors_name_file_and_size(tmp_path):
    with pytest.raises(WeightError, match="does not exist"):
        load_weight_folder(tmp_path / "nope", TINY)
    with pytest.raises(WeightError, match=r"missing weight file .*patch_embed_weight.*98304 bytes"):
        load_weight_folder(tmp_path, TINY)
    w = default_weights(TINY).tensors
    for name, t in w.items():
        t.astype("<f4").tofile(tmp_path / f"{name}.float32.bin")
    (tmp_path / "l0_qkv_bias.float32.bin").write_bytes(b"\0" * 8)
    with pytest.raises(WeightError, match=r"l0_qkv_bias.* holds 8 bytes, expected 384"):
        load_weight_folder(tmp_path, TINY)


def test_image_errors(tmp_path):
    np.zeros((3, 32, 32), np.float32).tofile(tmp_path / "small.bin")
    with pytest.raises(WeightError, match="expected 24576"):
        load_image(tmp_path / "small.bin", TINY)
    np.save(tmp_path / "neg.npy", -np.ones((3, 32, 64), np.float32))
    with pytest.raises(WeightError, match=r"values in \[0, 1\]"):
        load_image(tmp_path / "neg.npy", TINY)


def test_pixels_fold_offset_into_bias(tiny_artifact):
    """The embedding's integer result equals the float patch embedding of the same pixels."""
    image = default_image(TINY)
    pixels = image_to_pixels(image)
    assert pixels.min() >= -128 and pixels.max() <= 127
    assert np.array_equal((pixels + 128) / 256.0, image.astype(np.float64))
    run = run_backbone(tiny_artifact, pixels, 0)
    model = M3ViT(TINY, default_weights(TINY).tensors)
    ref = model.embed(torch.as_tensor(image)).numpy()
    got = run.layer_outputs()[-1] * tiny_artifact.scales["residual"]
    assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max()


def test_artifact_round_trip(tmp_path, tiny_artifact):
    path = tmp_path / "tiny.npz"
    tiny_artifact.save(path)
    back = Artifact.load(path)
    assert back.config == TINY and back.scales == tiny_artifact.scales
    assert all(np.array_equal(back[k], v) for k, v in tiny_artifact.tensors.items())
    pixels = image_to_pixels(default_image(TINY))
    assert np.array_equal(run_backbone(back, pixels, 1).output, run_backbone(tiny_artifact, pixels, 1).output)


def test_malformed_artifacts_are_refused(tmp_path, tiny_artifact):
    with pytest.raises(ArtifactError, match="does not exist"):
        Artifact.load(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="not a readable"):
        Artifact.load(tmp_path / "junk.npz")
    bad = dict(tiny_artifact.tensors)
    bad["l0.qkv.w"] = bad["l0.qkv.w"] * 2
    with pytest.raises(ArtifactError, match=r"l0.qkv.w exceeds sint8"):
        Artifact(TINY, bad, {})
    bad = dict(tiny_artifact.tensors)
    del bad["l1.gate.w"]
    with pytest.raises(ArtifactError, match="lacks"):
        Artifact(TINY, bad, {})


def test_golden_is_deterministic_and_task_dependent(tiny_artifact):
    pixels = image_to_pixels(default_image(TINY))
    a = run_backbone(tiny_artifact, pixels, 0).output
    assert np.array_equal(a, run_backbone(tiny_artifact, pixels, 0).output)
    assert not np.array_equal(a, run_backbone(tiny_artifact, pixels, 1).output)
    with pytest.raises(ValueError, match="task 2 out of range"):
        run_backbone(tiny_artifact, pixels, 2)


@pytest.mark.parametrize("config", ["tiny", "edge-moe"])
def test_golden_vs_float_builtin(config):
    """Built-in weights: cosine >= 0.999 per layer, max error within 8% of each layer's peak (measured 5.6%)."""
    cfg = get_config(config)
    layers, routing, _ = compare(cfg, default_weights(cfg).tensors, default_image(cfg))
    assert min(r["cosine"] for r in layers) >= 0.999
    for r in layers:
        assert r["max_abs_err"] <= 0.08 * r["ref_max_abs"]
    assert min(r["agreement"] for r in routing) >= 0.9


@pytest.mark.real_data
def test_golden_vs_float_real_weights(real_data):
    """Real Edge-MoE weights and image (experts generated): the issue's bounds on cosine and routing."""
    cfg = get_config("edge-moe")
    w = load_weight_folder(real_data, cfg)
    assert len(w.generated) == 12                          # the snapshot lacks the expert tensors
    layers, routing, _ = compare(cfg, w.tensors, load_image(real_data / "image.float32.bin", cfg))
    for r in layers:
        if r["layer"] <= 1:
            assert r["cosine"] >= 0.99, r
    assert min(r["cosine"] for r in layers if r["layer"] == cfg.depth - 1) >= 0.98
    # Near-tied gate logits make this the tightest bound: measured 0.961 for both tasks with int10
    # activations (int8 gave 0.876 / 0.930).
    assert min(r["agreement"] for r in routing if r["layer"] == 1) >= 0.95
