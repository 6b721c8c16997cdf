"""Write the ZCU104 Vivado project tree for a design and, where Vivado is installed, build the bitstream."""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["BoardError", "VIVADO_ABSENT", "DESIGNS", "build", "build_bringup", "find_core", "main"]

#: Exit status when the tree was written but Vivado, though wanted, is not on ``PATH``.
VIVADO_ABSENT = 3


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
        The build's sizes; by default the board build's (``Capacity()``: edge-moe on 16 x 16).

    Returns
    -------
    core : gateware.top.Accelerator
        The constructed core.
    what : str
        ``gateware.top.Accelerator (LxL, Capacity(...))``: the sizes the core was built with.
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
    return core, what if sizes is None else f"{what} ({sizes.lanes}x{sizes.lanes}, {sizes})"


#: The designs ``build`` knows, with a line of help each.
DESIGNS = {
    "accelerator": "the accelerator beside the Zynq PS: registers on M_AXI_HPM0_FPD, DRAM master on "
                   "S_AXI_HP0_FPD",
    "bringup": "LEDs count on clk125, flipped by the buttons and DIP switches; no PS",
}


def _plan(design, platform):
    """Amaranth build plan for ``design``, and what the tree holds, in words."""
    from .zcu104 import Bringup

    if design == "bringup":
        return platform.build(Bringup(), name="top", do_build=False), "bring-up design"

    from amaranth.back import verilog

    from .zynq import AFTER_BITSTREAM_TCL, AcceleratorTop, PLShell, block_design_tcl, pl_wrapper_verilog

    core, what = find_core()
    shell = PLShell(core)
    platform.add_file("m3vit_shell.v", verilog.convert(shell, name="m3vit_shell"))
    platform.add_file("m3vit_pl.v", pl_wrapper_verilog(shell))
    platform.add_file("m3vit_bd.tcl", block_design_tcl(shell))
    plan = platform.build(AcceleratorTop(), name="top", do_build=False,
                          script_after_read="source m3vit_bd.tcl",
                          script_after_bitstream=AFTER_BITSTREAM_TCL)
    return plan, what


def build(design, out_dir, run_vivado=None):
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

    Returns
    -------
    int
        Exit status: 0 when the bitstream was built or Vivado was not wanted, ``VIVADO_ABSENT`` when
        Vivado was wanted but not found (the tree is written all the same), Vivado's own status when
        its build failed.

    Raises
    ------
    BoardError
        Unknown design, or the output folder cannot be created or written.
    """
    from .zcu104 import ZCU104Platform

    if design not in DESIGNS:
        raise BoardError(f"unknown design {design!r}; choose one of {', '.join(DESIGNS)}")
    out = _prepare(out_dir)
    plan, what = _plan(design, ZCU104Platform())
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
    if result.returncode != 0:
        print(f"Vivado build failed (status {result.returncode}); see the logs in {out}", file=sys.stderr)
        return result.returncode
    print(f"bitstream: {out / 'top.bit'}")
    return 0


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
    args = parser.parse_args(argv)
    try:
        return build(args.design, args.out, run_vivado=False if args.no_vivado else None)
    except BoardError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
