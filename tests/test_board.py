"""ZCU104 board: the generated Vivado trees (part, pins, I/O standards, clocks, PS8 block design, AXI
wiring, module ports), the PL shell in pysim, and ``m3vit build``; no Vivado."""

import gc
import re
import shutil
import subprocess
import sys
import types

import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from boards.build import TIMING_MISSED, BoardError, build, build_bringup
from boards.synth import _yosys
from boards.zynq import CTRL_ADDR_WIDTH, CTRL_BASE, HP_ADDR_WIDTH, PLShell
from gateware.axi import AXI4LiteSignature, AXI4Signature, Resp
from gateware.control import ID_VALUE, ControlRegisters, Reg
from sim.axil import axil_read, axil_write
from tests.sim_helpers import run_simulation

from tests.cli_helpers import run_m3vit

class ControlOnly(wiring.Component):
    """A small core for testing the shell: the control registers, the DRAM master idle.

    A start completes at once (``done`` follows ``start`` a cycle later) and the cycle counter counts
    clock cycles since reset; nothing is computed and the master never issues a request.

    Members
    -------
    axi : Out(AXI4Signature(addr_width=49, data_width=128))
        Never valid, never ready.
    ctrl : In(AXI4LiteSignature(addr_width=12))
    """

    def __init__(self):
        super().__init__({
            "axi": Out(AXI4Signature(addr_width=HP_ADDR_WIDTH, data_width=128)),
            "ctrl": In(AXI4LiteSignature(addr_width=CTRL_ADDR_WIDTH)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.regs = regs = ControlRegisters(addr_width=CTRL_ADDR_WIDTH, base_width=HP_ADDR_WIDTH)
        wiring.connect(m, wiring.flipped(self.ctrl), regs.bus)
        m.d.sync += [regs.done.eq(regs.start), regs.cycles.eq(regs.cycles + 1)]
        return m


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


# The accelerator tree: Amaranth's top + the PS8 block design (Tcl) + the module-reference wrapper.

@pytest.fixture(scope="module")
def acc_tree(tmp_path_factory):
    """``m3vit build --board zcu104 --out DIR --no-vivado``: the accelerator is the default design."""
    import cli

    out = tmp_path_factory.mktemp("zcu104_acc")
    assert cli.main(["build", "--board", "zcu104", "--out", str(out), "--no-vivado"]) == 0
    assert (out / "m3vit_bd.tcl").is_file()
    return out


def _verilog_ports(text, module):
    """Port names of ``module`` in Verilog ``text`` (ANSI or non-ANSI header)."""
    header = re.search(rf"^module {module}\s*\((.*?)\);", text, re.M | re.S).group(1)
    header = re.sub(r"\(\*.*?\*\)", "", header)
    return {p.split()[-1].lstrip("\\") for p in header.split(",") if p.strip()}


def test_acc_project_reads_sources_then_block_design(acc_tree):
    tcl = (acc_tree / "top.tcl").read_text()
    assert "-part xczu7ev-ffvc1156-2-e" in tcl
    order = [tcl.index(s) for s in ('add_files "m3vit_shell.v"', 'add_files "m3vit_pl.v"',
                                      "source m3vit_bd.tcl", "synth_design -top top", "write_bitstream",
                                      "write_hw_platform")]
    assert order == sorted(order)


def test_acc_block_design_ps8_and_clock(acc_tree):
    bd = (acc_tree / "m3vit_bd.tcl").read_text()
    assert re.search(r"create_bd_cell -type ip -vlnv \[m3vit_ipdef zynq_ultra_ps_e\] ps", bd)
    assert "apply_board_preset" in bd and "board_part" in bd
    assert "CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ {300}" in bd       # 3.333 ns PL clock
    assert "CONFIG.PSU__USE__S_AXI_GP2 {1}" in bd and "CONFIG.PSU__USE__M_AXI_GP0 {1}" in bd
    assert "CONFIG.PSU__SAXIGP2__DATA_WIDTH {128}" in bd
    assert "create_bd_cell -type module -reference m3vit_pl pl" in bd
    assert f"-offset {CTRL_BASE:#010x} -range 0x1000" in bd
    assert "make_wrapper -files $bd_file -top" in bd and "synth_checkpoint_mode None" in bd


def _nets(bd, command, getter):
    """Each ``command`` line's endpoints (``cell/pin``), continuation lines joined."""
    text = bd.replace("\\\n", " ")
    return [set(re.findall(rf"\[{getter} ([\w/]+)\]", line))
            for line in text.splitlines() if line.startswith(command + " ")]


def test_acc_block_design_axi_and_clock_wiring(acc_tree):
    bd = (acc_tree / "m3vit_bd.tcl").read_text()
    intf = _nets(bd, "connect_bd_intf_net", "get_bd_intf_pins")
    assert {"ps/M_AXI_HPM0_FPD", "ctrl_interconnect/S00_AXI"} in intf
    assert {"ctrl_interconnect/M00_AXI", "pl/s_axi_ctrl"} in intf
    assert {"pl/m_axi", "mem_interconnect/S00_AXI"} in intf
    assert {"mem_interconnect/M00_AXI", "ps/S_AXI_HP0_FPD"} in intf
    nets = _nets(bd, "connect_bd_net", "get_bd_pins")
    clock = next(n for n in nets if "ps/pl_clk0" in n)
    assert {"pl/clk", "ps/maxihpm0_fpd_aclk", "ps/saxihp0_fpd_aclk",
            "ctrl_interconnect/aclk", "mem_interconnect/aclk"} <= clock
    assert {"ps/pl_resetn0", "pl_reset/ext_reset_in"} in nets
    assert {"pl_reset/peripheral_aresetn", "pl/rst_n"} <= next(n for n in nets if "pl/rst_n" in n)


def test_acc_module_ports_match_references(acc_tree):
    """Every ``pl/...`` pin the Tcl names is a port or an interface of m3vit_pl; m3vit_pl's instance
    of m3vit_shell uses exactly the shell's ports; top's instance uses the design's only port."""
    bd = (acc_tree / "m3vit_bd.tcl").read_text()
    pl_v = (acc_tree / "m3vit_pl.v").read_text()
    shell_v = (acc_tree / "m3vit_shell.v").read_text()
    pl_ports = _verilog_ports(pl_v, "m3vit_pl")
    interfaces = set(re.findall(r'aximm:1\.0 (\w+) \w+"', pl_v))
    # The board's build streams weights over four HP ports.
    assert interfaces == {"m_axi", "m_axi1", "m_axi2", "m_axi3", "s_axi_ctrl"}
    for ref in set(re.findall(r"pl/(\w+)", bd)):
        assert ref in pl_ports or ref in interfaces, ref
    # Each interface port is named <interface>_<signal> and declared as that signal.
    declared = re.findall(r'aximm:1\.0 (\w+) (\w+)" \*\)\s*(?:\(\*.*?\*\)\s*)?\w+ wire '
                          r'(?:\[\d+:0\] )?(\w+)', pl_v)
    assert len(declared) == len(pl_ports - {"clk", "rst_n", "status"})
    for bus, signal, port in declared:
        assert port == f"{bus}_{signal.lower()}"
    shell_ports = _verilog_ports(shell_v, "m3vit_shell")
    connected = set(re.findall(r"^\s*\.(\w+)\(", pl_v, re.M))
    assert connected == shell_ports
    top_v = (acc_tree / "top.v").read_text()
    assert re.search(r"m3vit_bd_wrapper bd \(\s*\.status\(status\)\s*\);", top_v)
    assert "create_bd_port -dir O -from 3 -to 0 status" in bd


def test_acc_wrapper_elaborates_in_yosys(acc_tree):
    """Yosys reads the wrapper and the shell and finds every instance port (Vivado's check, early).

    The shell is read for its ports only (``-lib``): elaborating the whole accelerator's 7.6 MB of
    Verilog took yosys over 300 s here, and the port check needs none of its insides."""
    r = subprocess.run([_yosys(), "-q", "-p", "read_verilog -lib m3vit_shell.v; read_verilog m3vit_pl.v; "
                        "hierarchy -check -top m3vit_pl"], cwd=acc_tree, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_acc_leds_and_scripts(acc_tree):
    _, loc, std = _xdc(acc_tree)
    leds = {p: v for p, v in PINS.items() if p.startswith("led")}
    assert {p: (loc[p], std[p]) for p in loc} == leds
    assert set(_verilog_ports((acc_tree / "top.v").read_text(), "top")) == set(leds)
    r = subprocess.run(["bash", "-n", str(acc_tree / "build_top.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# Every command Tcl does not know (all of Vivado's) is logged and answers "stub".
_STUB_VIVADO = """\
set log [open vivado_calls.log w]
proc unknown {args} { puts $::log $args; return stub }
source top.tcl
close $log
"""


@pytest.mark.skipif(shutil.which("tclsh") is None, reason="tclsh not installed")
def test_acc_tcl_runs_against_stub_vivado(acc_tree, tmp_path):
    """top.tcl and m3vit_bd.tcl parse and run in plain Tcl, Vivado's commands stubbed: quoting,
    braces and control flow are sound, and the calls come in the intended order."""
    work = tmp_path / "tree"
    shutil.copytree(acc_tree, work)
    (work / "stub.tcl").write_text(_STUB_VIVADO)
    r = subprocess.run(["tclsh", "stub.tcl"], cwd=work, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = [line.split()[0] for line in (work / "vivado_calls.log").read_text().splitlines()]
    wanted = ["create_project", "set_property", "create_bd_design", "create_bd_cell", "apply_bd_automation",
              "connect_bd_intf_net", "assign_bd_address", "validate_bd_design", "generate_target",
              "make_wrapper", "synth_design", "write_bitstream", "write_hw_platform", "quit"]
    positions = [calls.index(c) for c in wanted]
    assert positions == sorted(positions)
    assert (work / "address_map.txt").is_file()


@pytest.mark.skipif(shutil.which("tclsh") is None, reason="tclsh not installed")
def test_acc_tcl_stops_before_bitstream_when_timing_missed(acc_tree, tmp_path):
    """A negative slack after routing ends the Vivado run with TIMING_MISSED and no write_bitstream."""
    work = tmp_path / "tree"
    shutil.copytree(acc_tree, work)
    slack = 'proc get_property {args} { if {[lindex $args 0] eq "SLACK"} { return -0.125 }; return stub }\n'
    (work / "stub.tcl").write_text(slack + _STUB_VIVADO)
    r = subprocess.run(["tclsh", "stub.tcl"], cwd=work, capture_output=True, text=True, timeout=60)
    assert r.returncode == TIMING_MISSED, r.stdout + r.stderr
    assert "timing not met (worst setup slack -0.125 ns, hold -0.125 ns): no bitstream written" in r.stdout
    assert "rebuild with a lower --pl-mhz (this build: 300 MHz)" in r.stdout
    calls = [line.split()[0] for line in (work / "vivado_calls.log").read_text().splitlines()]
    assert "route_design" in calls and "write_bitstream" not in calls


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_shell_rejects_core_without_axi_members():
    class Bare(wiring.Component):
        ctrl: In(AXI4LiteSignature(addr_width=12))
        axi: Out(1)

        def elaborate(self, platform):
            raise AssertionError

    with pytest.raises(TypeError, match="axi: Out\\(AXI4Signature"):
        PLShell(Bare())
    gc.collect()


def test_shell_with_control_block_in_pysim():
    """Through the shell: registers answer, a start completes, the status LEDs record the access."""
    dut = PLShell(ControlOnly())

    async def tb(ctx):
        assert ctx.get(dut.status[1:]) == 0
        assert await axil_read(ctx, dut.s_axi_ctrl, Reg.ID) == (ID_VALUE, Resp.OKAY)
        await axil_write(ctx, dut.s_axi_ctrl, Reg.CONTROL, 1)
        await ctx.tick().repeat(3)
        assert (await axil_read(ctx, dut.s_axi_ctrl, Reg.STATUS))[0] == 0b10
        cycles, _ = await axil_read(ctx, dut.s_axi_ctrl, Reg.CYCLES_LO)
        assert 5 < cycles < 40
        assert ctx.get(dut.status[1:]) == 0b001                          # control seen; no DRAM traffic
        assert not ctx.get(dut.m_axi.arvalid) and not ctx.get(dut.m_axi.awvalid)

    run_simulation(dut, tb)


def _fake_top(monkeypatch, accelerator):
    module = types.ModuleType("gateware.top")
    module.Accelerator = accelerator
    monkeypatch.setitem(sys.modules, "gateware.top", module)


def test_build_takes_accelerator_from_gateware_top(tmp_path, monkeypatch, capsys):
    class Accelerator(ControlOnly):
        """Any component with the two members will do."""

    _fake_top(monkeypatch, Accelerator)
    assert build("accelerator", tmp_path, run_vivado=False) == 0
    out = capsys.readouterr().out
    assert "gateware.top.Accelerator" in out and "CONTROL BLOCK" not in out


def test_build_pl_clock(tmp_path, monkeypatch, capsys):
    """``pl_mhz`` reaches the PS clock and the timing check's advice; clocks out of range are refused."""
    class Accelerator(ControlOnly):
        """Any component with the two members will do."""

    _fake_top(monkeypatch, Accelerator)
    assert build("accelerator", tmp_path, run_vivado=False, pl_mhz=187.5) == 0
    assert "CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ {187.5}" in (tmp_path / "m3vit_bd.tcl").read_text()
    assert "(this build: 187.5 MHz)" in (tmp_path / "top.tcl").read_text()
    assert "clocked at 187.5 MHz" in capsys.readouterr().out
    for bad in (0, -5, 301, float("nan")):
        with pytest.raises(BoardError, match="out of range: the accelerator's clock is above 0 and at most"):
            build("accelerator", tmp_path, run_vivado=False, pl_mhz=bad)
    with pytest.raises(BoardError, match="the bring-up design runs from the board's 125 MHz oscillator"):
        build("bringup", tmp_path, run_vivado=False, pl_mhz=100)


def test_cli_pl_clock_errors(tmp_path):
    r = run_m3vit("build", "--board", "zcu104", "--out", str(tmp_path), "--no-vivado", "--pl-mhz", "400",
                  timeout=120)
    assert r.returncode == 2 and "--pl-mhz 400 is out of range" in r.stderr and "Traceback" not in r.stderr
    r = run_m3vit("build", "--board", "zcu104", "--out", str(tmp_path), "--pl-mhz", "fast", timeout=120)
    assert r.returncode == 2 and "invalid float value: 'fast'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_build_rejects_unfit_accelerator(tmp_path, monkeypatch):
    class Accelerator(wiring.Component):
        ctrl: In(AXI4LiteSignature(addr_width=12))

        def elaborate(self, platform):
            raise AssertionError

    _fake_top(monkeypatch, Accelerator)
    with pytest.raises(BoardError, match="cannot go on the board: Accelerator has no `axi"):
        build("accelerator", tmp_path, run_vivado=False)
    gc.collect()


def test_cli_unknown_design_no_traceback(tmp_path):
    r = run_m3vit("build", "--board", "zcu104", "--design", "blinky", "--out", str(tmp_path), timeout=120)
    assert r.returncode == 2 and "invalid choice: 'blinky'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "boards.zcu104", "--design", "blinky", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "invalid choice: 'blinky'" in r.stderr and "Traceback" not in r.stderr


class TwoMasters(wiring.Component):
    """``ControlOnly`` with a second DRAM master, idle too: a core built with two weight ports."""

    def __init__(self):
        super().__init__({
            "axi": Out(AXI4Signature(addr_width=40, data_width=128)),
            "axi1": Out(AXI4Signature(addr_width=40, data_width=128)),
            "ctrl": In(AXI4LiteSignature(addr_width=CTRL_ADDR_WIDTH)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.regs = regs = ControlRegisters(addr_width=CTRL_ADDR_WIDTH, base_width=40)
        wiring.connect(m, wiring.flipped(self.ctrl), regs.bus)
        return m


def test_build_wires_each_master_to_its_hp_port(tmp_path, monkeypatch):
    """A core with masters ``axi`` and ``axi1``: HP0_FPD and HP1_FPD (SAXIGP2, SAXIGP3) enabled at
    128 bits, each behind its own SmartConnect on the PL clock and reset, each master's low DDR
    mapped; the wrapper declares both masters as AXI4 interfaces."""
    _fake_top(monkeypatch, TwoMasters)
    assert build("accelerator", tmp_path, run_vivado=False) == 0
    bd = (tmp_path / "m3vit_bd.tcl").read_text()
    for n in (2, 3):
        assert f"CONFIG.PSU__USE__S_AXI_GP{n} {{1}}" in bd and f"CONFIG.PSU__SAXIGP{n}__DATA_WIDTH {{128}}" in bd
    assert "S_AXI_GP4" not in bd and "HP2" not in bd
    intf = _nets(bd, "connect_bd_intf_net", "get_bd_intf_pins")
    for master, ic, hp in (("m_axi", "mem_interconnect", 0), ("m_axi1", "mem_interconnect1", 1)):
        assert {f"pl/{master}", f"{ic}/S00_AXI"} in intf
        assert {f"{ic}/M00_AXI", f"ps/S_AXI_HP{hp}_FPD"} in intf
        assert (f"assign_bd_address -target_address_space [get_bd_addr_spaces pl/{master}] "
                f"[get_bd_addr_segs ps/SAXIGP{hp + 2}/HP{hp}_DDR_LOW]") in bd
    nets = _nets(bd, "connect_bd_net", "get_bd_pins")
    clock = next(n for n in nets if "ps/pl_clk0" in n)
    assert {"ps/saxihp0_fpd_aclk", "ps/saxihp1_fpd_aclk", "mem_interconnect/aclk", "mem_interconnect1/aclk"} <= clock
    assert {"mem_interconnect/aresetn", "mem_interconnect1/aresetn"} <= next(n for n in nets if "pl/rst_n" in n)
    pl_v = (tmp_path / "m3vit_pl.v").read_text()
    assert set(re.findall(r'aximm:1\.0 (\w+) \w+"', pl_v)) == {"m_axi", "m_axi1", "s_axi_ctrl"}
    assert "ASSOCIATED_BUSIF m_axi:m_axi1:s_axi_ctrl" in pl_v
    for ref in set(re.findall(r"pl/(\w+)", bd)):
        assert ref in _verilog_ports(pl_v, "m3vit_pl") | {"m_axi", "m_axi1", "s_axi_ctrl"}, ref
    if shutil.which("tclsh") is not None:
        (tmp_path / "stub.tcl").write_text(_STUB_VIVADO)
        r = subprocess.run(["tclsh", "stub.tcl"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
