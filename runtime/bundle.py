"""A bundle: everything the host needs to run one compiled model on one accelerator build.

A bundle is a folder::

    manifest.json   what the files are (below)
    frame.bin       the compiled frame image: header, program, weight tiles, parameters
    top.bit         optional: the bitstream (with top.hwh beside it, for PYNQ's Overlay)
    top.hwh

``manifest.json`` holds the bundle format and version, the model config (``config``: name and
the sizes the host needs), the accelerator build it was compiled for (``capacity``: the fields of
``gateware.program.Capacity``), the register-map version it was compiled against, the input
(``input``: shape, int8) and output (``output``: shape, int16, ``scale`` for dequantisation), the
expert routing the accelerator writes (``routing``: the MoE layers, ``top_k``, ``num_experts`` and
the ``patch`` size that places a token on the image), and per file its size and sha256.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError
from .layout import RoutingLayout
from .regs import CAPACITY_FIELDS, VERSION

__all__ = ["Bundle", "write_bundle", "MANIFEST", "FRAME_FILE", "BUNDLE_FORMAT", "BUNDLE_VERSION"]

BUNDLE_FORMAT = "m3vit-bundle"
#: 2: the weight tiles' bank-major layout with each bank's parameter records in front of it.
BUNDLE_VERSION = 2
MANIFEST = "manifest.json"
FRAME_FILE = "frame.bin"
BITSTREAM_FILES = ("top.bit", "top.hwh")
#: Config fields the host needs: the input's shape, the output's shape, the tasks.
CONFIG_FIELDS = ("name", "in_chans", "image_height", "image_width", "tokens", "dim", "num_tasks")


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_capacity(capacity):
    """``capacity`` (field -> value) as one short line, in register order."""
    return " ".join(f"{name}={capacity.get(name, '?')}" for name in CAPACITY_FIELDS)


@dataclass
class Bundle:
    """A bundle read from disk with every file's checksum verified.

    Attributes
    ----------
    path : pathlib.Path
    config : dict
        The model config's name and the sizes in ``CONFIG_FIELDS``.
    capacity : dict
        The accelerator build the frame image was compiled for (``CAPACITY_FIELDS`` -> int).
    register_map : tuple of int
        (major, minor) of the register map the bundle was made against.
    output_scale : float
        Real value of one least significant bit of the int16 features.
    frame : bytes
        The frame image.
    bitstream : pathlib.Path or None
        ``top.bit`` when the bundle has one.
    routing : dict or None
        ``moe_layers`` (list of layer numbers), ``top_k``, ``num_experts``, ``patch``; ``None``
        for a bundle made before the accelerator wrote its routing.
    """

    path: Path
    config: dict
    capacity: dict
    register_map: tuple
    output_scale: float
    frame: bytes
    bitstream: Path = None
    routing: dict = None

    @property
    def input_shape(self):
        """Shape ``(C, H, W)`` of the int8 image the model takes."""
        c = self.config
        return (c["in_chans"], c["image_height"], c["image_width"])

    @property
    def output_shape(self):
        """Shape ``(tokens, dim)`` of the int16 features."""
        return (self.config["tokens"], self.config["dim"])

    @property
    def routing_layout(self):
        """Where the accelerator writes the routing (``runtime.layout.RoutingLayout``); 0 layers
        when the model has no MoE layer or the bundle predates the routing."""
        r = self.routing or {"moe_layers": [], "top_k": 1}
        return RoutingLayout(len(r["moe_layers"]), self.config["tokens"], r["top_k"])

    @property
    def name(self):
        """The model config's name."""
        return self.config["name"]

    @classmethod
    def load(cls, path):
        """Read the bundle in folder ``path``, verifying each file's size and sha256.

        Raises
        ------
        BundleError
            When the folder, the manifest or a file is missing, unreadable, of another format,
            or fails its checksum.
        """
        path = Path(path)
        manifest_path = path / MANIFEST
        if not path.is_dir():
            raise BundleError(f"bundle {path} does not exist or is not a folder")
        if not manifest_path.is_file():
            raise BundleError(f"{path} is not a bundle: it has no {MANIFEST}")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleError(f"cannot read {manifest_path}: {err}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{manifest_path} is not an m3vit bundle manifest")
        if manifest.get("version") != BUNDLE_VERSION:
            raise BundleError(f"bundle {path} has format version {manifest.get('version')!r}; this runtime reads "
                              f"version {BUNDLE_VERSION}")
        try:
            files = manifest["files"]
            config = {name: manifest["config"][name] for name in CONFIG_FIELDS}
            # Bundles from before the rectangular array have no cols (theirs was square), and
            # those from before the weight ports no ports (theirs had one).
            stored = manifest["capacity"]
            missing = {"cols": stored["lanes"], "ports": 1}
            capacity = {name: int(stored[name] if name not in missing else stored.get(name, missing[name]))
                        for name in CAPACITY_FIELDS}
            register_map = tuple(int(v) for v in manifest["register_map"])
            output_scale = float(manifest["output"]["scale"])
            routing = manifest.get("routing")
            if routing is not None:
                routing = {"moe_layers": [int(v) for v in routing["moe_layers"]], "top_k": int(routing["top_k"]),
                           "num_experts": int(routing["num_experts"]), "patch": int(routing["patch"])}
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"{manifest_path} lacks or garbles an entry ({err})") from None
        if FRAME_FILE not in files:
            raise BundleError(f"{manifest_path} lists no {FRAME_FILE}")
        for name, entry in files.items():
            file = path / name
            if Path(name).name != name or not file.is_file():
                raise BundleError(f"bundle {path} is incomplete: {name} is missing")
            size = file.stat().st_size
            if size != entry.get("bytes"):
                raise BundleError(f"bundle {path}: {name} has {size} bytes, the manifest says {entry.get('bytes')} "
                                  f"(truncated or replaced)")
            if _sha256(file) != entry.get("sha256"):
                raise BundleError(f"bundle {path}: {name} does not match its sha256 in the manifest (corrupt)")
        frame = (path / FRAME_FILE).read_bytes()
        bitstream = path / "top.bit" if "top.bit" in files else None
        return cls(path, config, capacity, register_map, output_scale, frame, bitstream, routing)


def write_bundle(out, *, config, capacity, frame, output_scale, moe_layers=(), bitstream=None, note=None):
    """Write a bundle into folder ``out`` (created if needed) and return its path.

    Parameters
    ----------
    out : str or pathlib.Path
    config : dict
        The model config (at least ``CONFIG_FIELDS``).
    capacity : dict
        The accelerator build ``frame`` was compiled for (at least ``CAPACITY_FIELDS``).
    frame : bytes
        The compiled frame image.
    output_scale : float
        Real value of one least significant bit of the features.
    moe_layers : sequence of int
        The model's MoE layers, in order: one routing block each (needs ``top_k``,
        ``num_experts`` and ``patch`` in ``config``).
    bitstream : str or pathlib.Path, optional
        ``top.bit`` to include; its ``top.hwh`` (same folder, same stem) comes along when present.
    note : dict, optional
        Extra provenance stored under ``"note"`` (e.g. where the weights came from).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    blobs = {FRAME_FILE: bytes(frame)}
    if bitstream is not None:
        bitstream = Path(bitstream)
        blobs["top.bit"] = bitstream.read_bytes()
        hwh = bitstream.with_suffix(".hwh")
        if hwh.is_file():
            blobs["top.hwh"] = hwh.read_bytes()
    files = {}
    for name, blob in blobs.items():
        (out / name).write_bytes(blob)
        files[name] = {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    manifest = {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
        "config": {name: config[name] for name in CONFIG_FIELDS},
        "capacity": {name: int(capacity[name]) for name in CAPACITY_FIELDS},
        "register_map": list(VERSION),
        "input": {"shape": [config["in_chans"], config["image_height"], config["image_width"]], "dtype": "int8"},
        "output": {"shape": [config["tokens"], config["dim"]], "dtype": "int16", "scale": float(output_scale)},
        "routing": {"moe_layers": [int(v) for v in moe_layers], "top_k": int(config["top_k"]),
                    "num_experts": int(config["num_experts"]), "patch": int(config["patch"])},
        "files": files,
    }
    if note:
        manifest["note"] = note
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out
