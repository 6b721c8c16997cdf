"""``m3vit simulate`` and ``m3vit perf``: a frame through the simulated accelerator."""

from pathlib import Path

from cli import UserError
from model.config import MAC_LANES, default_lanes
from sim import ENGINES

__all__ = ["register"]


def _run(args, tasks, trace=False):
    """Quantise, compile, simulate ``tasks`` back to back and compare each frame with golden.

    Returns a list of ``(report, mismatching indices, timeline or None)``, one per task.
    """
    import numpy as np

    from golden.backbone import run_backbone
    from gateware.program import Capacity, CapacityError
    from cli.model import check_task, model_inputs, load_artifact
    from model.quantize import calibration_images, quantize_model
    from model.weights import image_to_pixels

    from cli.progress import Progress
    from sim.accelerator import SimulationError, frame_report, simulate_frames

    cfg, weights, image = model_inputs(args)
    for task in tasks:
        check_task(cfg, task)
    lanes = args.lanes or default_lanes(cfg)
    try:
        cap = Capacity.for_config(cfg, lanes)
    except CapacityError as err:
        raise UserError(str(err)) from None
    progress = Progress()
    artifact = load_artifact(args.artifact, cfg)
    if artifact is None:
        with progress.stage("quantising the model (calibration images)"):
            artifact = quantize_model(cfg, weights.tensors, calibration_images(image))
    pixels = image_to_pixels(image)
    with progress.stage("golden (integer) model"):
        goldens = [run_backbone(artifact, pixels, task) for task in tasks]
    print(f"simulating config {cfg.name}, task{'s' * (len(tasks) > 1)} {', '.join(map(str, tasks))}, "
          f"{lanes}x{lanes} MAC array, engine {args.engine} (weights {weights.source})", flush=True)
    try:
        results = simulate_frames(artifact, pixels, tasks, cap=cap, engine=args.engine,
                                  dram_latency=args.dram_latency, progress=progress.cycles, trace=trace,
                                  stage=progress.stage)
    except (CapacityError, SimulationError) as err:
        raise UserError(str(err)) from None
    return [(frame_report(artifact, task, result, golden, cap), np.argwhere(result.output != golden.output),
             result.timeline) for task, result, golden in zip(tasks, results, goldens)]


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
        p.add_argument("--lanes", type=int, choices=MAC_LANES, help="MAC array rows and columns (default: 8 for "
                                                                  "small models, else 16)")
        p.add_argument("--dram-latency", type=int, default=40, help="DRAM read latency in cycles (default 40)")
        if name == "perf":
            p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
            p.add_argument("--timeline", metavar="FILE", help="draw the frame's phases over time (.png or .svg)")
        p.set_defaults(handler=handler)
