"""One frame as a picture: its phases over time, and what the MAC array did in each.

The upper panel has one row per kind of work (``sim.trace.KINDS``: program load, loads and
stores, patch embedding, LayerNorm, attention, dense MLP, MoE gate, experts) with a bar wherever
that kind ran, and the encoder layers marked along the top. The lower panel splits every segment's cycles into
the array taking operands, the array waiting for weights from DRAM, and the rest (LayerNorm,
drains, barriers, data movement: the vector units and the sequencer working alone), as shares of
the segment stacked to 1. Drawn with matplotlib (Agg, no display needed).
"""

from pathlib import Path

from .trace import KINDS

__all__ = ["FIGURE_SUFFIXES", "draw_timeline"]

#: File types :func:`draw_timeline` writes.
FIGURE_SUFFIXES = (".png", ".svg")

_COLOURS = {"program": "#9e9e9e", "load/store": "#8d6e63", "embed": "#00897b", "layernorm": "#ab47bc", "attention": "#1e88e5",
            "mlp": "#43a047", "gate": "#fb8c00", "experts": "#e53935"}
_BUSY, _STALL, _OTHER = "#2e7d32", "#c62828", "#bdbdbd"


def draw_timeline(segments, path, *, clock_mhz=300.0, title=""):
    """Draw ``segments`` (``sim.trace.Segment`` of one frame) into ``path`` (PNG or SVG).

    Time is shown in microseconds at ``clock_mhz``.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise ValueError(f"timeline file {path} must end in {' or '.join(FIGURE_SUFFIXES)}")
    if not segments:
        raise ValueError("no segments to draw: the frame was not traced")
    us = 1.0 / clock_mhz
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(14, 6), sharex=True, height_ratios=(3, 2),
                                      layout="constrained")
    for row, kind in enumerate(KINDS):
        bars = [(s.start * us, s.cycles * us) for s in segments if s.kind == kind]
        top.broken_barh(bars, (row - 0.4, 0.8), facecolors=_COLOURS[kind])
    top.set_yticks(range(len(KINDS)), KINDS)
    top.invert_yaxis()
    _mark_layers(top, segments, us)

    x, busy, stall = [], [], []
    for s in segments:
        x += [s.start * us, (s.start + s.cycles) * us]
        busy += [s.macs / s.cycles] * 2
        stall += [s.stalls / s.cycles] * 2
    bottom.stackplot(x, busy, stall, [1 - b - w for b, w in zip(busy, stall)], colors=(_BUSY, _STALL, _OTHER),
                     labels=("MAC array busy", "waiting on DRAM", "vector units / other"), linewidth=0)
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("share of cycles")
    bottom.set_xlabel(f"time (µs at {clock_mhz:g} MHz)")
    bottom.set_xlim(0, (segments[-1].start + segments[-1].cycles) * us)
    bottom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _mark_layers(ax, segments, us):
    """A line where each encoder layer starts, its number above the panel."""
    starts = {}
    for s in segments:
        if s.layer >= 0 and s.label != "store" and s.label != "end":
            starts.setdefault(s.layer, s.start)
    for layer, start in starts.items():
        ax.axvline(start * us, color="black", linewidth=0.5, alpha=0.5)
        ax.annotate(f"L{layer}", (start * us, 1.0), xycoords=("data", "axes fraction"), fontsize=8,
                    va="bottom", ha="left")
