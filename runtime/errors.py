"""What can go wrong when running the accelerator; each error's message is one line for the user."""

__all__ = ["AcceleratorError", "BundleError", "BuildMismatchError", "AcceleratorTimeout", "InputError"]


class AcceleratorError(RuntimeError):
    """Base of the runtime's errors: the accelerator, a bundle or an input could not be used."""


class BundleError(AcceleratorError):
    """A bundle is missing, unreadable, corrupt or truncated."""


class BuildMismatchError(AcceleratorError):
    """The bundle was compiled for another accelerator build than the one present."""


class AcceleratorTimeout(AcceleratorError):
    """The accelerator did not finish a frame in time, or stopped without finishing."""


class InputError(AcceleratorError, ValueError):
    """A task or image the bundle's model cannot take."""
