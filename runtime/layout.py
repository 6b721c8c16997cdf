"""Where the host puts things in DRAM for one accelerator.

One contiguous DRAM region holds, each at a 4 KiB boundary (so that no AXI burst the accelerator
makes crosses into the next object, and a page-granular buffer holds them all)::

    base + weights   the compiled frame image (header, program, weight tiles, parameters)
    base + image     the int8 image [C, H, W]
    base + output    the int16 features [tokens, dim] the accelerator writes
    base + routing   the expert routing the accelerator writes (:class:`RoutingLayout`),
                     right after the output, so the output base register locates it too

The frame image and the image stay in place across frames; switching task rewrites nothing here.
"""

from typing import NamedTuple

import numpy as np

__all__ = ["ALIGN", "BEAT", "DramLayout", "RoutingLayout", "dram_layout", "routing_offset"]

#: Alignment of every object in the region, and of the region itself.
ALIGN = 4096
#: The accelerator writes DRAM in whole beats of this many bytes (``gateware.records.BEAT_BYTES``).
BEAT = 16


def _align(n, to=ALIGN):
    return -(-n // to) * to


class DramLayout(NamedTuple):
    """Byte offsets of the objects from the region's base, and the region's size."""
    weights: int
    image: int
    output: int
    routing: int
    size: int


def routing_offset(output_bytes):
    """Bytes from the output's start to the routing's: the output rounded up to a 4 KiB page.

    The compiler puts this (plus a layer's place, :meth:`RoutingLayout.layer_offset`) into the
    program, and the accelerator adds it to the output base register.
    """
    return _align(output_bytes)


def dram_layout(frame_bytes, image_bytes, output_bytes, routing_bytes=0):
    """The layout of a region holding a frame image, an input image, the output and the routing.

    Parameters
    ----------
    frame_bytes, image_bytes, output_bytes : int
        Sizes of the three objects.
    routing_bytes : int
        Size of the routing (:attr:`RoutingLayout.size`); 0 for a model without MoE layers.

    Returns
    -------
    DramLayout
    """
    weights = 0
    image = _align(frame_bytes)
    output = image + _align(image_bytes)
    routing = output + routing_offset(output_bytes)
    return DramLayout(weights, image, output, routing, routing + _align(routing_bytes))


class RoutingLayout(NamedTuple):
    """Where each MoE layer's expert choices lie in the routing region, and how to read them.

    Per MoE layer, in the program's order, a block of ``layer_bytes``: token ``t``'s record at
    byte ``t * record_bytes``, holding its ``top_k`` expert ids, one byte each, in rank order
    (first choice first; the top-k unit's order: the largest logit, ties to the lower index).
    A record is ``top_k`` rounded up to a power of two bytes, so that records never straddle a
    DRAM beat; a block is rounded up to whole beats, as the accelerator writes only whole beats.
    Bytes past ``top_k`` in a record and past the last token in a block are padding (not
    specified).

    Attributes
    ----------
    layers : int
        MoE layers.
    tokens, top_k : int
    """

    layers: int
    tokens: int
    top_k: int

    @property
    def record_bytes(self):
        """Bytes per token: ``top_k`` rounded up to a power of two (at most one beat)."""
        if not 1 <= self.top_k <= BEAT:
            raise ValueError(f"top-k {self.top_k} does not fit a {BEAT}-byte routing record")
        return 1 << (self.top_k - 1).bit_length()

    @property
    def layer_bytes(self):
        """Bytes of one layer's block: its tokens' records, rounded up to whole beats."""
        return _align(self.tokens * self.record_bytes, BEAT)

    @property
    def size(self):
        """Bytes of the whole routing region."""
        return self.layers * self.layer_bytes

    def layer_offset(self, index):
        """Bytes from the routing region's start to the block of MoE layer number ``index`` (0 first)."""
        return index * self.layer_bytes

    def decode(self, blob):
        """The routing as read from DRAM, ``size`` bytes, as uint8 expert ids ``[layers, tokens, top_k]``."""
        raw = np.frombuffer(bytes(blob), dtype=np.uint8)
        if raw.size != self.size:
            raise ValueError(f"routing of {raw.size} bytes; the layout has {self.size}")
        blocks = raw.reshape(self.layers, self.layer_bytes)[:, :self.tokens * self.record_bytes]
        return blocks.reshape(self.layers, self.tokens, self.record_bytes)[:, :, :self.top_k].copy()

    def encode(self, experts):
        """One layer's block as the accelerator writes it, from expert ids ``[tokens, top_k]``.

        The inverse of :meth:`decode` for one layer; padding bytes are written as zeros.
        """
        experts = np.asarray(experts)
        if experts.shape != (self.tokens, self.top_k):
            raise ValueError(f"experts of shape {list(experts.shape)}; the layout has "
                             f"{[self.tokens, self.top_k]}")
        if experts.size and (experts.min() < 0 or experts.max() > 255):
            raise ValueError("expert ids must fit a byte")
        block = np.zeros(self.layer_bytes, dtype=np.uint8)
        records = block[:self.tokens * self.record_bytes].reshape(self.tokens, self.record_bytes)
        records[:, :self.top_k] = experts
        return block
