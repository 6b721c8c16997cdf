"""The driver: load a bundle onto an accelerator, run frames, read the features back.

The same code drives the board (:class:`runtime.backends.PynqBackend`) and the simulated
accelerator (:class:`runtime.backends.SimulatorBackend`).
"""

from dataclasses import dataclass

import numpy as np

from .bundle import Bundle, describe_capacity
from .errors import AcceleratorFault, AcceleratorTimeout, BuildMismatchError, InputError
from .image import as_pixels
from .layout import dram_layout
from .regs import (CAPACITY_REGS, CLOCK_HZ, CONTROL_SOFT_RESET, CONTROL_START, ID_VALUE, STATUS_BUSY, STATUS_DONE,
                   STATUS_ERROR, VERSION, Reg, error_message)

__all__ = ["Accelerator", "Features"]


@dataclass
class Features:
    """What one frame produced and cost.

    Attributes
    ----------
    task : int
    raw : ndarray
        int16 features ``[tokens, dim]`` as the accelerator wrote them.
    values : ndarray
        float32 features: ``raw`` times the bundle's output scale.
    cycles, stalls : int
        The accelerator's counters for the frame: cycles from start to done, and cycles the MAC
        array waited for DRAM.
    routing : ndarray or None
        uint8 ``[moe_layers, tokens, top_k]``: per MoE layer, each token's experts in rank order
        (first choice first), as the accelerator wrote them; ``None`` for a bundle made before
        the accelerator wrote its routing.
    moe_layers : tuple of int
        The layer number of each row of ``routing``.
    """

    task: int
    raw: np.ndarray
    values: np.ndarray
    cycles: int
    stalls: int
    routing: np.ndarray = None
    moe_layers: tuple = ()

    @property
    def latency_ms(self):
        """The frame's latency at the 300 MHz target clock, from the cycle counter."""
        return self.cycles / CLOCK_HZ * 1e3


class Accelerator:
    """A bundle loaded onto an accelerator, ready to run frames.

    Opening checks that the accelerator is the build the bundle was compiled for, puts the frame
    image into DRAM and writes the base-address registers. Each :meth:`run` then writes the image
    when it changed, and only TASK and CONTROL.

    Parameters
    ----------
    bundle : Bundle or str or pathlib.Path
        A loaded bundle or its folder (loaded and checksum-verified here).
    backend : PynqBackend or SimulatorBackend
    timeout : float
        Seconds of accelerator time a frame may take (on the simulator: simulated time at 300 MHz).
    watchdog : int
        Arm the accelerator's watchdog: a frame busy for more than this many cycles stops with
        ``ErrorCode.WATCHDOG``; 0 (the default) leaves it off.

    Raises
    ------
    runtime.errors.BundleError
        For a missing, corrupt or truncated bundle.
    runtime.errors.BuildMismatchError
        When the accelerator is not the build the bundle was compiled for.
    """

    def __init__(self, bundle, backend, *, timeout=1.0, watchdog=0):
        if not 0 <= watchdog < 1 << 32:
            raise InputError(f"the watchdog counts 0..{(1 << 32) - 1} cycles, not {watchdog}")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.backend = backend
        self.timeout = timeout
        b = self.bundle
        self._image_bytes = int(np.prod(b.input_shape))
        self._output_bytes = 2 * int(np.prod(b.output_shape))
        self._routing = b.routing_layout
        self.layout = dram_layout(len(b.frame), self._image_bytes, self._output_bytes, self._routing.size)
        backend.open(b, self.layout.size)
        try:
            self._check_build()
            backend.write_memory(self.layout.weights, b.frame)
            for name, offset in (("WEIGHTS", self.layout.weights), ("IMAGE", self.layout.image),
                                 ("OUTPUT", self.layout.output)):
                address = backend.base + offset
                backend.write(Reg[f"{name}_LO"], address & 0xFFFF_FFFF)
                backend.write(Reg[f"{name}_HI"], address >> 32)
            backend.write(Reg.WATCHDOG, watchdog)
        except BaseException:
            backend.close()
            raise
        self._pixels = None

    def _check_build(self):
        read, b = self.backend.read, self.bundle
        ident = read(Reg.ID)
        if ident != ID_VALUE:
            raise BuildMismatchError(f"no M3ViT accelerator answers at the control registers: ID reads "
                                     f"{ident:#010x}, not {ID_VALUE:#010x} (bitstream not loaded?)")
        version = read(Reg.VERSION)
        major, minor = version >> 16, version & 0xFFFF
        need = tuple(b.register_map)
        if major != VERSION[0] or major != need[0] or minor < max(need[1], VERSION[1]):
            raise BuildMismatchError(f"the accelerator has register map {major}.{minor}; bundle {b.path} and this "
                                     f"runtime need {need[0]}.{max(need[1], VERSION[1])} or a later minor version")
        reported = {name: read(reg) for name, reg in CAPACITY_REGS.items()}
        if reported != b.capacity:
            raise BuildMismatchError(f"bundle {b.path} (config {b.name!r}) was compiled for the build "
                                     f"[{describe_capacity(b.capacity)}]; the accelerator is the build "
                                     f"[{describe_capacity(reported)}]")

    def check_task(self, task):
        """Raise :class:`InputError` unless ``task`` is one of the bundle's model's tasks."""
        tasks = self.bundle.config["num_tasks"]
        if not (isinstance(task, (int, np.integer)) and 0 <= task < tasks):
            raise InputError(f"unknown task {task}: config {self.bundle.name!r} has tasks 0..{tasks - 1}")

    def set_image(self, image):
        """Put ``image`` into DRAM for the next frames: int8 pixels or floats in [0, 1], ``[C, H, W]``."""
        pixels = as_pixels(image, self.bundle.input_shape)
        if self._pixels is None or not np.array_equal(pixels, self._pixels):
            self.backend.write_memory(self.layout.image, pixels.tobytes())
            self._pixels = pixels.copy()

    def run(self, task, image=None):
        """Run one frame for ``task`` on ``image`` (default: the image of the previous frame).

        Returns
        -------
        Features
            With the frame's expert routing when the bundle describes it.

        Raises
        ------
        runtime.errors.InputError
            For an unknown task, a bad image, or no image yet.
        runtime.errors.AcceleratorTimeout
            When the frame does not finish within ``timeout``, or the accelerator stops without
            finishing.
        runtime.errors.AcceleratorFault
            When the accelerator stops the frame on an error (a bus error, the watchdog); it is
            idle again and ready for the next frame.
        """
        self.check_task(task)
        if image is not None:
            self.set_image(image)
        if self._pixels is None:
            raise InputError("no image given yet")
        be = self.backend
        be.write(Reg.TASK, int(task))
        be.write(Reg.CONTROL, CONTROL_START)
        deadline = be.clock() + self.timeout
        while True:
            be.wait()
            status = be.read(Reg.STATUS)
            if status & STATUS_ERROR:
                code = be.read(Reg.ERROR_CODE)
                addr = be.read(Reg.ERROR_ADDR_LO) | be.read(Reg.ERROR_ADDR_HI) << 32
                raise AcceleratorFault(f"the accelerator stopped task {task} on an error: "
                                       f"{error_message(code, addr)}", code, addr)
            if status & STATUS_DONE:
                break
            if not status & STATUS_BUSY:
                raise AcceleratorTimeout(f"the accelerator stopped without finishing task {task} "
                                         f"(STATUS {status:#x}): is the frame image intact?")
            if be.clock() > deadline:
                raise AcceleratorTimeout(f"the accelerator did not finish task {task} within {self.timeout:g} s")
        cycles = be.read(Reg.CYCLES_LO)
        cycles |= be.read(Reg.CYCLES_HI) << 32
        stalls = be.read(Reg.STALLS_LO)
        stalls |= be.read(Reg.STALLS_HI) << 32
        raw = np.frombuffer(be.read_memory(self.layout.output, self._output_bytes), dtype="<i2")
        raw = raw.reshape(self.bundle.output_shape).astype(np.int16)
        values = (raw.astype(np.float64) * self.bundle.output_scale).astype(np.float32)
        routing, layers = None, ()
        if self.bundle.routing is not None:
            routing = self._routing.decode(be.read_memory(self.layout.routing, self._routing.size))
            layers = tuple(self.bundle.routing["moe_layers"])
        return Features(int(task), raw, values, cycles, stalls, routing, layers)

    def soft_reset(self, timeout=None):
        """Stop whatever the accelerator does and return it to idle (CONTROL's soft-reset bit).

        Outstanding bus transfers finish first, so this returns once the memory has answered
        them; raises :class:`runtime.errors.AcceleratorTimeout` if it is not idle after
        ``timeout`` seconds (default: the frame timeout).
        """
        be = self.backend
        be.write(Reg.CONTROL, CONTROL_SOFT_RESET)
        deadline = be.clock() + (self.timeout if timeout is None else timeout)
        while be.read(Reg.STATUS) & STATUS_BUSY:
            if be.clock() > deadline:
                raise AcceleratorTimeout("the accelerator is still busy after a soft reset: is the bus wedged?")
            be.wait()

    def close(self):
        """Release the DRAM buffer and the simulation, if any."""
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
