"""The payload of most streams between the blocks: one element per token lane, and ``last``."""

from amaranth.lib import data

__all__ = ["lane_layout"]


def lane_layout(lanes, shape, field="data"):
    """``StructLayout({field: ArrayLayout(shape, lanes), "last": 1})``.

    One transfer holds element ``j`` of every lane's row (or channel ``j`` of every token);
    ``last`` marks a row's or a tile's final transfer.
    """
    return data.StructLayout({field: data.ArrayLayout(shape, lanes), "last": 1})
