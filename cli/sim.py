"""``m3vit simulate`` and ``m3vit perf``: a frame through the simulated accelerator."""

import argparse
from pathlib import Path

from cli import UserError
from model.config import MAC_LANES, default_lanes
from sim import ENGINES

__all__ = ["register", "add_dram_options", "dram_options", "bytes_per_cycle", "default_capacity"]


def _latency(text):
    """``--dram-latency``: ``CYCLES`` or ``MIN-MAX``."""
    lo, sep, hi = text.partition("-")
    try:
        lo, hi = int(lo), int(hi) if sep else None
    except ValueError:
        raise UserError(f"--dram-latency takes CYCLES or MIN-MAX, not {text!r}") from None
    return lo, hi


def _pair(option, text, names=()):
    """``A:B`` as two integers (any base Python reads: 0x1000:0x2000), or a name in ``names``."""
    if text in names:
        return text
    a, sep, b = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(a, 0), int(b, 0)
    except ValueError:
        listed = f", or one of {', '.join(names)}" if names else ""
        raise UserError(f"{option} takes two integers A:B{listed}, not {text!r}") from None


def bytes_per_cycle(text):
    """``--dram-bytes-per-cycle``, for argparse: a positive, finite number of bytes."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"takes a positive number of bytes per cycle (51.2 for the ZCU104's "
                                         f"DDR4), not {text!r}")
    return value


def add_dram_options(p):
    """The DRAM model's options (``sim.dram.DRAMModel``, ``Impolite``) on parser ``p``."""
    g = p.add_argument_group("DRAM model (polite unless told otherwise)")
    g.add_argument("--dram-latency", default="40", metavar="CYCLES|MIN-MAX",
                   help="read latency in cycles, or a range drawn from per burst (default 40)")
    # sim.dram.DEFAULT_BYTES_PER_CYCLE, not imported here: the parser must build without amaranth.
    g.add_argument("--dram-bytes-per-cycle", type=bytes_per_cycle, default=51.2, metavar="BYTES",
                   help="the memory's read bandwidth, all AXI ports together, in bytes per cycle (default 51.2: "
                        "15.36 GB/s at 300 MHz, 80%% of the ZCU104's 64-bit DDR4-2400); each port also moves at "
                        "most one 16-byte beat per cycle")
    g.add_argument("--dram-seed", type=int, default=1, metavar="N", help="seed of the random choices (default 1)")
    g.add_argument("--ready-drop", type=float, default=0.0, metavar="P",
                   help="probability that AR, AW and W are each not ready in a cycle (default 0)")
    g.add_argument("--r-gap", type=float, default=0.0, metavar="P",
                   help="probability that a read beat that could go is held back a cycle (default 0)")
    g.add_argument("--refresh", metavar="PERIOD:LENGTH",
                   help="a refresh stall (no read beats, W not ready) of LENGTH cycles every PERIOD cycles")
    g.add_argument("--bus-error", metavar="LO:HI|REGION",
                   help="answer bursts touching byte addresses [LO, HI), or the frame's region weights, image "
                        "or output, with an error response")
    g.add_argument("--bus-error-resp", choices=("slverr", "decerr"), default="slverr",
                   help="the error response of --bus-error (default slverr)")


def dram_options(args):
    """``(latency, Impolite or None)`` from the options of :func:`add_dram_options`; ``UserError`` for bad values."""
    from sim.dram import DECERR, REGIONS, SLVERR, Impolite

    latency, latency_max = _latency(args.dram_latency)
    refresh = _pair("--refresh", args.refresh) if args.refresh else (0, 0)
    error_range = _pair("--bus-error", args.bus_error, REGIONS) if args.bus_error else None
    impolite = Impolite(seed=args.dram_seed, ar_drop=args.ready_drop, aw_drop=args.ready_drop,
                        w_drop=args.ready_drop, r_gap=args.r_gap, latency_max=latency_max,
                        refresh_period=refresh[0], refresh_length=refresh[1], error_range=error_range,
                        error_resp=DECERR if args.bus_error_resp == "decerr" else SLVERR)
    if latency < 1:
        raise UserError(f"--dram-latency must be at least 1 cycle, not {latency}")
    try:
        impolite.check(latency, names_ok=True)
    except ValueError as err:
        raise UserError(str(err)) from None
    return latency, (None if impolite == Impolite(seed=args.dram_seed) else impolite)


def _run(args, tasks, trace=False):
    """Quantise, compile, simulate ``tasks`` back to back and compare each frame with golden.

    Returns a list of ``(report, mismatching indices, timeline or None)``, one per task.
    """
    import numpy as np

    from golden.backbone import run_backbone
    from gateware.program import CapacityError
    from cli.model import check_task, model_inputs, load_artifact
    from model.quantize import calibration_images, quantize_model
    from model.weights import image_to_pixels

    from cli.progress import Progress
    from sim.accelerator import SimulationError, frame_report, simulate_frames

    latency, impolite = dram_options(args)
    cfg, weights, image = model_inputs(args)
    for task in tasks:
        check_task(cfg, task)
    cap = build_for(cfg, args)
    progress = Progress()
    artifact = load_artifact(args.artifact, cfg)
    if artifact is None:
        with progress.stage("quantising the model (calibration images)"):
            artifact = quantize_model(cfg, weights.tensors, calibration_images(image))
    pixels = image_to_pixels(image)
    with progress.stage("golden (integer) model"):
        goldens = [run_backbone(artifact, pixels, task) for task in tasks]
    print(f"simulating config {cfg.name}, task{'s' * (len(tasks) > 1)} {', '.join(map(str, tasks))}, "
          f"{cap.shape} MAC array, {cap.ports} AXI port{'s' * (cap.ports > 1)} on a DRAM of "
          f"{args.dram_bytes_per_cycle:g} bytes/cycle, engine {args.engine} (weights {weights.source})", flush=True)
    try:
        results = simulate_frames(artifact, pixels, tasks, cap=cap, engine=args.engine,
                                  dram_latency=latency, dram_bytes_per_cycle=args.dram_bytes_per_cycle,
                                  impolite=impolite, progress=progress.cycles, trace=trace, stage=progress.stage)
    except (CapacityError, SimulationError) as err:
        raise UserError(str(err)) from None
    return [({**frame_report(artifact, task, result, golden, cap), "dram_bytes_per_cycle": args.dram_bytes_per_cycle},
             np.argwhere(result.output != golden.output), result.timeline)
            for task, result, golden in zip(tasks, results, goldens)]


def default_capacity(cfg):
    """The build a model runs on unless told otherwise: the board's (``Capacity.board()``) when
    the model fits it (edge-moe), else the smallest build that holds the model on the config's
    default lanes (tiny), as ``m3vit synth --top accelerator --config`` builds."""
    from gateware.program import Capacity, CapacityError, check_capacity

    try:
        check_capacity(cfg, Capacity.board())
        return Capacity.board()
    except CapacityError:
        pass
    try:
        return Capacity.for_config(cfg, default_lanes(cfg))
    except CapacityError as err:
        raise UserError(str(err)) from None


def build_for(cfg, args):
    """The build ``simulate`` and ``perf`` run ``cfg`` on: :func:`default_capacity` without
    ``--lanes``, ``--array`` and ``--ports``; else the smallest build of that shape (one port unless
    ``--ports`` says more). ``UserError`` where none holds the model."""
    from gateware.program import Capacity, CapacityError

    if args.array is None and args.lanes is None and args.ports is None:
        return default_capacity(cfg)
    lanes, cols = args.array or (args.lanes or default_lanes(cfg), None)
    try:
        return Capacity.for_config(cfg, lanes, cols, ports=1 if args.ports is None else args.ports)
    except CapacityError as err:
        raise UserError(str(err)) from None


def array_shape(text):
    """``RxC`` as (R, C), for argparse: the MAC array's token lanes and output channels."""
    rows, sep, cols = text.lower().partition("x")
    if not (sep and rows.isdigit() and cols.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not RxC (e.g. 16x64)")
    if int(rows) not in MAC_LANES:
        raise argparse.ArgumentTypeError(f"R must be one of {', '.join(map(str, MAC_LANES))}, not {rows}")
    return int(rows), int(cols)


def _print(report, bad):
    r = report
    print(f"task {r['task']}:")
    if r["bit_exact"]:
        print(f"output: {r['mismatches']} of the features differ from golden: BIT-EXACT")
    else:
        first = ", ".join(f"[{t},{c}]" for t, c in bad[:5])
        print(f"output: {r['mismatches']} features differ from golden (first at {first}): MISMATCH")
    print(f"cycles {r['cycles']} (stalled on DRAM {r['stall_cycles']}), latency at 300 MHz "
          f"{r['latency_ms_at_300mhz']:.3f} ms, MAC utilisation {r['mac_utilization']:.3f}")
    print(f"  = tiles {r['tile_fill']:.3f} full (token/channel padding) x array busy {r['array_busy_fraction']:.3f} "
          f"of the cycles ({r['array_cycles']} tile cycles)")
    print(f"DRAM bytes {r['dram_bytes']} (read {r['dram_bytes_read']}, written {r['dram_bytes_written']}); "
          f"minimum {r['dram_bytes_min']} ({r['dram_bytes'] / r['dram_bytes_min']:.3f} x)")
    print("experts run per MoE layer: " + ", ".join(f"layer {e['layer']}: {e['count']}" for e in r["experts_run"]))
    if r["experts_run"]:
        print(f"routing written to DRAM: {r['routing_mismatches']} tokens' experts differ from golden: "
              f"{'EQUAL' if r['routing_matches'] else 'MISMATCH'}")
    if "phases" in r:
        print(f"{'cycles by phase':<16} {'cycles':>10} {'share':>6} {'MAC busy':>9} {'on DRAM':>8}")
        for kind, row in r["phases"].items():
            if row["cycles"]:
                print(f"  {kind:<14} {row['cycles']:>10} {row['cycles'] / r['cycles']:>6.3f} "
                      f"{row['mac_cycles'] / row['cycles']:>9.3f} {row['stall_cycles'] / row['cycles']:>8.3f}")
    print(f"simulated in {r['wall_seconds']:.1f} s")


def _simulate(args):
    frames = _run(args, args.task)
    for report, bad, _ in frames:
        _print(report, bad)
    if len(frames) > 1:
        print("tasks switched by writing the TASK register only; weights, program and image stayed in DRAM")
    return 0 if all(report["bit_exact"] and report["routing_matches"] for report, _, _ in frames) else 1


def _perf(args):
    from cli.model import check_output_path, write_json
    from sim.timeline_figure import FIGURE_SUFFIXES, draw_timeline

    for path in (args.json, args.timeline):
        if path:
            check_output_path(path)
    if args.timeline and Path(args.timeline).suffix.lower() not in FIGURE_SUFFIXES:
        raise UserError(f"--timeline {args.timeline}: the file must end in {' or '.join(FIGURE_SUFFIXES)}")
    [(report, bad, timeline)] = _run(args, [args.task], trace=True)
    _print(report, bad)
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    if args.timeline:
        draw_timeline(timeline, args.timeline, title=f"{report['config']}, task {report['task']}: "
                      f"{report['cycles']:,} cycles, {report['latency_ms_at_300mhz']:.2f} ms at 300 MHz, "
                      f"MAC utilisation {report['mac_utilization']:.3f}")
        print(f"wrote {args.timeline}")
    return 0 if report["bit_exact"] and report["routing_matches"] else 1


def register(sub):
    """Add ``simulate`` and ``perf`` to the ``m3vit`` parser."""
    from cli.model import add_model_options

    for name, handler, engine, text in (
            ("simulate", _simulate, "verilator", "run one frame through the simulated accelerator and compare with golden"),
            ("perf", _perf, "verilator", "simulate one frame cycle-accurately and report cycles, MAC use, DRAM traffic")):
        p = sub.add_parser(name, help=text)
        add_model_options(p)
        if name == "simulate":
            p.add_argument("--task", type=int, nargs="+", default=[0], metavar="N",
                           help="task (selects the MoE gates; default 0); several run back to back on one "
                                "accelerator, switched by a register write")
        else:
            p.add_argument("--task", type=int, default=0, help="task (selects the MoE gates; default 0)")
        p.add_argument("--artifact", metavar="FILE", help="quantised artifact from m3vit quantize "
                                                          "(default: quantise now)")
        p.add_argument("--engine", choices=ENGINES, default=engine, help=f"simulator (default {engine})")
        shape = p.add_mutually_exclusive_group()
        shape.add_argument("--lanes", type=int, choices=MAC_LANES,
                           help="a square MAC array of this many rows and columns, the smallest build that holds "
                                "the model (without --lanes, --array and --ports: the board's build, 16x64 with "
                                "four ports, when the model fits it, as edge-moe does; else 8 lanes for small "
                                "models such as tiny)")
        shape.add_argument("--array", type=array_shape, metavar="RxC",
                           help="MAC array of R token lanes (8 or 16) by C output channels (R times 1, 2, 4 or 8, "
                                "a multiple of 16 unless R, dividing the model's head size), e.g. 16x64")
        p.add_argument("--ports", type=int, metavar="P",
                       help="AXI4 read managers streaming weight tiles: 1, 2 or 4, at most C / 16 (default 1 with "
                            "--lanes or --array); port 0 also carries the program, image and outputs")
        add_dram_options(p)
        if name == "perf":
            p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
            p.add_argument("--timeline", metavar="FILE", help="draw the frame's phases over time (.png or .svg)")
        p.set_defaults(handler=handler)
