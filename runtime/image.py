"""The accelerator's input: reading an image file and turning it into int8 pixels."""

from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["load_image", "pixels_from_image", "as_pixels"]


def pixels_from_image(image):
    """Float image in [0, 1] -> int8 accelerator input ``round(256 * x) - 128``, clipped to 8 bits.

    The accelerator takes 8-bit pixels; the offset of 128 is folded into the patch-embedding
    bias, so the int8 value q stands for ``(q + 128) / 256`` exactly. ``model.weights`` uses
    this conversion too, so the quantiser calibrates on the pixels the board sees.
    """
    k = np.clip(np.floor(np.asarray(image, dtype=np.float64) * 256.0 + 0.5), 0, 255).astype(np.int64)
    return (k - 128).astype(np.int8)


def as_pixels(image, shape):
    """The int8 pixels of ``image``: int8 pixels as they are, a float image in [0, 1] converted.

    Raises
    ------
    InputError
        When the shape is not ``shape`` or a float image has values outside [0, 1].
    """
    image = np.asarray(image)
    if image.shape != tuple(shape):
        raise InputError(f"the image has shape {list(image.shape)}; the bundle's model takes {list(shape)} "
                         f"[channels, height, width]")
    if image.dtype == np.int8:
        return image
    if image.dtype.kind != "f":
        raise InputError(f"the image is {image.dtype}; give int8 pixels or floats in [0, 1]")
    if not np.all(np.isfinite(image)) or image.min() < 0.0 or image.max() > 1.0:
        raise InputError(f"the image must hold values in [0, 1] (8-bit pixels / 256), found "
                         f"[{np.nanmin(image):.3g}, {np.nanmax(image):.3g}]")
    return pixels_from_image(image)


def load_image(path, shape):
    """Read image file ``path`` for a model taking ``shape`` ``(C, H, W)``; return int8 pixels.

    ``.npy``: float values in [0, 1] or int8 pixels, shape ``(C, H, W)``; any other name: raw
    little-endian float32 in C order (Edge-MoE's ``image.float32.bin``).

    Raises
    ------
    InputError
        When the file is missing or unreadable, or its contents do not fit ``shape``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file {path} does not exist")
    if path.suffix == ".npy":
        try:
            image = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputError(f"{path} is not a readable .npy array: {err}") from None
    else:
        raw = path.read_bytes()
        want = int(np.prod(shape)) * 4
        if len(raw) != want:
            raise InputError(f"image {path} has {len(raw)} bytes; the bundle's model takes {want} "
                             f"(float32 {list(shape)})")
        image = np.frombuffer(raw, dtype="<f4").reshape(shape)
    try:
        return as_pixels(image, shape)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
