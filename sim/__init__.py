"""Host side of the simulated accelerator: DRAM model, register access, frame runner, CLI.

This file imports nothing, so that command-line parsers can name the engines cheaply."""

#: The simulators that can run the accelerator: Amaranth's own, and its Verilog under Verilator.
ENGINES = ("pysim", "verilator")
