"""Run one frame through the simulated accelerator: DRAM model, register writes, result.

The same sequence runs on either engine: Amaranth's simulator (``pysim``) or the Verilog
compiled by Verilator (``verilator``). The host side is what a driver on the board does: put the
compiled weights/program and the image into DRAM, write the base addresses and the task, start,
wait for done, read the features and the counters.
"""

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from gateware.program import Capacity, compile_frame
from runtime.layout import dram_layout as _region_layout
from runtime.regs import STATUS_BUSY, STATUS_DONE, STATUS_ERROR, Reg, error_message

from .dram import DEFAULT_BYTES_PER_CYCLE
from .session import ENGINES, open_session
from .trace import frame_timeline, phase_summary

__all__ = ["FrameResult", "SimulationError", "dram_layout", "simulate_frame", "simulate_frames", "useful_macs",
           "array_cycles", "frame_report", "golden_routing"]

#: Cycles between status polls; a poll is two register reads (Verilator: cheap to run far ahead).
_POLL = 512
_POLL_VERILATOR = 100_000


class SimulationError(RuntimeError):
    """The accelerator did not finish, stopped on an error, or broke the bus protocol."""


@dataclass
class FrameResult:
    """What one simulated frame produced and cost.

    Attributes
    ----------
    output : ndarray
        int16 features ``[tokens, dim]`` read back from DRAM.
    cycles, stalls : int
        The accelerator's own counters: cycles from start to done, and cycles the MAC array
        waited for weights from DRAM.
    dram_read, dram_written : int
        Bytes moved on the AXI port.
    engine : str
    wall_seconds : float
    frame : gateware.program.Frame
        The compiled program and DRAM image that ran.
    read_log : list of (int, int) or None
        Every read burst as ``(byte address, bytes)`` relative to the weights base (pysim only;
        ``None`` under Verilator, whose DRAM model counts but does not log).
    timeline : list of sim.trace.Segment or None
        Where the frame's cycles went, when simulated with ``trace``.
    routing : ndarray or None
        uint8 expert ids ``[moe_layers, tokens, top_k]`` the accelerator wrote (first choice
        first), as ``runtime.layout.RoutingLayout`` lays them out.
    """

    output: np.ndarray
    cycles: int
    stalls: int
    dram_read: int
    dram_written: int
    engine: str
    wall_seconds: float
    frame: object
    read_log: list = None
    timeline: list = None
    routing: np.ndarray = None


def dram_layout(frame, image_bytes):
    """Byte addresses of the weights, image, output and routing, and the DRAM size (``runtime.layout``'s)."""
    return tuple(_region_layout(len(frame.weights), image_bytes, frame.output_bytes, frame.routing.size))


def _register_writes(task, weights, image, output):
    return [(Reg.TASK, task), (Reg.WEIGHTS_LO, weights & 0xFFFFFFFF), (Reg.WEIGHTS_HI, weights >> 32),
            (Reg.IMAGE_LO, image & 0xFFFFFFFF), (Reg.IMAGE_HI, image >> 32),
            (Reg.OUTPUT_LO, output & 0xFFFFFFFF), (Reg.OUTPUT_HI, output >> 32), (Reg.CONTROL, 1)]


def simulate_frame(artifact, pixels, task, **kwargs):
    """Run one frame of ``artifact`` on int8 ``pixels`` ``[C, H, W]`` for ``task``.

    Takes the keyword arguments of :func:`simulate_frames`; returns one :class:`FrameResult`.
    """
    return simulate_frames(artifact, pixels, [task], **kwargs)[0]


def simulate_frames(artifact, pixels, tasks, *, lanes=8, cap=None, engine="pysim", dram_latency=40,
                    dram_beats_per_cycle=1.0, dram_bytes_per_cycle=DEFAULT_BYTES_PER_CYCLE, impolite=None,
                    max_cycles=50_000_000, progress=None, trace=False, stage=None):
    """Run frames back to back on one accelerator, one per entry of ``tasks``.

    The first frame writes every register; each later one writes only TASK and CONTROL, as a
    driver switching tasks would: the weights, program and image stay where they are in DRAM.

    Parameters
    ----------
    artifact : model.artifact.Artifact
    pixels : ndarray
        int8 image ``[C, H, W]``.
    tasks : sequence of int
    lanes : int
        MAC array size when ``cap`` is not given.
    cap : Capacity, optional
        The accelerator to build; by default the smallest that holds the config at ``lanes``.
    engine : str
        ``"pysim"`` or ``"verilator"``.
    dram_latency, dram_beats_per_cycle, dram_bytes_per_cycle : int, float, float
        The DRAM model: cycles from a read address to its first beat, sustained beats (16 bytes)
        per cycle of each AXI port, and bytes per cycle of all ports together (the memory's
        bandwidth; ``sim.dram.DEFAULT_BYTES_PER_CYCLE``, 51.2, by default).
    impolite : sim.dram.Impolite, optional
        Back-pressure, latency jitter, refresh stalls, error responses (``sim.dram``).
    max_cycles : int
        Give up (``SimulationError``) after this many cycles of one frame.
    progress : callable, optional
        Called with the frame's cycle count now and then.
    trace : bool
        Record each frame's timeline (``FrameResult.timeline``, ``sim.trace``).
    stage : callable, optional
        ``stage(what, simulates)`` returns a context manager around each long step (building the
        accelerator, each frame), as ``cli.progress.Progress.stage`` does.

    Returns
    -------
    list of FrameResult
        One per task; DRAM bytes and the read log are each frame's own.

    Raises
    ------
    gateware.program.CapacityError
        When the config does not fit ``cap`` (before anything is simulated).
    ValueError
        For an unknown engine or task, or pixels of the wrong shape.
    """
    cfg = artifact.config
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no task to run")
    for task in tasks:
        if not 0 <= task < cfg.num_tasks:
            raise ValueError(f"unknown task {task}: config {cfg.name!r} has tasks 0..{cfg.num_tasks - 1}")
    pixels = np.asarray(pixels)
    want = (cfg.in_chans, cfg.image_height, cfg.image_width)
    if pixels.shape != want:
        raise ValueError(f"pixels have shape {list(pixels.shape)}, expected {list(want)}")
    if impolite is not None:
        impolite.check(dram_latency, names_ok=True)
    cap = cap or Capacity.for_config(cfg, lanes)
    frame = compile_frame(artifact, cap)
    image = pixels.astype(np.int8).tobytes()
    w_addr, i_addr, o_addr, r_addr, size = dram_layout(frame, len(image))
    if impolite is not None and isinstance(impolite.error_range, str):
        region = {"weights": (w_addr, len(frame.weights)), "image": (i_addr, len(image)),
                  "output": (o_addr, frame.output_bytes)}[impolite.error_range]
        impolite = dataclasses.replace(impolite, error_range=(region[0], region[0] + region[1]))
    contents = [(w_addr, frame.weights), (i_addr, image)]
    setup = _register_writes(tasks[0], w_addr, i_addr, o_addr)[:-2]
    writes = [[(Reg.TASK, task), (Reg.CONTROL, 1)] for task in tasks]
    writes[0] = setup + writes[0]
    stage = stage or _no_stage
    with stage(f"building the accelerator for {engine}", False):
        session = open_session(engine, cap, size, latency=dram_latency, beats_per_cycle=dram_beats_per_cycle,
                               bytes_per_cycle=dram_bytes_per_cycle, impolite=impolite, trace=trace)
    results = []
    try:
        for addr, blob in contents:
            session.dram.write(addr, blob)
        for i, (task, frame_writes) in enumerate(zip(tasks, writes)):
            with stage(f"frame {i + 1} of {len(tasks)}: task {task}", True):
                results.append(_run_frame(session, engine, cfg, frame, frame_writes, (o_addr, r_addr),
                                          max_cycles, progress))
    finally:
        session.close()
    return results


def _run_frame(session, engine, cfg, frame, frame_writes, addrs, max_cycles, progress):
    """Write the registers, wait for done, and read back one frame's result (``addrs``: the
    output's and the routing's DRAM addresses)."""
    o_addr, r_addr = addrs
    dram = session.dram
    start = time.perf_counter()
    read, written = dram.bytes_read, dram.bytes_written
    logged = len(dram.read_log) if engine == "pysim" else None
    since = session.cycle
    for reg, value in frame_writes:
        session.write(reg, value)
    poll = _POLL if engine == "pysim" else _POLL_VERILATOR
    waited = 0
    while True:
        session.tick(poll)
        waited += poll
        if _finished(session, waited, max_cycles, progress):
            break
    cycles = session.read(Reg.CYCLES_LO)
    cycles |= session.read(Reg.CYCLES_HI) << 32
    stalls = session.read(Reg.STALLS_LO)
    stalls |= session.read(Reg.STALLS_HI) << 32
    output = np.frombuffer(dram.read(o_addr, frame.output_bytes), dtype="<i2")
    routing = frame.routing.decode(dram.read(r_addr, frame.routing.size))
    return FrameResult(output.reshape(cfg.tokens, cfg.dim).astype(np.int64), cycles, stalls,
                       dram.bytes_read - read, dram.bytes_written - written, engine,
                       time.perf_counter() - start, frame,
                       None if logged is None else dram.read_log[logged:], _timeline(session, frame, since),
                       routing)


@contextmanager
def _no_stage(what, simulates):
    yield


def _timeline(session, frame, since):
    if session.recorder is None:
        return None
    return frame_timeline(session.recorder.segments(), session.cycle, frame.labels, since)


def _finished(session, waited, max_cycles, progress):
    """Whether a polled STATUS says done; raise if the accelerator stopped or ran out of time."""
    status = session.read(Reg.STATUS)
    if status & STATUS_ERROR:
        addr = session.read(Reg.ERROR_ADDR_LO) | session.read(Reg.ERROR_ADDR_HI) << 32
        raise SimulationError(f"the accelerator stopped on an error: "
                              f"{error_message(session.read(Reg.ERROR_CODE), addr)}")
    if status & STATUS_DONE:
        return True
    if not status & STATUS_BUSY:
        raise SimulationError("the accelerator stopped without finishing (bad program header?)")
    if waited > max_cycles:
        raise SimulationError(f"no result after {max_cycles} cycles")
    if progress:
        progress(waited)
    return False


def useful_macs(cfg, tokens_per_layer_expert):
    """Multiply-accumulates one frame needs: every matrix product of the model, MoE experts for
    the tokens routed to them (``tokens_per_layer_expert``: MoE layer -> total queued tokens)."""
    t, d = cfg.tokens, cfg.dim
    macs = cfg.num_patches * cfg.patch_dim * d
    for layer in range(cfg.depth):
        macs += t * d * 3 * d + 2 * cfg.heads * t * t * cfg.head_dim + t * d * d
        if cfg.is_moe(layer):
            macs += t * d * cfg.num_experts + tokens_per_layer_expert[layer] * 2 * d * cfg.expert_hidden
        else:
            macs += 2 * t * d * cfg.mlp_hidden
    return macs


def array_cycles(cfg, rows, cols, expert_tokens):
    """Operand transfers into the MAC array in one frame: each tile (``rows`` tokens by ``cols``
    output channels) takes one per inner element, partly empty tiles included.

    ``expert_tokens``: MoE layer -> token counts of the experts that ran. The frame's cycles above
    this are the rest of the machine (fetch stalls, LayerNorm, phase changes, operands that take
    more than a cycle); useful MACs below ``rows * cols`` times this are tile padding.
    """
    t, d = cfg.tokens, cfg.dim

    def gemm(n_rows, out, k):
        return -(-n_rows // rows) * -(-out // cols) * k

    blocks = -(-t // rows)
    cycles = gemm(cfg.num_patches, d, cfg.patch_dim)
    for layer in range(cfg.depth):
        cycles += gemm(t, 3 * d, d) + gemm(t, d, d)
        cycles += cfg.heads * blocks * (gemm(rows, t, cfg.head_dim) + gemm(rows, cfg.head_dim, t))
        if cfg.is_moe(layer):
            cycles += gemm(t, cfg.num_experts, d)
            for count in expert_tokens[layer]:
                cycles += gemm(count, cfg.expert_hidden, d) + gemm(count, d, cfg.expert_hidden)
        else:
            cycles += gemm(t, cfg.mlp_hidden, d) + gemm(t, d, cfg.mlp_hidden)
    return cycles


def frame_report(artifact, task, result, golden, cap):
    """Figures of a simulated frame against golden: the ``m3vit perf`` JSON."""
    cfg = artifact.config
    frame = result.frame
    experts_run, queued, counts = [], {}, {}
    trace = {}
    for step, data in golden.trace:
        trace.setdefault(step.layer, {}).update(data)
    minimum = (frame.dense_bytes + cfg.in_chans * cfg.image_height * cfg.image_width + frame.output_bytes
               + frame.routing.size)
    for layer in cfg.moe_layers:
        active = [int(e) for e in trace[layer]["experts_run"]]
        experts_run.append({"layer": layer, "experts": active, "count": len(active)})
        queued[layer] = int(np.asarray(trace[layer]["experts"]).size)
        per_expert = np.bincount(np.asarray(trace[layer]["experts"]).ravel(), minlength=cfg.num_experts)
        counts[layer] = [int(per_expert[e]) for e in active]
        minimum += frame.gate_bytes[layer] + len(active) * frame.expert_bytes[layer]
    n, pes = cap.lanes, cap.lanes * cap.cols
    macs = useful_macs(cfg, queued)
    tile_cycles = array_cycles(cfg, cap.lanes, cap.cols, counts)
    mismatches = int(np.count_nonzero(result.output != golden.output))
    # Tokens (per MoE layer) whose recorded experts differ from golden's, in rank order.
    routing_mismatches = int(np.count_nonzero((result.routing != golden_routing(cfg, golden)).any(axis=-1)))
    return {
        "config": cfg.name, "task": task, "engine": result.engine, "lanes": n, "cols": cap.cols, "array": cap.shape,
        "ports": cap.ports, "array_dsp": pes,
        "bit_exact": mismatches == 0, "mismatches": mismatches,
        "cycles": result.cycles, "stall_cycles": result.stalls, "dram_stall_cycles": result.stalls,
        "latency_ms_at_300mhz": result.cycles / 300e6 * 1e3,
        "useful_macs": macs, "mac_utilization": macs / (pes * result.cycles),
        "array_cycles": tile_cycles, "array_busy_fraction": tile_cycles / result.cycles,
        "tile_fill": macs / (pes * tile_cycles),
        "dram_bytes": result.dram_read + result.dram_written, "dram_bytes_read": result.dram_read,
        "dram_bytes_written": result.dram_written, "dram_bytes_min": minimum,
        "experts_run": experts_run, "routing_matches": routing_mismatches == 0,
        "routing_mismatches": routing_mismatches, "wall_seconds": result.wall_seconds,
        **({"phases": phase_summary(result.timeline)} if result.timeline else {}),
    }


def golden_routing(cfg, golden):
    """Golden's expert choices of a frame, ``[moe_layers, tokens, top_k]`` in rank order: what the
    accelerator writes to its routing region (``golden``: a ``golden.backbone.GoldenRun``)."""
    experts = {step.layer: data["experts"] for step, data in golden.trace if "experts" in data}
    return np.array([experts[layer] for layer in cfg.moe_layers], dtype=np.int64).reshape(
        len(cfg.moe_layers), cfg.tokens, cfg.top_k)
