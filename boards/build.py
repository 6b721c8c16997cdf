"""Write the ZCU104 Vivado project tree for a design and, where Vivado is installed, build the bitstream."""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["BoardError", "VIVADO_ABSENT", "TIMING_MISSED", "PL_MHZ", "DESIGNS", "build", "build_bringup",
           "find_core", "main"]

#: Exit status when the tree was written but Vivado, though wanted, is not on ``PATH``.
VIVADO_ABSENT = 3
#: Exit status of ``build_top.sh`` (and of the build) when the routed design misses timing.
TIMING_MISSED = 4
#: The accelerator's clock (the PS's ``pl_clk0``) by default: the design's target.
PL_MHZ = 300.0


def _timing_advice(design, pl_mhz):
    """What to do when ``design`` misses timing, after "see top_timing.rpt"."""
    return "" if design == "bringup" else f" and rebuild with a lower --pl-mhz (this build: {pl_mhz:g} MHz)"


def _timing_check_tcl(design, pl_mhz):
    """Tcl run before ``write_bitstream``: exit ``TIMING_MISSED`` if setup or hold slack is negative.

    A bitstream that misses timing fails on the board in ways no simulation shows, so none is
    written; the routed checkpoint and ``top_timing.rpt`` stay for inspection.
    """
    advice = f"See top_timing.rpt{_timing_advice(design, pl_mhz)}."
    return f"""\
set m3vit_setup [get_property SLACK [get_timing_paths -delay_type max -max_paths 1]]
set m3vit_hold [get_property SLACK [get_timing_paths -delay_type min -max_paths 1]]
foreach m3vit_slack [list $m3vit_setup $m3vit_hold] {{
    if {{[string is double -strict $m3vit_slack] && $m3vit_slack < 0}} {{
        puts "m3vit: timing not met (worst setup slack $m3vit_setup ns, hold $m3vit_hold ns): no bitstream written. {advice}"
        exit {TIMING_MISSED}
    }}
}}
"""


class BoardError(Exception):
    """The output folder cannot be used, or a build step failed in a way the user must fix."""


def _prepare(out_dir):
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise BoardError(f"cannot use {out_dir} as output folder: a file of that name exists") from None
    except OSError as err:
        raise BoardError(f"cannot create output folder {out_dir}: {err.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise BoardError(f"cannot write to output folder {out_dir}")
    return out


def find_core(cap=None):
    """The accelerator core to build, and a line saying what it is.

    Parameters
    ----------
    cap : gateware.program.Capacity, optional
        The build's sizes; by default the board build's (``Capacity.board()``: edge-moe on 16 x 64,
        four weight ports).

    Returns
    -------
    core : gateware.top.Accelerator
        The constructed core.
    what : str
        ``gateware.top.Accelerator (RxC, P AXI ports, Capacity(...))``: the sizes the core was built with.
    """
    from gateware.top import Accelerator

    from .zynq import check_core

    try:
        # The board build takes the accelerator at its default size, so it must construct bare.
        core = Accelerator() if cap is None else Accelerator(cap)
        check_core(core)
    except TypeError as err:
        raise BoardError(f"gateware.top.Accelerator cannot go on the board: {err}") from None
    # Name the sizes the core was elaborated with (its own ``cap``, so the default build says
    # what it is too); stand-in cores, as in the board tests, carry none.
    sizes = getattr(core, "cap", cap)
    what = "gateware.top.Accelerator"
    if sizes is None:
        return core, what
    ports = getattr(sizes, "ports", 1)
    return core, f"{what} ({sizes.shape}, {ports} AXI port{'s' * (ports > 1)}, {sizes})"


#: The designs ``build`` knows, with a line of help each.
DESIGNS = {
    "accelerator": "the accelerator beside the Zynq PS: registers on M_AXI_HPM0_FPD, DRAM masters on "
                   "S_AXI_HP0_FPD (and HP1..HP3_FPD for more weight ports)",
    "bringup": "LEDs count on clk125, flipped by the buttons and DIP switches; no PS",
}


def _plan(design, platform, pl_mhz):
    """Amaranth build plan for ``design``, and what the tree holds, in words."""
    from .zcu104 import Bringup

    if design == "bringup":
        return platform.build(Bringup(), name="top", do_build=False,
                              script_before_bitstream=_timing_check_tcl(design, pl_mhz)), "bring-up design"

    from amaranth.back import verilog

    from .zynq import AFTER_BITSTREAM_TCL, AcceleratorTop, PLShell, block_design_tcl, pl_wrapper_verilog

    core, what = find_core()
    shell = PLShell(core)
    platform.add_file("m3vit_shell.v", verilog.convert(shell, name="m3vit_shell"))
    platform.add_file("m3vit_pl.v", pl_wrapper_verilog(shell))
    platform.add_file("m3vit_bd.tcl", block_design_tcl(shell, pl_mhz=pl_mhz))
    plan = platform.build(AcceleratorTop(), name="top", do_build=False,
                          script_after_read="source m3vit_bd.tcl",
                          script_before_bitstream=_timing_check_tcl(design, pl_mhz),
                          script_after_bitstream=AFTER_BITSTREAM_TCL)
    return plan, f"{what}, clocked at {pl_mhz:g} MHz"


def build(design, out_dir, run_vivado=None, pl_mhz=PL_MHZ):
    """Write ``design``'s Vivado tree into ``out_dir``; run Vivado on it when possible.

    Parameters
    ----------
    design : str
        A key of ``DESIGNS``.
    out_dir : str or Path
        Folder for ``top.v``, ``top.xdc``, ``top.tcl``, ``build_top.sh`` and, for the accelerator,
        ``m3vit_shell.v``, ``m3vit_pl.v`` and ``m3vit_bd.tcl``; created if missing.
    run_vivado : bool or None
        ``None``: run Vivado if it is on ``PATH``, else say so. ``False``: only write the tree.
        ``True``: as ``None``; kept so callers can state the intent.
    pl_mhz : float
        The accelerator's clock, ``pl_clk0`` of the PS, in MHz: above 0, at most the 300 MHz target.
        The bring-up design runs from the board's 125 MHz oscillator and takes only the default.

    Returns
    -------
    int
        Exit status: 0 when the bitstream was built or Vivado was not wanted, ``VIVADO_ABSENT`` when
        Vivado was wanted but not found (the tree is written all the same), ``TIMING_MISSED`` when
        the routed design misses timing (no bitstream), Vivado's own status when its build failed.

    Raises
    ------
    BoardError
        Unknown design, a clock out of range, or the output folder cannot be created or written.
    """
    from .zcu104 import ZCU104Platform

    if design not in DESIGNS:
        raise BoardError(f"unknown design {design!r}; choose one of {', '.join(DESIGNS)}")
    if not 0 < pl_mhz <= PL_MHZ:
        raise BoardError(f"--pl-mhz {pl_mhz:g} is out of range: the accelerator's clock is above 0 and at "
                         f"most its {PL_MHZ:g} MHz target")
    if design == "bringup" and pl_mhz != PL_MHZ:
        raise BoardError("--pl-mhz sets the accelerator's PS clock; the bring-up design runs from the "
                         "board's 125 MHz oscillator")
    out = _prepare(out_dir)
    plan, what = _plan(design, ZCU104Platform(), pl_mhz)
    try:
        # With do_build=False Amaranth only returns the plan; extract() is what writes the files.
        plan.extract(str(out))
    except OSError as err:
        raise BoardError(f"cannot write the Vivado tree into {out_dir}: {err.strerror}") from None
    print(f"wrote the Vivado tree for xczu7ev-ffvc1156-2-e in {out}: {what}")

    products = "top.bit" if design == "bringup" else "top.bit, top.xsa and top.hwh"
    vivado = shutil.which("vivado")
    if run_vivado is False or vivado is None:
        reason = "not run (--no-vivado)" if run_vivado is False else "not found on PATH"
        print(f"Vivado {reason}: the bitstream was not built. To finish elsewhere, copy {out} to a "
              f"machine with Vivado on PATH and run `sh build_top.sh` inside it; it writes {products}.")
        return 0 if run_vivado is False else VIVADO_ABSENT

    print(f"running Vivado ({vivado}) via build_top.sh; this takes minutes", flush=True)
    result = subprocess.run(["sh", "build_top.sh"], cwd=out)
    if result.returncode == TIMING_MISSED:
        print(f"Vivado: the routed design misses timing, so no bitstream was written; see "
              f"{out / 'top_timing.rpt'}{_timing_advice(design, pl_mhz)}", file=sys.stderr)
        return TIMING_MISSED
    if result.returncode != 0:
        print(f"Vivado build failed (status {result.returncode}); see the logs in {out}", file=sys.stderr)
        return result.returncode
    print(f"bitstream: {out / 'top.bit'}")
    return 0


#: ``--pl-mhz``'s help, shared by ``m3vit build`` and ``python -m boards.zcu104``.
PL_MHZ_HELP = (f"the accelerator's clock (PS pl_clk0) in MHz, default {PL_MHZ:g}; lower it if the routed "
               f"design misses timing (the build then stops with status {TIMING_MISSED})")


def build_bringup(out_dir, run_vivado=None):
    """``build("bringup", out_dir, run_vivado)``."""
    return build("bringup", out_dir, run_vivado)


def main(argv=None):
    """``python -m boards.zcu104 [--design NAME] --out DIR [--no-vivado]``; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m boards.zcu104",
                                     description="Build a ZCU104 design: its Vivado tree, then the bitstream.")
    parser.add_argument("--design", default="accelerator", choices=list(DESIGNS),
                        help="; ".join(f"{k}: {v}" for k, v in DESIGNS.items()))
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for the Vivado tree")
    parser.add_argument("--no-vivado", action="store_true", help="only write the tree; do not run Vivado")
    parser.add_argument("--pl-mhz", type=float, default=PL_MHZ, metavar="MHZ", help=PL_MHZ_HELP)
    args = parser.parse_args(argv)
    try:
        return build(args.design, args.out, run_vivado=False if args.no_vivado else None, pl_mhz=args.pl_mhz)
    except BoardError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
