"""Write the ZCU104 Vivado project tree for a design and, where Vivado is installed, build the bitstream."""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["BoardError", "VIVADO_ABSENT", "build_bringup", "main"]

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


def build_bringup(out_dir, run_vivado=None):
    """Write the bring-up design's Vivado tree into ``out_dir``; run Vivado on it when possible.

    Parameters
    ----------
    out_dir : str or Path
        Folder for ``top.v``, ``top.xdc``, ``top.tcl`` and ``build_top.sh``; created if missing.
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
        The output folder cannot be created or written.
    """
    from .zcu104 import Bringup, ZCU104Platform

    out = _prepare(out_dir)
    try:
        # With do_build=False Amaranth only returns the plan; extract() is what writes the files.
        plan = ZCU104Platform().build(Bringup(), name="top", build_dir=str(out), do_build=False)
        plan.extract(str(out))
    except OSError as err:
        raise BoardError(f"cannot write the Vivado tree into {out_dir}: {err.strerror}") from None
    print(f"wrote the Vivado tree for xczu7ev-ffvc1156-2-e in {out}")

    vivado = shutil.which("vivado")
    if run_vivado is False or vivado is None:
        reason = "not run (--no-vivado)" if run_vivado is False else "not found on PATH"
        print(f"Vivado {reason}: the bitstream was not built. To finish elsewhere, copy {out} to a "
              f"machine with Vivado on PATH and run `sh build_top.sh` inside it; it writes top.bit.")
        return 0 if run_vivado is False else VIVADO_ABSENT

    print(f"running Vivado ({vivado}) via build_top.sh; this takes minutes", flush=True)
    result = subprocess.run(["sh", "build_top.sh"], cwd=out)
    if result.returncode != 0:
        print(f"Vivado build failed (status {result.returncode}); see the logs in {out}", file=sys.stderr)
        return result.returncode
    print(f"bitstream: {out / 'top.bit'}")
    return 0


def main(argv=None):
    """``python -m boards.zcu104 --out DIR [--no-vivado]``; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m boards.zcu104",
                                     description="Build the ZCU104 bring-up design (Vivado tree, then bitstream).")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for the Vivado tree")
    parser.add_argument("--no-vivado", action="store_true", help="only write the tree; do not run Vivado")
    args = parser.parse_args(argv)
    try:
        return build_bringup(args.out, run_vivado=False if args.no_vivado else None)
    except BoardError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
