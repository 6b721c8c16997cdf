"""The accelerator on the ZCU104 beside the Zynq UltraScale+ PS (PS8): PL shell, Vivado block design.

How the pieces meet (nothing here has been through Vivado on this machine; see ``build.py``):

- The accelerator core is any ``wiring.Component`` with an ``axi`` member ``Out(AXI4Signature)``
  (its DRAM master) and a ``ctrl`` member ``In(AXI4LiteSignature)`` (its registers).
  ``PLShell`` wraps it with status LEDs and is converted to Verilog on its own as ``m3vit_shell``.
- ``pl_wrapper_verilog`` writes ``m3vit_pl``, a plain Verilog module around ``m3vit_shell`` whose
  ports carry Vivado's interface names (``m_axi_awaddr``, ``s_axi_ctrl_wdata``, ``clk``, ``rst_n``)
  and ``X_INTERFACE_INFO`` attributes, so the block design can take it as a module reference with
  an AXI4 master, an AXI4-Lite slave, a clock and an active-low reset.
- ``block_design_tcl`` builds ``m3vit_bd``: the PS8 with the ZCU104 board preset, ``pl_clk0`` as the
  PL clock, ``pl_resetn0`` through a ``proc_sys_reset``; ``M_AXI_HPM0_FPD`` -> SmartConnect ->
  ``m3vit_pl/s_axi_ctrl`` (registers at ``CTRL_BASE``); ``m3vit_pl/m_axi`` -> SmartConnect ->
  ``S_AXI_HP0_FPD``; the shell's ``status`` leaves the design as a port.
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

__all__ = ["CTRL_BASE", "PLShell", "AcceleratorTop", "check_core",
           "pl_wrapper_verilog", "block_design_tcl"]

#: Byte address width of the control port: its window of ``CTRL_SPAN`` bytes (one 4 KiB page).
CTRL_ADDR_WIDTH = CTRL_SPAN.bit_length() - 1
#: The HP ports' address width; a narrower master reaches only the low 2 GB of DDR.
HP_ADDR_WIDTH = 49


def check_core(core):
    """Raise ``TypeError`` unless ``core`` has the ``axi`` and ``ctrl`` members a shell needs."""
    members = getattr(getattr(core, "signature", None), "members", {})
    axi, ctrl = (members[name] if name in members else None for name in ("axi", "ctrl"))
    if axi is None or not axi.is_signature or axi.flow != Out or not isinstance(axi.signature, AXI4Signature):
        raise TypeError(f"{type(core).__name__} has no `axi: Out(AXI4Signature(...))` member")
    if (ctrl is None or not ctrl.is_signature or ctrl.flow != In or
            not isinstance(ctrl.signature, AXI4LiteSignature)):
        raise TypeError(f"{type(core).__name__} has no `ctrl: In(AXI4LiteSignature(...))` member")


class PLShell(wiring.Component):
    """The programmable-logic side as the block design sees it: a core plus four status LEDs.

    ``status``: bit 0 blinks from the PL clock (about 2 Hz at 300 MHz: clock and reset are alive);
    bit 1 lights after the first control-register access; bits 2 and 3 after the first DRAM read and
    write request of the core.

    Parameters
    ----------
    core : wiring.Component
        See ``check_core``.

    Members
    -------
    m_axi : Out(core's ``axi`` signature)
    s_axi_ctrl : In(core's ``ctrl`` signature)
    status : Out(4)
    """

    def __init__(self, core):
        check_core(core)
        self.core = core
        members = core.signature.members
        super().__init__({
            "m_axi": Out(members["axi"].signature),
            # An In member's signature reads flipped; flip it back to declare the same flow.
            "s_axi_ctrl": In(members["ctrl"].signature.flip()),
            "status": Out(4),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        wiring.connect(m, core.axi, wiring.flipped(self.m_axi))
        wiring.connect(m, wiring.flipped(self.s_axi_ctrl), core.ctrl)

        blink = Signal(27)
        seen = Signal(3)
        m.d.sync += blink.eq(blink + 1)
        ctrl, axi = self.s_axi_ctrl, self.m_axi
        events = Cat((ctrl.awvalid & ctrl.awready) | (ctrl.arvalid & ctrl.arready),
                     axi.arvalid & axi.arready, axi.awvalid & axi.awready)
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
    buses = {n: shell.signature.members[n].signature for n in ("m_axi", "s_axi_ctrl")}
    decls = [
        '(* X_INTERFACE_INFO = "xilinx.com:signal:clock:1.0 clk CLK" *)',
        '(* X_INTERFACE_PARAMETER = "XIL_INTERFACENAME clk, ASSOCIATED_BUSIF m_axi:s_axi_ctrl, '
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


def block_design_tcl(shell, *, pl_mhz=300):
    """Tcl that creates the ``m3vit_bd`` block design around the module reference ``m3vit_pl``.

    Runs inside the project Amaranth's build script opens, after the sources are added; leaves the
    design's wrapper ``m3vit_bd_wrapper`` among the sources and the address map in
    ``address_map.txt``.
    """
    master = shell.signature.members["m_axi"].signature
    # The HP port takes 32 to 128 bits; the SmartConnect in front converts any other width.
    hp_width = min(max(master.data_width, 32), 128)
    if master.addr_width >= HP_ADDR_WIDTH:
        map_master = "assign_bd_address"
    else:
        # Segments above the master's reach (DDR high, PCIe) cannot be mapped; take the low 2 GB.
        map_master = ("assign_bd_address -target_address_space [get_bd_addr_spaces pl/m_axi] "
                      "[get_bd_addr_segs ps/SAXIGP2/HP0_DDR_LOW]")
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
# HPM0_FPD (GP0) for the registers, 32 bits wide as they are; HP0_FPD (SAXIGP2) 128 bits for DRAM;
# the preset's HPM1_FPD is not used.
set_property -dict [list \\
    CONFIG.PSU__USE__M_AXI_GP0 {{1}} \\
    CONFIG.PSU__MAXIGP0__DATA_WIDTH {{32}} \\
    CONFIG.PSU__USE__M_AXI_GP1 {{0}} \\
    CONFIG.PSU__USE__M_AXI_GP2 {{0}} \\
    CONFIG.PSU__USE__S_AXI_GP2 {{1}} \\
    CONFIG.PSU__SAXIGP2__DATA_WIDTH {{{hp_width}}} \\
    CONFIG.PSU__FPGA_PL0_ENABLE {{1}} \\
    CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ {{{pl_mhz:g}}} \\
] $ps

set reset [create_bd_cell -type ip -vlnv [m3vit_ipdef proc_sys_reset] pl_reset]
set ctrl_ic [create_bd_cell -type ip -vlnv [m3vit_ipdef smartconnect] ctrl_interconnect]
set mem_ic [create_bd_cell -type ip -vlnv [m3vit_ipdef smartconnect] mem_interconnect]
set_property -dict [list CONFIG.NUM_SI {{1}} CONFIG.NUM_MI {{1}}] $ctrl_ic
set_property -dict [list CONFIG.NUM_SI {{1}} CONFIG.NUM_MI {{1}}] $mem_ic
set pl [create_bd_cell -type module -reference m3vit_pl pl]

connect_bd_net [get_bd_pins ps/pl_clk0] \\
    [get_bd_pins ps/maxihpm0_fpd_aclk] [get_bd_pins ps/saxihp0_fpd_aclk] \\
    [get_bd_pins pl_reset/slowest_sync_clk] \\
    [get_bd_pins ctrl_interconnect/aclk] [get_bd_pins mem_interconnect/aclk] \\
    [get_bd_pins pl/clk]
connect_bd_net [get_bd_pins ps/pl_resetn0] [get_bd_pins pl_reset/ext_reset_in]
connect_bd_net [get_bd_pins pl_reset/peripheral_aresetn] \\
    [get_bd_pins ctrl_interconnect/aresetn] [get_bd_pins mem_interconnect/aresetn] \\
    [get_bd_pins pl/rst_n]

connect_bd_intf_net [get_bd_intf_pins ps/M_AXI_HPM0_FPD] [get_bd_intf_pins ctrl_interconnect/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins ctrl_interconnect/M00_AXI] [get_bd_intf_pins pl/s_axi_ctrl]
connect_bd_intf_net [get_bd_intf_pins pl/m_axi] [get_bd_intf_pins mem_interconnect/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins mem_interconnect/M00_AXI] [get_bd_intf_pins ps/S_AXI_HP0_FPD]

create_bd_port -dir O -from 3 -to 0 status
connect_bd_net [get_bd_pins pl/status] [get_bd_ports status]

assign_bd_address -offset {CTRL_BASE:#010x} -range {1 << CTRL_ADDR_WIDTH:#x} \\
    -target_address_space [get_bd_addr_spaces ps/Data] [get_bd_addr_segs pl/s_axi_ctrl/*]
{map_master}
set map [open address_map.txt w]
foreach space [list [get_bd_addr_spaces ps/Data] [get_bd_addr_spaces pl/m_axi]] {{
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
