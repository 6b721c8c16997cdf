"""``m3vit`` subcommands of the software side: ``golden``, ``numerics``, ``quantize``."""

import json
import os
import sys
import time
from pathlib import Path

from cli import UserError

from model.config import CONFIGS, get_config

# The handlers import the model, golden and torch when they run, so that `m3vit --help` and the
# hardware-side subcommands start without paying for torch.

__all__ = ["register"]


def model_inputs(args):
    """Config, weights and image named by the common options (built-in defaults otherwise)."""
    from model.weights import WeightError, default_image, default_weights, load_image, load_weight_folder

    try:
        cfg = get_config(args.config)
    except KeyError as err:
        raise UserError(err.args[0]) from None
    try:
        weights = load_weight_folder(args.weights, cfg) if args.weights else default_weights(cfg)
        image_path = args.image
        # An Edge-MoE weight folder carries its own test image: use it unless told otherwise.
        if image_path is None and args.weights and (Path(args.weights) / "image.float32.bin").is_file():
            image_path = Path(args.weights) / "image.float32.bin"
        image = load_image(image_path, cfg) if image_path else default_image(cfg)
    except WeightError as err:
        raise UserError(str(err)) from None
    if weights.generated:
        print(f"note: {len(weights.generated)} expert weight tensors were missing from {weights.source} and "
              f"were generated deterministically from the dense layers' statistics "
              f"({', '.join(weights.generated[:2])}, ...)", file=sys.stderr)
    return cfg, weights, image


def check_task(cfg, task):
    if not 0 <= task < cfg.num_tasks:
        raise UserError(f"unknown task {task}: config {cfg.name!r} has tasks 0..{cfg.num_tasks - 1}")


def check_output_path(path):
    """Refuse, before the long work, an output file whose folder does not exist."""
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: folder {parent} does not exist")


def check_new_file(option, path, suffix, *, any_case=False):
    """Refuse, before the long work, a ``--option`` file that is not ``*suffix``, is a folder, or
    whose folder is missing or not writable."""
    out = Path(path)
    if (out.suffix.lower() if any_case else out.suffix) != suffix:
        raise UserError(f"{option} {out} must name a {suffix} file")
    if out.is_dir():
        raise UserError(f"{option} {out} is a folder")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {out}: its folder is missing or not writable")


def check_output_folder(option, path):
    """Refuse, before the long work, a ``--option`` folder that exists as a file, or that would be
    created in a parent folder that is missing or not writable."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} exists and is not a folder")
    if not out.exists() and not os.access(out.parent if str(out.parent) else ".", os.W_OK):
        raise UserError(f"cannot create {out}: its parent folder is missing or not writable")


def write_json(path, data):
    try:
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}") from None


def _print_layers(layers, routing):
    print(f"{'layer':>6} {'task':>4} {'cosine':>9} {'max|err|':>9} {'max|ref|':>9}")
    for row in layers:
        name = "embed" if row["layer"] < 0 else str(row["layer"])
        print(f"{name:>6} {row['task']:>4} {row['cosine']:9.5f} {row['max_abs_err']:9.4f} {row['ref_max_abs']:9.3f}")
    if routing:
        print(f"{'moe layer':>9} {'task':>4} {'routing agreement':>18} {'experts run':>12}")
        for row in routing:
            print(f"{row['layer']:>9} {row['task']:>4} {row['agreement']:18.3f} {row['experts_run']:>12}")


def load_artifact(path, cfg):
    """The quantised artifact in ``path`` (None: none given), checked against ``cfg``."""
    from model.artifact import Artifact, ArtifactError

    if not path:
        return None
    try:
        artifact = Artifact.load(path)
    except ArtifactError as err:
        raise UserError(str(err)) from None
    if artifact.config != cfg:
        raise UserError(f"artifact {path} is for config {artifact.config.name!r}, not {cfg.name!r}")
    return artifact


def _golden(args):
    from model.numerics import compare

    cfg, weights, image = model_inputs(args)
    check_task(cfg, args.task)
    artifact = load_artifact(args.artifact, cfg)
    start = time.perf_counter()
    layers, routing, _ = compare(cfg, weights.tensors, image, artifact, tasks=[args.task])
    print(f"golden (integer) vs float M3ViT, config {cfg.name}, task {args.task}, weights {weights.source}")
    _print_layers(layers, routing)
    out = layers[-1]
    print(f"output features: cosine {out['cosine']:.5f}, max abs error {out['max_abs_err']:.4f} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


def _reference(args, cfg):
    """The independent reference named by ``--reference``, else the weight folder's
    ``reference/`` where it has one (for the edge-moe shape), else None."""
    from model.reference import load_reference
    from model.weights import WeightError

    folder = args.reference
    if folder is None and args.weights and (Path(args.weights) / "reference").is_dir() and cfg.name == "edge-moe":
        folder = Path(args.weights) / "reference"
    if folder is None:
        return None
    try:
        return load_reference(folder, cfg)
    except WeightError as err:
        raise UserError(str(err)) from None


def _numerics(args):
    from model.numerics import numerics_report

    cfg, weights, image = model_inputs(args)
    reference = _reference(args, cfg)
    if args.json:
        check_output_path(args.json)
    report = numerics_report(cfg, weights.tensors, image, weights.source, reference, args.rounding)
    _print_layers(report["layers"], report["routing_agreement"])
    if reference is not None:
        print(f"against the independent reference in {reference.source}:")
        for row in report["reference_streams"]:
            print(f"  float {row['stream']:>9}: cosine {row['cosine']:.6f}, max abs error {row['max_abs_err']:.4f}")
        for row in report["reference_routing_agreement"]:
            print(f"  layer {row['layer']} task {row['task']}: top-2 sets equal to the reference's: "
                  f"float {row['float']:.3f}, golden {row['golden']:.3f}; float gate weights within "
                  f"{row['float_gate_weight_max_err']:.4f}")
    print(f"GELU max error over all int16 inputs: {report['gelu_max_lsb_err']:.3f} LSB of the output grid")
    print(f"softmax max abs error vs exact softmax of the same integers: {report['softmax_max_abs_err']:.6f} "
          f"(2**-8 = {2 ** -8:.6f})")
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def _quantize(args):
    from model.quantize import calibration_images, quantize_model

    cfg, weights, image = model_inputs(args)
    artifact = quantize_model(cfg, weights.tensors, calibration_images(image))
    try:
        artifact.save(args.out)
    except OSError as err:
        raise UserError(f"cannot write {args.out}: {err.strerror}") from None
    n = sum(v.size for k, v in artifact.tensors.items() if k.endswith(".w"))
    print(f"wrote {args.out}: config {cfg.name}, {n} int8 weights, residual scale {artifact.scales['residual']:.3g}")
    return 0


def add_model_options(p):
    p.add_argument("--config", default="edge-moe", help=f"model configuration ({', '.join(CONFIGS)}; default edge-moe)")
    p.add_argument("--weights", metavar="DIR", help="Edge-MoE weight folder (default: built-in deterministic weights)")
    p.add_argument("--image", metavar="FILE", help="image [C,H,W] float32 in [0,1], raw .bin or .npy "
                                                   "(default: the weight folder's image.float32.bin, "
                                                   "else a built-in test image)")


def register(sub):
    """Add the software-side subcommands to the ``m3vit`` parser."""
    p = sub.add_parser("golden", help="run one frame through the integer golden model and compare with float")
    add_model_options(p)
    p.add_argument("--task", type=int, default=0, help="task (selects the MoE gates; default 0)")
    p.add_argument("--artifact", metavar="FILE", help="quantised artifact (default: quantise now)")
    p.set_defaults(handler=_golden)

    p = sub.add_parser("numerics", help="golden vs float per layer and task, routing agreement, operator errors")
    add_model_options(p)
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--rounding", choices=("error-feedback", "nearest"), default="error-feedback",
                   help="how weights are rounded to int8 (default error-feedback; nearest to compare)")
    p.add_argument("--reference", metavar="DIR",
                   help="an independent implementation's outputs to compare with (default: the weight "
                        "folder's reference/ where it has one)")
    p.set_defaults(handler=_numerics)

    p = sub.add_parser("quantize", help="calibrate and write the quantised artifact (.npz)")
    add_model_options(p)
    p.add_argument("--out", metavar="FILE", required=True, help="artifact file to write")
    p.set_defaults(handler=_quantize)
