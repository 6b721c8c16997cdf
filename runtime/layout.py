"""Where the host puts things in DRAM for one accelerator.

One contiguous DRAM region holds, each at a 4 KiB boundary (so that no AXI burst the accelerator
makes crosses into the next object, and a page-granular buffer holds them all)::

    base + weights   the compiled frame image (header, program, weight tiles, parameters)
    base + image     the int8 image [C, H, W]
    base + output    the int16 features [tokens, dim] the accelerator writes

The frame image and the image stay in place across frames; switching task rewrites nothing here.
"""

from typing import NamedTuple

__all__ = ["ALIGN", "DramLayout", "dram_layout"]

#: Alignment of every object in the region, and of the region itself.
ALIGN = 4096


def _align(n):
    return -(-n // ALIGN) * ALIGN


class DramLayout(NamedTuple):
    """Byte offsets of the objects from the region's base, and the region's size."""
    weights: int
    image: int
    output: int
    size: int


def dram_layout(frame_bytes, image_bytes, output_bytes):
    """The layout of a region holding a frame image, an input image and an output buffer.

    Parameters
    ----------
    frame_bytes, image_bytes, output_bytes : int
        Sizes of the three objects.

    Returns
    -------
    DramLayout
    """
    weights = 0
    image = _align(frame_bytes)
    output = image + _align(image_bytes)
    return DramLayout(weights, image, output, output + _align(output_bytes))
