"""Where a frame's cycles go: the accelerator's trace port cut into segments.

The accelerator's ``trace`` port (``gateware.phase.Trace``) says every cycle whether a frame is
running, which instruction and MoE expert, the phase's column sink, and whether the MAC array took
operands (``mac``) or waited for a weight tile from DRAM (``stall``). A recorder watches it before
every clock edge and starts a new *segment* whenever anything but those two event bits changes;
per segment it counts the events. :class:`PysimTraceRecorder` does it in Amaranth's simulator,
``sim/trace_model.cpp`` in C++ under Verilator, with the same cycle numbering, so the segments
agree between the engines.

:func:`frame_timeline` turns the segments of one frame into :class:`Segment` records labelled
with what the compiler says each instruction computes (``Frame.labels``), and
:func:`phase_summary` adds them up per kind of work; ``sim/timeline_figure.py`` draws them.
"""

import ctypes
from dataclasses import dataclass
from pathlib import Path

from amaranth.hdl import Value

from gateware.phase import Sink, Trace

__all__ = ["Segment", "PysimTraceRecorder", "VerilatorTraceRecorder", "frame_timeline", "phase_summary",
           "KINDS", "TRACE_CPP_SOURCE", "TRACE_FUNCTIONS"]

#: The C++ recorder, compiled into the accelerator's Verilator model.
TRACE_CPP_SOURCE = Path(__file__).with_name("trace_model.cpp")
#: Its functions, for ``VerilatorModel(extra_functions=...)``.
TRACE_FUNCTIONS = {
    "trace_attach": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint64]),
    "trace_count": (ctypes.c_uint64, []),
    "trace_read": (None, [ctypes.c_uint64, ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64)]),
}

_MAC_MASK = 1 << Trace["mac"].offset
_STALL_MASK = 1 << Trace["stall"].offset
_KEY_MASK = ~(_MAC_MASK | _STALL_MASK)

#: Kinds of work a segment is counted under, in drawing order.
KINDS = ("program", "load/store", "embed", "layernorm", "attention", "mlp", "gate", "experts")
_KIND_OF_LABEL = {"load": "load/store", "store": "load/store", "end": "load/store", "embed": "embed",
                  "layernorm": "layernorm", "qkv": "attention", "attention": "attention", "proj": "attention",
                  "fc1": "mlp", "fc2": "mlp"}


@dataclass(frozen=True)
class Segment:
    """A run of cycles with the same instruction, expert and sink.

    Attributes
    ----------
    start, cycles : int
        First cycle, counted from the frame's start, and length.
    layer : int
        Encoder layer of the instruction (-1 before the first; -1 while the program loads).
    label : str
        What the instruction computes (``Frame.labels``), or ``program`` while the header and
        program load.
    kind : str
        One of :data:`KINDS`.
    pc, expert : int
    sink : gateware.phase.Sink
    macs, stalls : int
        Cycles in which the MAC array took operands, and waited for a weight tile from DRAM.
    """

    start: int
    cycles: int
    layer: int
    label: str
    kind: str
    pc: int
    expert: int
    sink: Sink
    macs: int
    stalls: int


class PysimTraceRecorder:
    """Segments of ``port`` (an Accelerator's ``trace``) in Amaranth's simulator.

    Add :meth:`process` to the simulator with ``add_process``; ``raw`` then grows as it runs.
    """

    def __init__(self, port):
        self.port = Value.cast(port)
        self.raw = []           # [start, key, macs, stalls]
        self._cycle = 0

    async def process(self, ctx):
        async for _, _, value in ctx.tick().sample(self.port):
            key = value & _KEY_MASK
            if not self.raw or self.raw[-1][1] != key:
                self.raw.append([self._cycle, key, 0, 0])
            seg = self.raw[-1]
            seg[2] += bool(value & _MAC_MASK)
            seg[3] += bool(value & _STALL_MASK)
            self._cycle += 1

    def segments(self):
        """``(start, key, macs, stalls)`` of every segment so far, the last one still open."""
        return [tuple(s) for s in self.raw]


class VerilatorTraceRecorder:
    """Segments of the trace port ``name`` of a Verilator model built with the C++ recorder."""

    def __init__(self, model, name="trace"):
        if not hasattr(model.extra, "trace_attach"):
            raise ValueError("the model was not built with the trace recorder (sim/trace_model.cpp)")
        status = model.extra.trace_attach(name.encode(), _MAC_MASK, _STALL_MASK)
        if status != 0:
            raise RuntimeError(f"cannot attach the trace recorder to port {name!r} (status {status}: "
                               f"-1 no such port of at most 64 bits, -2 already attached)")
        self.model = model

    def segments(self):
        """``(start, key, macs, stalls)`` of every segment so far, the last one still open."""
        n = self.model.extra.trace_count()
        out = (ctypes.c_uint64 * (4 * n))()
        self.model.extra.trace_read(0, n, out)
        return [tuple(out[4 * i:4 * i + 4]) for i in range(n)]


def frame_timeline(raw, end, labels, since=0):
    """The segments of the frame that started at or after cycle ``since``.

    Parameters
    ----------
    raw : list of (start, key, macs, stalls)
        A recorder's segments.
    end : int
        The cycle the recording reached (where the last segment stops).
    labels : list of (int, str)
        ``Frame.labels`` of the program that ran.
    since : int
        Cycle at or after which the frame was started.

    Returns
    -------
    list of Segment
        From the frame's first busy cycle to its last; starts count from the first.
    """
    out, t0 = [], None
    for i, (start, key, macs, stalls) in enumerate(raw):
        stop = raw[i + 1][0] if i + 1 < len(raw) else end
        if stop <= since:
            continue
        t = Trace.from_bits(key)
        if not t.busy:
            if t0 is not None:
                break
            continue
        if t0 is None:
            t0 = start
        if t.at.running:
            layer, label = labels[t.at.pc] if t.at.pc < len(labels) else (-1, "end")
        else:
            layer, label = -1, "program"
        out.append(Segment(start - t0, stop - start, layer, label, _kind(label, t.sink), int(t.at.pc),
                           int(t.at.expert), t.sink, int(macs), int(stalls)))
    return out


def _kind(label, sink):
    if label == "program":
        return "program"
    if label == "moe":
        return "gate" if sink == Sink.ROUTER else "experts"
    return _KIND_OF_LABEL.get(label, "load/store")


def phase_summary(segments):
    """Per kind of :data:`KINDS`: cycles, MAC cycles and stall cycles, summed over the frame."""
    summary = {kind: {"cycles": 0, "mac_cycles": 0, "stall_cycles": 0} for kind in KINDS}
    for s in segments:
        row = summary[s.kind]
        row["cycles"] += s.cycles
        row["mac_cycles"] += s.macs
        row["stall_cycles"] += s.stalls
    return summary
