"""What can go wrong when running the accelerator; each error's message is one line for the user."""

__all__ = ["AcceleratorError", "BundleError", "BuildMismatchError", "AcceleratorTimeout", "AcceleratorFault",
           "InputError"]


class AcceleratorError(RuntimeError):
    """Base of the runtime's errors: the accelerator, a bundle or an input could not be used."""


class BundleError(AcceleratorError):
    """A bundle is missing, unreadable, corrupt or truncated."""


class BuildMismatchError(AcceleratorError):
    """The bundle was compiled for another accelerator build than the one present."""


class AcceleratorTimeout(AcceleratorError):
    """The accelerator did not finish a frame in time, or stopped without finishing."""


class AcceleratorFault(AcceleratorError):
    """The accelerator stopped a frame on an error it reports (a bus error, its watchdog).

    Attributes
    ----------
    code : int
        The ERROR_CODE register (``runtime.regs.ErrorCode``).
    addr : int
        The ERROR_ADDR register: the failing burst's bus address, for bus errors.
    """

    def __init__(self, message, code, addr):
        super().__init__(message)
        self.code, self.addr = code, addr


class InputError(AcceleratorError, ValueError):
    """A task or image the bundle's model cannot take."""
