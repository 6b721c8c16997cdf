"""``m3vit bundle`` and ``m3vit run``: package a compiled model, run it on the board or the simulator."""

import sys
from pathlib import Path

from cli import UserError
from cli.sim import array_shape, default_capacity
from model.config import MAC_LANES
from sim import ENGINES

__all__ = ["register"]


def _capacity(cfg, array=None):
    """The build a bundle targets: with ``array`` (R, C) the smallest build with that MAC array that
    holds the model; else :func:`cli.sim.default_capacity` (the board's when the model fits it)."""
    from gateware.program import Capacity, CapacityError

    if array:
        try:
            return Capacity.for_config(cfg, *array)
        except CapacityError as err:
            raise UserError(str(err)) from None
    return default_capacity(cfg)


def _bundle(args):
    import dataclasses

    from gateware.program import CapacityError, compile_frame
    from cli.model import check_output_folder, load_artifact, model_inputs
    from cli.progress import Progress
    from model.quantize import calibration_images, quantize_model

    from runtime.bundle import write_bundle

    out = Path(args.out)
    check_output_folder("--out", out)
    if args.bitstream and not Path(args.bitstream).is_file():
        raise UserError(f"bitstream {args.bitstream} does not exist")
    cfg, weights, image = model_inputs(args)
    cap = _capacity(cfg, args.array)
    artifact = load_artifact(args.artifact, cfg)
    if artifact is None:
        with Progress().stage("quantising the model (calibration images)"):
            artifact = quantize_model(cfg, weights.tensors, calibration_images(image))
    try:
        frame = compile_frame(artifact, cap)
    except CapacityError as err:
        raise UserError(str(err)) from None
    try:
        write_bundle(out, config=dataclasses.asdict(cfg) | {"tokens": cfg.tokens}, capacity=dataclasses.asdict(cap),
                     frame=frame.weights, output_scale=artifact.scales["residual"], moe_layers=cfg.moe_layers,
                     bitstream=args.bitstream,
                     note={"weights": str(weights.source), "artifact": args.artifact})
    except OSError as err:
        raise UserError(f"cannot write the bundle to {out}: {err.strerror}") from None
    print(f"wrote bundle {out}: config {cfg.name}, build {cap.shape} ({cap}), frame image "
          f"{len(frame.weights)} bytes{', bitstream' if args.bitstream else ', no bitstream'}")
    return 0


def _summary(features):
    raw, values = features.raw, features.values
    return (f"features {list(raw.shape)} int16 in [{raw.min()}, {raw.max()}], float32 mean {values.mean():.4g}, "
            f"rms {float((values.astype('float64') ** 2).mean() ** 0.5):.4g}")


def _backend(args, bundle):
    from runtime.backends import PynqBackend, SimulatorBackend

    if not args.simulate:
        return PynqBackend()
    engine = args.engine or ("pysim" if bundle.config["dim"] <= 64 else "verilator")
    capacity = None
    if args.sim_lanes:
        import dataclasses

        from gateware.program import Capacity, CapacityError
        from model.config import get_config

        try:
            capacity = dataclasses.asdict(Capacity.for_config(get_config(bundle.name), args.sim_lanes))
        except (KeyError, CapacityError) as err:
            raise UserError(f"cannot simulate a {args.sim_lanes}-lane build of {bundle.name!r}: {err}") from None
    impolite = None
    if args.sim_bus_error:
        impolite = _bus_error(args.sim_bus_error, bundle)
    return SimulatorBackend(engine, capacity=capacity, impolite=impolite)


def _bus_error(text, bundle):
    """``--sim-bus-error``: a region of the bundle's DRAM layout or ``LO:HI`` byte offsets, as an ``Impolite``."""
    import numpy as np

    from cli.sim import _pair
    from runtime.layout import dram_layout
    from sim.dram import REGIONS, Impolite

    where = _pair("--sim-bus-error", text, REGIONS)
    if isinstance(where, str):
        sizes = {"weights": len(bundle.frame), "image": int(np.prod(bundle.input_shape)),
                 "output": 2 * int(np.prod(bundle.output_shape))}
        layout = dram_layout(sizes["weights"], sizes["image"], sizes["output"])
        lo = getattr(layout, where)
        where = (lo, lo + sizes[where])
    impolite = Impolite(error_range=where)
    try:
        impolite.check(1)
    except ValueError as err:
        raise UserError(f"--sim-bus-error: {err}") from None
    return impolite


def _run(args):
    import numpy as np

    from cli.progress import Progress
    from runtime.bundle import Bundle
    from runtime.driver import Accelerator
    from runtime.errors import AcceleratorError
    from runtime.image import load_image
    from runtime.regs import CLOCK_HZ

    if (args.engine or args.sim_lanes or args.sim_bus_error) and not args.simulate:
        raise UserError("--engine, --sim-lanes and --sim-bus-error apply only with --simulate")
    if not 0 <= args.watchdog < 1 << 32:
        raise UserError(f"--watchdog counts 0..{(1 << 32) - 1} cycles, not {args.watchdog}")
    if args.timeout <= 0:
        raise UserError(f"--timeout must be positive, not {args.timeout}")
    if args.out:
        from cli.model import check_new_file

        check_new_file("--out", args.out, ".npz")
    if args.routing_layer is not None and not args.routing_map:
        raise UserError("--routing-layer applies only with --routing-map")
    if args.routing_map:
        from cli.routing_map import check_layer, check_map_path

        check_map_path(args.routing_map)
    try:
        bundle = Bundle.load(args.bundle)
        tasks = bundle.config["num_tasks"]
        for task in args.task:
            if not 0 <= task < tasks:
                raise UserError(f"unknown task {task}: bundle {args.bundle} (config {bundle.name!r}) has tasks "
                                f"0..{tasks - 1}")
        map_layer = check_layer(bundle, args.routing_layer) if args.routing_map else None
        pixels = load_image(args.image, bundle.input_shape)
        where = "the simulated accelerator" if args.simulate else "the board"
        c = bundle.capacity
        print(f"bundle {bundle.path}: config {bundle.name}, build {c['lanes']}x{c['cols']} with {c['ports']} weight "
              f"port{'s' * (c['ports'] > 1)}; running on {where}", flush=True)
        results, progress = [], Progress()
        with progress.stage(f"opening {where}"):
            acc = Accelerator(bundle, _backend(args, bundle), timeout=args.timeout, watchdog=args.watchdog)
        with acc:
            acc.set_image(pixels)
            for i, task in enumerate(args.task):
                with progress.stage(f"frame {i + 1} of {len(args.task)}: task {task}"):
                    f = acc.run(task)
                results.append(f)
                print(f"task {task}: {f.cycles} cycles ({f.stalls} stalled on DRAM), {f.latency_ms:.3f} ms at "
                      f"{CLOCK_HZ / 1e6:.0f} MHz; {_summary(f)}", flush=True)
    except AcceleratorError as err:
        raise UserError(str(err)) from None
    if len(results) > 1:
        print("tasks switched by writing the TASK register only; the frame image and the image stayed in DRAM")
    if args.out:
        arrays = {"tasks": np.array(args.task), "cycles": np.array([f.cycles for f in results]),
                  "stalls": np.array([f.stalls for f in results])}
        for f in results:
            arrays[f"features_task{f.task}"] = f.raw
            arrays[f"values_task{f.task}"] = f.values
            if f.routing is not None:
                arrays[f"routing_task{f.task}"] = f.routing
        if bundle.routing is not None:
            arrays["moe_layers"] = np.array(bundle.routing["moe_layers"], dtype=np.int64)
        out = Path(args.out)
        # Write beside and rename, so that an interrupted write leaves no half file under the name.
        partial = out.with_name(out.name + ".partial")
        try:
            with open(partial, "wb") as file:
                np.savez(file, **arrays)
            partial.replace(out)
        except OSError as err:
            partial.unlink(missing_ok=True)
            raise UserError(f"cannot write {out}: {err.strerror}") from None
        print(f"wrote {out}")
    if args.routing_map:
        from cli.routing_map import draw_routing_map

        draw_routing_map(args.routing_map, pixels, results, bundle, map_layer)
        print(f"wrote {args.routing_map} (layer {map_layer})")
    return 0


def register(sub):
    """Add ``bundle`` and ``run`` to the ``m3vit`` parser."""
    from cli.model import add_model_options

    p = sub.add_parser("bundle", help="compile a model into a bundle (frame image, manifest, bitstream) to run")
    add_model_options(p)
    p.add_argument("--out", metavar="DIR", required=True, help="bundle folder to write")
    p.add_argument("--artifact", metavar="FILE", help="quantised artifact from m3vit quantize (default: quantise now)")
    p.add_argument("--bitstream", metavar="FILE", help="top.bit from m3vit build (its top.hwh beside it comes too)")
    p.add_argument("--array", type=array_shape, metavar="RxC",
                   help="compile for the smallest build with this MAC array (one weight port) that holds the model, "
                        "instead of the board's (e.g. 16x16, what run --simulate --sim-lanes 16 simulates)")
    p.set_defaults(handler=_bundle)

    p = sub.add_parser("run", help="run a bundle on the board (PYNQ) or the simulated accelerator")
    p.add_argument("--bundle", metavar="DIR", required=True, help="bundle folder from m3vit bundle")
    p.add_argument("--image", metavar="FILE", required=True,
                   help="image [C,H,W]: .npy of floats in [0, 1] or int8 pixels, or raw float32 .bin")
    p.add_argument("--task", type=int, nargs="+", required=True, metavar="N",
                   help="task(s), run back to back on one load")
    p.add_argument("--simulate", action="store_true", help="run on the simulated accelerator instead of the board")
    p.add_argument("--engine", choices=ENGINES, help="with --simulate: the simulator (default pysim for small "
                                                     "models such as tiny, else verilator)")
    p.add_argument("--sim-lanes", type=int, choices=MAC_LANES,
                   help="with --simulate: simulate the smallest build with this many lanes that holds the model, "
                        "instead of the bundle's own build")
    p.add_argument("--sim-bus-error", metavar="REGION|LO:HI",
                   help="with --simulate: the DRAM answers SLVERR to bursts touching a region of the bundle's "
                        "layout (weights, image, output) or byte offsets [LO, HI), to see the accelerator's "
                        "error report")
    p.add_argument("--watchdog", type=int, default=0, metavar="CYCLES",
                   help="stop a frame that runs more than CYCLES cycles with a watchdog error (default 0: off)")
    p.add_argument("--timeout", type=float, default=1.0,
                   help="seconds of accelerator time a frame may take (default 1; simulated time at 300 MHz "
                        "with --simulate)")
    p.add_argument("--out", metavar="FILE.npz", help="write features (int16 and float32), cycles, stalls and "
                                                     "the expert routing (routing_task<N>: [MoE layers, tokens, "
                                                     "top-k] expert ids, first choice first; moe_layers)")
    p.add_argument("--routing-map", metavar="FILE.png",
                   help="draw the image with each patch coloured by its first-choice expert, one panel per "
                        "task, and the tokens per expert of every MoE layer (needs matplotlib)")
    p.add_argument("--routing-layer", type=int, metavar="L",
                   help="with --routing-map: the MoE layer to draw (a layer number, default the first MoE layer)")
    p.set_defaults(handler=_run)
