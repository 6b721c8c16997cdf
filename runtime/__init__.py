"""Host runtime of the M3ViT accelerator: run a compiled bundle and get features back.

Needs only numpy. The register map (:mod:`runtime.regs`) and the DRAM layout
(:mod:`runtime.layout`) are defined here once; the gateware and the simulator import them.
:class:`runtime.driver.Accelerator` runs frames on a board through PYNQ
(:class:`runtime.backends.PynqBackend`) or on the simulated accelerator
(:class:`runtime.backends.SimulatorBackend`), from a bundle (:mod:`runtime.bundle`) written by
``m3vit bundle``.

The names below load their module on first use, so that ``m3vit --help`` (which registers
``cli.runtime``) does not import numpy.
"""

import importlib

_EXPORTS = {
    "Accelerator": "driver", "Features": "driver",
    "Bundle": "bundle", "write_bundle": "bundle",
    "PynqBackend": "backends", "SimulatorBackend": "backends",
    "AcceleratorError": "errors", "AcceleratorTimeout": "errors", "BuildMismatchError": "errors",
    "BundleError": "errors", "InputError": "errors", "AcceleratorFault": "errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
