"""Host side of the simulated accelerator: DRAM model, register access, frame runner, CLI."""
