"""The accelerator on the ZCU104 beside the Zynq UltraScale+ PS (PS8): PL shell, Vivado block design.

How the pieces meet (nothing here has been through Vivado on this machine; see ``build.py``):

- The accelerator core is any ``wiring.Component`` with an ``axi`` member ``Out(AXI4Signature)``
  (its DRAM master), optionally ``axi1`` .. ``axi3`` (more DRAM masters: the weight ports of
  ``Capacity.ports``), and a ``ctrl`` member ``In(AXI4LiteSignature)`` (its registers).
  ``PLShell`` wraps it with status LEDs and is converted to Verilog on its own as ``m3vit_shell``.
- ``pl_wrapper_verilog`` writes ``m3vit_pl``, a plain Verilog module around ``m3vit_shell`` whose
  ports carry Vivado's interface names (``m_axi_awaddr``, ``m_axi1_araddr``, ``s_axi_ctrl_wdata``,
  ``clk``, ``rst_n``) and ``X_INTERFACE_INFO`` attributes, so the block design can take it as a
  module reference with one AXI4 master per port, an AXI4-Lite slave, a clock and an active-low
  reset.
- ``block_design_tcl`` builds ``m3vit_bd``: the PS8 with the ZCU104 board preset, ``pl_clk0`` as the
  PL clock, ``pl_resetn0`` through a ``proc_sys_reset``; ``M_AXI_HPM0_FPD`` -> SmartConnect ->
  ``m3vit_pl/s_axi_ctrl`` (registers at ``CTRL_BASE``); ``m3vit_pl/m_axi`` -> SmartConnect ->
  ``S_AXI_HP0_FPD``, and ``m_axi1`` .. ``m_axi3`` each through their own SmartConnect to
  ``S_AXI_HP1_FPD`` .. ``S_AXI_HP3_FPD`` (all 128-bit, all into the one PS DDR controller); the
  shell's ``status`` leaves the design as a port.
- ``AcceleratorTop`` is what Amaranth's platform build sees: it instantiates the block design's
  wrapper ``m3vit_bd_wrapper`` and drives the user LEDs from ``status``. The Amaranth build thus
  keeps its own top, pins and flow; the block design enters through ``script_after_read``.
"""

from amaranth import Cat, Instance, Module, Shape, Signal
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out

from gateware.axi import AXI4LiteSignature, AXI4Signature
# Where the PS sees the control registers: the driver on the board reads the same constant.
from runtime.regs import CTRL_BASE, CTRL_SPAN

__all__ = ["CTRL_BASE", "PLShell", "AcceleratorTop", "check_core", "core_ports",
           "pl_wrapper_verilog", "block_design_tcl"]

#: Byte address width of the control port: its window of ``CTRL_SPAN`` bytes (one 4 KiB page).
CTRL_ADDR_WIDTH = CTRL_SPAN.bit_length() - 1
#: The HP ports' address width; a narrower master reaches only the low 2 GB of DDR.
HP_ADDR_WIDTH = 49
#: High-performance PS ports the DRAM masters can take: HP0..HP3_FPD (the PS8's SAXIGP2..5).
HP_PORTS = 4


def _is_master(member):
    return member.is_signature and member.flow == Out and isinstance(member.signature, AXI4Signature)


def core_ports(core):
    """The core's DRAM masters in port order: ``axi``, then ``axi1``, ``axi2``, ... while present."""
    members = core.signature.members
    names = ["axi"]
    while f"axi{len(names)}" in members:
        names.append(f"axi{len(names)}")
    return names


def check_core(core):
    """Raise ``TypeError`` unless ``core`` has the ``axi`` and ``ctrl`` members a shell needs, and
    at most ``HP_PORTS`` DRAM masters."""
    members = getattr(getattr(core, "signature", None), "members", {})
    axi, ctrl = (members[name] if name in members else None for name in ("axi", "ctrl"))
    if axi is None or not _is_master(axi):
        raise TypeError(f"{type(core).__name__} has no `axi: Out(AXI4Signature(...))` member")
    names = core_ports(core)
    if len(names) > HP_PORTS or not all(_is_master(members[name]) for name in names):
        raise TypeError(f"{type(core).__name__} has DRAM masters {names}: the PS has {HP_PORTS} HP ports and each "
                        f"master must be Out(AXI4Signature(...))")
    if (ctrl is None or not ctrl.is_signature or ctrl.flow != In or
            not isinstance(ctrl.signature, AXI4LiteSignature)):
        raise TypeError(f"{type(core).__name__} has no `ctrl: In(AXI4LiteSignature(...))` member")


class PLShell(wiring.Component):
    """The programmable-logic side as the block design sees it: a core plus four status LEDs.

    ``status``: bit 0 blinks from the PL clock (about 2 Hz at 300 MHz: clock and reset are alive);
    bit 1 lights after the first control-register access; bits 2 and 3 after the first DRAM read and
    write request of the core (on any of its masters).

    Parameters
    ----------
    core : wiring.Component
        See ``check_core``.

    Members
    -------
    m_axi, m_axi1, ... : Out(core's ``axi``, ``axi1``, ... signatures)
    s_axi_ctrl : In(core's ``ctrl`` signature)
    status : Out(4)
    """

    def __init__(self, core):
        check_core(core)
        self.core = core
        members = core.signature.members
        self.masters = {"m_" + name: name for name in core_ports(core)}
        super().__init__({
            **{outer: Out(members[inner].signature) for outer, inner in self.masters.items()},
            # An In member's signature reads flipped; flip it back to declare the same flow.
            "s_axi_ctrl": In(members["ctrl"].signature.flip()),
            "status": Out(4),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        for outer, inner in self.masters.items():
            wiring.connect(m, getattr(core, inner), wiring.flipped(getattr(self, outer)))
        wiring.connect(m, wiring.flipped(self.s_axi_ctrl), core.ctrl)

        blink = Signal(27)
        seen = Signal(3)
        m.d.sync += blink.eq(blink + 1)
        ctrl, masters = self.s_axi_ctrl, [getattr(self, outer) for outer in self.masters]
        events = Cat((ctrl.awvalid & ctrl.awready) | (ctrl.arvalid & ctrl.arready),
                     Cat(axi.arvalid & axi.arready for axi in masters).any(),
                     Cat(axi.awvalid & axi.awready for axi in masters).any())
        m.d.sync += seen.eq(seen | events)
        m.d.comb += self.status.eq(Cat(blink[-1], seen))
        return m


class AcceleratorTop(wiring.Component):
    """Platform top of the accelerator build: the block design's wrapper and the four user LEDs."""

    def __init__(self):
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        status = Signal(4)
        m.submodules.bd = Instance("m3vit_bd_wrapper", o_status=status)
        for i in range(4):
            m.submodules[f"led{i}"] = led = io.Buffer("o", platform.request("led", i, dir="-"))
            m.d.comb += led.o.eq(status[i])
        return m


def _ports(shell):
    """``(verilog_name, shell_port_name, direction, width)`` for every bus and status port."""
    ports = []
    for path, member in shell.signature.members.flatten():
        if member.is_port:
            width = Shape.cast(member.shape).width
            direction = "output" if member.flow == Out else "input"
            ports.append(("_".join(path), "__".join(path), direction, width))
    return ports


def pl_wrapper_verilog(shell, *, inner="m3vit_shell", name="m3vit_pl"):
    """Verilog text of the module-reference wrapper ``name`` around the converted ``shell``.

    The wrapper only renames ports, inverts the reset and declares the interfaces to Vivado.
    """
    buses = {n: shell.signature.members[n].signature for n in (*shell.masters, "s_axi_ctrl")}
    decls = [
        '(* X_INTERFACE_INFO = "xilinx.com:signal:clock:1.0 clk CLK" *)',
        f'(* X_INTERFACE_PARAMETER = "XIL_INTERFACENAME clk, ASSOCIATED_BUSIF {":".join(buses)}, '
        'ASSOCIATED_RESET rst_n" *)',
        "input wire clk,",
        '(* X_INTERFACE_INFO = "xilinx.com:signal:reset:1.0 rst_n RST" *)',
        '(* X_INTERFACE_PARAMETER = "XIL_INTERFACENAME rst_n, POLARITY ACTIVE_LOW" *)',
        "input wire rst_n,",
    ]
    conns = [".clk(clk)", ".rst(~rst_n)"]
    first = set()
    for vname, pname, direction, width in _ports(shell):
        bus = next((b for b in buses if vname.startswith(b + "_")), None)
        if bus is not None:
            signal = vname[len(bus) + 1:].upper()
            decls.append(f'(* X_INTERFACE_INFO = "xilinx.com:interface:aximm:1.0 {bus} {signal}" *)')
            if bus not in first:
                first.add(bus)
                sig = buses[bus]
                params = [f"XIL_INTERFACENAME {bus}", f"PROTOCOL {'AXI4' if isinstance(sig, AXI4Signature) else 'AXI4LITE'}",
                          f"DATA_WIDTH {sig.data_width}", f"ADDR_WIDTH {sig.addr_width}"]
                if isinstance(sig, AXI4Signature):
                    params.append(f"ID_WIDTH {sig.id_width}")
                decls.append(f'(* X_INTERFACE_PARAMETER = "{", ".join(params)}" *)')
        vector = f"[{width - 1}:0] " if width > 1 else ""
        decls.append(f"{direction} wire {vector}{vname},")
        conns.append(f".{pname}({vname})")
    decls[-1] = decls[-1].rstrip(",")
    body = "\n".join(f"    {d}" for d in decls)
    inst = ",\n".join(f"        {c}" for c in conns)
    return (f"// Module reference for the Vivado block design: {inner} with Vivado's interface names.\n"
            f"// Generated by boards/zynq.py.\n"
            f"module {name} (\n{body}\n);\n    {inner} shell (\n{inst}\n    );\nendmodule\n")


def _hp_ports(shell):
    """Per DRAM master: ``(shell member, HP index, PS8 slave name, interconnect name)``."""
    return [(outer, hp, f"SAXIGP{hp + 2}", "mem_interconnect" + (str(hp) if hp else ""))
            for hp, outer in enumerate(shell.masters)]


def block_design_tcl(shell, *, pl_mhz=300):
    """Tcl that creates the ``m3vit_bd`` block design around the module reference ``m3vit_pl``.

    Runs inside the project Amaranth's build script opens, after the sources are added; leaves the
    design's wrapper ``m3vit_bd_wrapper`` among the sources and the address map in
    ``address_map.txt``. DRAM master ``m_axi`` goes to HP0_FPD, ``m_axiN`` to HPN_FPD.
    """
    hp = _hp_ports(shell)
    widths = {outer: shell.signature.members[outer].signature for outer, *_ in hp}
    # The HP port takes 32 to 128 bits; the SmartConnect in front converts any other width.
    ps_config = "".join(f"    CONFIG.PSU__USE__S_AXI_GP{n + 2} {{1}} \\\n"
                        f"    CONFIG.PSU__{gp}__DATA_WIDTH {{{min(max(widths[outer].data_width, 32), 128)}}} \\\n"
                        for outer, n, gp, _ in hp)
    interconnects = "".join(f"set ic{n} [create_bd_cell -type ip -vlnv [m3vit_ipdef smartconnect] {ic}]\n"
                            f"set_property -dict [list CONFIG.NUM_SI {{1}} CONFIG.NUM_MI {{1}}] $ic{n}\n"
                            for _, n, _, ic in hp)
    clocks = " ".join(f"[get_bd_pins ps/saxihp{n}_fpd_aclk]" for _, n, _, _ in hp)
    ic_clocks = " ".join(f"[get_bd_pins {ic}/aclk]" for *_, ic in hp)
    ic_resets = " ".join(f"[get_bd_pins {ic}/aresetn]" for *_, ic in hp)
    wires = "".join(f"connect_bd_intf_net [get_bd_intf_pins pl/{outer}] [get_bd_intf_pins {ic}/S00_AXI]\n"
                    f"connect_bd_intf_net [get_bd_intf_pins {ic}/M00_AXI] [get_bd_intf_pins ps/S_AXI_HP{n}_FPD]\n"
                    for outer, n, _, ic in hp)
    if all(sig.addr_width >= HP_ADDR_WIDTH for sig in widths.values()):
        maps = ["assign_bd_address"]
    else:
        # Segments above the masters' reach (DDR high, PCIe) cannot be mapped; take the low 2 GB.
        maps = [f"assign_bd_address -target_address_space [get_bd_addr_spaces pl/{outer}] "
                f"[get_bd_addr_segs ps/{gp}/HP{n}_DDR_LOW]" for outer, n, gp, _ in hp]
    spaces = " ".join(f"[get_bd_addr_spaces pl/{outer}]" for outer, *_ in hp)
    return f"""\
# Zynq UltraScale+ block design for the M3ViT accelerator; generated by boards/zynq.py.
# PS8 (ZCU104 preset) + module reference m3vit_pl; pl_clk0 at {pl_mhz:g} MHz clocks all of the PL.

proc m3vit_ipdef {{name}} {{
    # Newest version of a Xilinx IP in this Vivado, so the script does not pin one release.
    set defs [lsort -dictionary [get_ipdefs "xilinx.com:ip:${{name}}:*"]]
    if {{[llength $defs] == 0}} {{ error "m3vit: IP xilinx.com:ip:${{name}} is not in this Vivado" }}
    return [lindex $defs end]
}}

set board [lindex [lsort -dictionary [get_board_parts -quiet "*:zcu104:*"]] end]
if {{$board eq ""}} {{ error "m3vit: ZCU104 board files are not installed in this Vivado" }}
set_property board_part $board [current_project]

create_bd_design m3vit_bd

set ps [create_bd_cell -type ip -vlnv [m3vit_ipdef zynq_ultra_ps_e] ps]
apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e -config {{apply_board_preset "1"}} $ps
# HPM0_FPD (GP0) for the registers, 32 bits wide as they are; HP0_FPD (SAXIGP2) and, for more
# DRAM masters, HP1..HP3_FPD (SAXIGP3..5), 128 bits each, all into the PS's one DDR controller;
# the preset's HPM1_FPD is not used.
set_property -dict [list \\
    CONFIG.PSU__USE__M_AXI_GP0 {{1}} \\
    CONFIG.PSU__MAXIGP0__DATA_WIDTH {{32}} \\
    CONFIG.PSU__USE__M_AXI_GP1 {{0}} \\
    CONFIG.PSU__USE__M_AXI_GP2 {{0}} \\
{ps_config}    CONFIG.PSU__FPGA_PL0_ENABLE {{1}} \\
    CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ {{{pl_mhz:g}}} \\
] $ps

set reset [create_bd_cell -type ip -vlnv [m3vit_ipdef proc_sys_reset] pl_reset]
set ctrl_ic [create_bd_cell -type ip -vlnv [m3vit_ipdef smartconnect] ctrl_interconnect]
set_property -dict [list CONFIG.NUM_SI {{1}} CONFIG.NUM_MI {{1}}] $ctrl_ic
{interconnects}set pl [create_bd_cell -type module -reference m3vit_pl pl]

connect_bd_net [get_bd_pins ps/pl_clk0] \\
    [get_bd_pins ps/maxihpm0_fpd_aclk] {clocks} \\
    [get_bd_pins pl_reset/slowest_sync_clk] \\
    [get_bd_pins ctrl_interconnect/aclk] {ic_clocks} \\
    [get_bd_pins pl/clk]
connect_bd_net [get_bd_pins ps/pl_resetn0] [get_bd_pins pl_reset/ext_reset_in]
connect_bd_net [get_bd_pins pl_reset/peripheral_aresetn] \\
    [get_bd_pins ctrl_interconnect/aresetn] {ic_resets} \\
    [get_bd_pins pl/rst_n]

connect_bd_intf_net [get_bd_intf_pins ps/M_AXI_HPM0_FPD] [get_bd_intf_pins ctrl_interconnect/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins ctrl_interconnect/M00_AXI] [get_bd_intf_pins pl/s_axi_ctrl]
{wires}
create_bd_port -dir O -from 3 -to 0 status
connect_bd_net [get_bd_pins pl/status] [get_bd_ports status]

assign_bd_address -offset {CTRL_BASE:#010x} -range {1 << CTRL_ADDR_WIDTH:#x} \\
    -target_address_space [get_bd_addr_spaces ps/Data] [get_bd_addr_segs pl/s_axi_ctrl/*]
{chr(10).join(maps)}
set map [open address_map.txt w]
foreach space [list [get_bd_addr_spaces ps/Data] {spaces}] {{
    foreach seg [get_bd_addr_segs -of_objects $space] {{
        puts $map "$space [get_property OFFSET $seg] [get_property RANGE $seg] $seg"
    }}
}}
close $map

validate_bd_design
save_bd_design
set bd_file [get_files m3vit_bd.bd]
# Synthesise the design's IP inside the top's synth_design run instead of out-of-context runs,
# which the script-driven flow does not launch.
set_property synth_checkpoint_mode None $bd_file
generate_target all $bd_file
add_files -norecurse [make_wrapper -files $bd_file -top]
"""


#: Commands run after ``write_bitstream``: the hardware hand-off for PetaLinux/Vitis (``top.xsa``) and
#: for PYNQ (``top.hwh`` beside ``top.bit``). Failures here leave the bitstream in place.
AFTER_BITSTREAM_TCL = """\
if {[catch {write_hw_platform -fixed -include_bit -force -file top.xsa} err]} {
    puts "m3vit: no top.xsa written: $err"
}
set hwh [glob -nocomplain top.*/sources_1/bd/m3vit_bd/hw_handoff/m3vit_bd.hwh]
if {[llength $hwh]} { file copy -force [lindex $hwh 0] top.hwh }
"""
