"""ZCU104 board: the generated Vivado tree (part, pins, I/O standards, clock) and ``m3vit build``; no Vivado."""

import re
import shutil
import subprocess
import sys

import pytest

from boards.build import build_bringup
from tests.cli_helpers import run_m3vit

PINS = {  # port name in the XDC: (package pin, IOSTANDARD)
    "clk125_0__p": ("F23", "LVDS"), "clk125_0__n": ("E23", "LVDS"),
    **{f"led_{i}__io": (p, "LVCMOS33") for i, p in enumerate("D5 D6 A5 B5".split())},
    **{f"button_{i}__io": (p, "LVCMOS33") for i, p in enumerate("B4 C4 B3 C3".split())},
    **{f"switch_{i}__io": (p, "LVCMOS33") for i, p in enumerate("E4 D4 F5 F4".split())},
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("zcu104")
    assert build_bringup(out, run_vivado=False) == 0
    return out


def _xdc(tree):
    text = (tree / "top.xdc").read_text()
    loc = {port: pin for pin, port in re.findall(r'set_property LOC (\S+) \[get_ports "([^"]+)"\]', text)}
    std = {port: s for s, port in re.findall(r'set_property IOSTANDARD "([^"]+)" \[get_ports "([^"]+)"\]', text)}
    return text, loc, std


def test_part_string(tree):
    assert "-part xczu7ev-ffvc1156-2-e" in (tree / "top.tcl").read_text()


def test_every_pin_and_iostandard(tree):
    _, loc, std = _xdc(tree)
    assert {port: (loc.get(port), std.get(port)) for port in PINS} == PINS


def test_clock_constraint_125mhz(tree):
    text, _, _ = _xdc(tree)
    assert re.search(r"create_clock .*-period 8\.0\b.*clk125_0__p", text)


def test_top_ports_match_xdc(tree):
    _, loc, std = _xdc(tree)
    header = re.search(r"^module top\(([^)]*)\);", (tree / "top.v").read_text(), re.M)
    ports = {p.strip() for p in header.group(1).split(",")}
    assert ports == set(loc) == set(std) == set(PINS)


def test_build_script_parses(tree):
    r = subprocess.run(["bash", "-n", str(tree / "build_top.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def m3vit(capsys, *args):
    """Run ``m3vit`` in this process (its parser imports for seconds); return (status, stdout, stderr)."""
    import cli

    try:
        status = cli.main(list(args))
    except SystemExit as exit:
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_no_vivado(tmp_path, capsys):
    status, out, err = m3vit(capsys, "build", "--board", "zcu104", "--design", "bringup",
                             "--out", str(tmp_path / "t"), "--no-vivado")
    assert status == 0, err
    assert "Vivado" in out and "build_top.sh" in out
    assert (tmp_path / "t" / "top.xdc").is_file()


@pytest.mark.skipif(shutil.which("vivado") is not None, reason="Vivado is on PATH; this checks its absence")
def test_cli_vivado_absent(tmp_path, capsys):
    status, out, _ = m3vit(capsys, "build", "--board", "zcu104", "--design", "bringup", "--out", str(tmp_path / "t"))
    assert status == 3
    assert "Vivado not found" in out
    assert (tmp_path / "t" / "build_top.sh").is_file()


@pytest.mark.parametrize("under", ["file", "file/sub"])
def test_cli_bad_out(tmp_path, capsys, under):
    (tmp_path / "file").write_text("")
    status, _, err = m3vit(capsys, "build", "--board", "zcu104", "--design", "bringup",
                           "--out", str(tmp_path / under), "--no-vivado")
    assert status == 2
    assert err.startswith("m3vit build: error: cannot") and err.count("\n") == 1


def test_cli_bad_out_no_traceback(tmp_path):
    (tmp_path / "file").write_text("")
    r = run_m3vit("build", "--board", "zcu104", "--design", "bringup", "--out", str(tmp_path / "file" / "x"),
                  timeout=120)
    assert r.returncode == 2 and "error: cannot" in r.stderr and "Traceback" not in r.stdout + r.stderr


def test_module_entry_bad_out(tmp_path):
    (tmp_path / "file").write_text("")
    r = subprocess.run([sys.executable, "-m", "boards.zcu104", "--out", str(tmp_path / "file" / "x")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "error: cannot" in r.stderr and "Traceback" not in r.stderr


def test_cli_unknown_board(tmp_path, capsys):
    status, _, err = m3vit(capsys, "build", "--board", "zcu102", "--design", "bringup", "--out", str(tmp_path))
    assert status != 0
    assert "invalid choice: 'zcu102'" in err
