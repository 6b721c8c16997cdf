"""Open-source synthesis report: cell counting, logic depth, one real Yosys run, CLI errors."""

import json

import pytest
from amaranth import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from boards.synth import count_cells, logic_depth, synthesize
from tests.cli_helpers import run_m3vit


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


def test_count_cells():
    figures = count_cells({"LUT6": 3, "LUT2": 2, "FDRE": 5, "FDCE": 1, "DSP48E2": 4, "RAMB36E2": 1,
                           "RAMB18E2": 3, "URAM288": 2, "RAM64M": 1, "SRLC32E": 2, "CARRY4": 9})
    assert figures == {"lut": 5, "lutram": 3, "ff": 6, "dsp": 4, "uram": 2, "bram": 2.5}


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
    for config, cap in [(None, Capacity()), ("edge-moe", Capacity()), ("tiny", tiny)]:
        [(name, factory)] = synth_targets(Namespace(top="accelerator", config=config, unit=None))
        shell = factory()
        # Built to be inspected, not elaborated: say so, or Amaranth warns at garbage collection.
        shell._MustUse__silence = shell.core._MustUse__silence = True
        assert name == "accelerator" and shell.core.cap == cap
        out = capsys.readouterr().out
        assert f"top accelerator: gateware.top.Accelerator ({cap.lanes}x{cap.lanes}, {cap})" in out


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
