"""Open-source synthesis report: cell counting, logic depth, one real Yosys run, CLI errors."""

import json
from pathlib import Path

import pytest
from amaranth import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from boards.synth import SynthError, count_cells, deep_paths, deepest_path, logic_depth, synthesize
from tests.cli_helpers import run_m3vit

_ROOT = Path(__file__).resolve().parents[1]


def _cell(kind, inputs, outputs):
    ports = {**{f"I{i}": "input" for i in range(len(inputs))}, **{f"O{i}": "output" for i in range(len(outputs))}}
    conns = {**{f"I{i}": [b] for i, b in enumerate(inputs)}, **{f"O{i}": [b] for i, b in enumerate(outputs)}}
    return {"type": kind, "port_directions": ports, "connections": conns}


def test_logic_depth_counts_luts_between_registers():
    cells = {
        "ff_a": _cell("FDRE", [1], [2]),
        "lut1": _cell("LUT2", [2, 3], [4]),
        "inv": _cell("INV", [4], [5]),                       # counts zero
        "lut2": _cell("LUT6", [5, 2], [6]),
        "carry": _cell("CARRY4", [6], [7]),
        "ff_b": _cell("FDRE", [7], [8]),
        "lut3": _cell("LUT3", [8], [9]),                     # a separate, shorter path
        "dsp": _cell("DSP48E2", [9], [10]),
        "lut4": _cell("LUT1", [10], [11]),
    }
    assert logic_depth(cells) == 3
    assert logic_depth({}) == 0


def test_logic_depth_chains_as_one():
    """A carry entered through CI from the carry before it adds a level only in the plain count."""
    def carry(ci, s, co):
        return {"type": "CARRY4", "port_directions": {"CI": "input", "S": "input", "CO": "output"},
                "connections": {"CI": [ci], "S": [s], "CO": [co]}}
    cells = {
        "ff_a": _cell("FDRE", [1], [2]),
        "lut_a": _cell("LUT2", [2], [3]),
        "c0": carry("0", 3, 4),
        "c1": carry(4, 2, 5),
        "c2": carry(5, 2, 6),
        "lut_b": _cell("LUT3", [6], [7]),
        "c3": carry("0", 7, 8),                              # a second chain, entered through S
        "c4": carry(8, 2, 9),
        "ff_b": _cell("FDRE", [9], [10]),
    }
    assert logic_depth(cells) == 7
    assert logic_depth(cells, chains_as_one=True) == 4


def _ff(d, q, **attributes):
    return {"type": "FDRE", "port_directions": {"C": "input", "D": "input", "Q": "output"},
            "connections": {"C": [99], "D": [d], "Q": [q]}, "attributes": attributes}


def _carry(ci, s, co, o):
    return {"type": "CARRY4", "port_directions": {"CI": "input", "S": "input", "CO": "output", "O": "output"},
            "connections": {"CI": [ci], "S": [s], "CO": [co], "O": [o]}}


def _two_paths():
    """Path A: five chained carries (5 levels plain, 1 as one chain); path B: LUT, a two-carry
    chain, LUT (4 plain, 3 as one). Each count's deepest is a different path."""
    return {
        # Merged and mapped: Amaranth's own line, the project's, Yosys' techmap library's.
        "ff_a": _ff(1, 2, src=f"/usr/lib/python3.11/contextlib.py:144|{_ROOT}/gateware/foo.py:12"
                              "|/share/xilinx/ff_map.v:68.41-68.95"),
        "c0": _carry("0", 2, 40, 41),
        "c1": _carry(40, 3, 42, 43),
        "c2": _carry(42, 3, 44, 45),
        "c3": _carry(44, 3, 46, 47),
        "c4": _carry(46, 3, 48, 49),                         # CO 48 unused: not where A ends
        "ff_b": _ff(49, 32),
        "ff_c": _ff(19, 20),
        "lut_a": _cell("LUT6", [20], [21]),
        "cb0": _carry("0", 21, 22, 23),
        "cb1": _carry(22, "1", 24, 25),
        "lut_b": _cell("LUT2", [25, 20], [26]),
        "ff_d": _ff(26, 27),
        "obuf": {"type": "OBUF", "port_directions": {"I": "input", "O": "output"},
                 "connections": {"I": [27], "O": [28]}},
    }


def _net(bits, hide=0):
    return {"hide_name": hide, "bits": bits, "attributes": {}}


def test_deepest_path_names_both_counts_paths():
    """The plain and the chains-as-one count each name their own path: its ends in the design's
    signal names (a wide net's bit indexed, Yosys' names passed over) and its cells in order."""
    cells = _two_paths()
    netnames = {
        "$auto$ff.cc:337:slice$7": _net([2], hide=1),       # Yosys' alias of seq.count[0]
        "seq.count": _net([2, 3]),
        "$abc$1$aiger$o49": _net([49], hide=1),             # only Yosys names A's last net:
        "seq.acc": _net([30, 31, 32, 33]),                  # name the register it loads
        "seq.r.tb": _net([20]),
        "seq.r.next": _net([26]),
    }
    plain = deepest_path(cells, netnames)
    assert plain == {"levels": 5, "from": "seq.count[0]", "to": "seq.acc[2] (FDRE.D)",
                     "cells": ["CARRY4"] * 5}
    chained = deepest_path(cells, netnames, chains_as_one=True)
    assert chained == {"levels": 3, "from": "seq.r.tb", "to": "seq.r.next",
                       "cells": ["LUT6", "CARRY4x2", "LUT2"]}
    for chains_as_one in (False, True):
        assert deepest_path(cells, netnames, chains_as_one=chains_as_one)["levels"] == \
            logic_depth(cells, chains_as_one=chains_as_one)
    assert deepest_path({}) == {"levels": 0, "from": None, "to": None, "cells": []}


def test_deepest_path_falls_back_to_ports_sources_and_bits():
    """Without the design's names, a path end reads as the port a register drives, the line the
    register came from (the project's, not Python's or Yosys' techmap file), an Amaranth
    ``$signal`` name of the register loaded (over Yosys' name of the net itself), or a bit number."""
    cells = _two_paths()
    netnames = {"tb_out": _net([28]), "$abc$1$aiger$o49": _net([49], hide=1), "\\$signal": _net([32])}
    plain = deepest_path(cells, netnames)
    assert (plain["from"], plain["to"]) == ("FDRE.Q at gateware/foo.py:12", "$signal (FDRE.D)")
    chained = deepest_path(cells, netnames, chains_as_one=True)
    assert (chained["from"], chained["to"]) == ("bit 20", "tb_out (FDRE.D)")
    assert deepest_path(cells)["to"] == "bit 49"


def test_count_cells():
    figures = count_cells({"LUT6": 3, "LUT2": 2, "FDRE": 5, "FDCE": 1, "DSP48E2": 4, "RAMB36E2": 1,
                           "RAMB18E2": 3, "URAM288": 2, "RAM64M": 1, "SRLC32E": 2, "CARRY4": 9})
    # RAM64M is 4 LUTs, SRLC32E one each: 5 + 4 + 2.
    assert figures == {"lut": 5, "lutram": 3, "ff": 6, "dsp": 4, "uram": 2, "bram": 2.5, "lut_total": 11}
    with pytest.raises(SynthError, match="RAM32M99"):
        count_cells({"RAM32M99": 1})


class _MultiplyAccumulate(wiring.Component):
    a: In(signed(10))
    b: In(signed(8))
    acc: Out(signed(32))

    def elaborate(self, platform):
        m = Module()
        a, b = Signal(signed(10)), Signal(signed(8))
        m.d.sync += [a.eq(self.a), b.eq(self.b), self.acc.eq(self.acc + a * b)]
        return m


def test_multiply_accumulate_maps_to_one_dsp():
    r = synthesize(_MultiplyAccumulate(), "mac1")
    assert r["unit"] == "mac1" and r["dsp"] == 1
    # Yosys packs no registers into DSP48E2 for xcup, so the 32-bit accumulate stays in fabric.
    assert r["lut"] <= 40 and r["bram"] == 0 and r["uram"] == 0
    assert 0 < r["percent"]["dsp"] < 0.1


def test_cli_unknown_unit_and_unwritable_json(tmp_path):
    r = run_m3vit("synth", "--unit", "fpu")
    assert r.returncode == 2 and "unknown unit 'fpu'" in r.stderr and "Traceback" not in r.stderr
    r = run_m3vit("synth", "--unit", "topk", "--json", str(tmp_path / "no" / "dir" / "t.json"))
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr


def test_cli_synth_keep(tmp_path):
    """``--keep DIR`` leaves Yosys' folder with the mapped netlist; a file or a missing parent is refused."""
    r = run_m3vit("synth", "--unit", "routing", "--keep", str(tmp_path / "yosys"))
    assert r.returncode == 0, r.stderr
    kept = tmp_path / "yosys" / "routing"
    assert {"design.il", "synth.ys", "yosys.log", "netlist.json"} <= {f.name for f in kept.iterdir()}
    assert "top" in json.loads((kept / "netlist.json").read_text())["modules"]
    (tmp_path / "file").write_text("")
    for bad, why in ((tmp_path / "file", "not a folder"), (tmp_path / "no" / "dir", "its parent")):
        r = run_m3vit("synth", "--unit", "routing", "--keep", str(bad))
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_cli_synth_top_json(tmp_path):
    """The board's PL top, sized for the tiny model (8 x 8 array), through ``m3vit synth --top``.

    About 6 minutes of single-threaded yosys (327 s measured, README), slow even at the smallest
    build; the board build takes about 12 minutes and is run by hand (README).
    """
    out = tmp_path / "top.json"
    r = run_m3vit("synth", "--top", "accelerator", "--config", "tiny", "--json", str(out), timeout=1800)
    assert r.returncode == 0, r.stderr
    assert "lanes=8" in r.stdout
    figures = json.loads(out.read_text())
    assert {"unit", "dsp", "lut", "ff", "bram", "uram", "lut_levels", "lut_levels_chains_as_one",
            "percent"} <= set(figures)
    assert figures["unit"] == "accelerator" and figures["lut"] > 0 and figures["lut_levels"] > 0
    # The 8 x 8 MAC array alone maps to 64 DSP48E2; the vector units add theirs.
    assert figures["dsp"] > 64 and figures["bram"] > 0


def test_synth_top_config_picks_the_build(capsys):
    """``--config`` maps to the build the board uses (edge-moe, the default) or the smallest one that
    holds the model, and the build synthesised is printed; checked without running yosys."""
    from argparse import Namespace

    from cli.boards import synth_targets
    from gateware.program import Capacity
    from model.config import get_config

    tiny = Capacity.for_config(get_config("tiny"), 8)
    for config, cap in [(None, Capacity.board()), ("edge-moe", Capacity.board()), ("tiny", tiny)]:
        [(name, factory)] = synth_targets(Namespace(top="accelerator", config=config, unit=None))
        shell = factory()
        # Built to be inspected, not elaborated: say so, or Amaranth warns at garbage collection.
        shell._MustUse__silence = shell.core._MustUse__silence = True
        assert name == "accelerator" and shell.core.cap == cap
        out = capsys.readouterr().out
        ports = f"{cap.ports} AXI port{'s' * (cap.ports > 1)}"
        assert f"top accelerator: gateware.top.Accelerator ({cap.shape}, {ports}, {cap})" in out


def test_cli_synth_config_errors():
    r = run_m3vit("synth", "--top", "accelerator", "--config", "huge")
    assert r.returncode == 2 and "unknown config 'huge'" in r.stderr and "Traceback" not in r.stderr
    r = run_m3vit("synth", "--unit", "topk", "--config", "tiny")
    assert r.returncode == 2 and "--config sizes the accelerator top" in r.stderr


@pytest.mark.slow
def test_full_size_mac_array_maps_to_dsps():
    """The 16 x 16 MAC array at its default size (about a minute): one DSP48E2 per PE."""
    from gateware.catalog import build_unit

    r = synthesize(build_unit("mac_array"), "mac_array")
    assert r["dsp"] == 16 * 16 and r["bram"] == 0
    assert r["lut_levels"] <= 12 and r["lut_levels_chains_as_one"] <= r["lut_levels"]


def test_deep_paths_lists_each_end_over_the_limit():
    """Every path end deeper than the limit is listed once per source line, deepest first; the
    carry feeding its chain's next carry is not an end, and a limit above the deepest gives none."""
    cells = _two_paths()
    netnames = {"seq.count": _net([2, 3]), "seq.r.tb": _net([20]), "seq.r.next": _net([26])}
    over = deep_paths(cells, netnames, limit=2)
    assert over == [{"levels": 3, "from": "seq.r.tb", "to": "seq.r.next",
                     "cells": ["LUT6", "CARRY4x2", "LUT2"], "where": None}]
    plain = deep_paths(cells, netnames, limit=3, chains_as_one=False)
    assert [(p["levels"], p["from"], p["where"]) for p in plain] == [(5, "seq.count[0]", None), (4, "seq.r.tb", None)]
    assert deep_paths(cells, netnames, limit=5, chains_as_one=False) == []


class _Steps(wiring.Component):
    """A six-state machine stepping on ``go``, each state driving its own output bit."""

    def __init__(self):
        super().__init__({"go": In(1), "state": Out(6)})

    def elaborate(self, platform):
        m = Module()
        with m.FSM():
            for k in range(6):
                with m.State(f"S{k}"):
                    m.d.comb += self.state[k].eq(1)
                    with m.If(self.go):
                        m.next = f"S{(k + 1) % 6}"
        return m


def test_state_machines_are_one_hot():
    """Yosys extracts an Amaranth FSM although its state register has an initial value, and codes
    it one-hot as Vivado does by default: six state flip-flops, not three, and each output a
    state's own bit (no decode)."""
    r = synthesize(_Steps(), "steps")
    assert r["ff"] == 6
    assert r["lut_levels"] <= 1
