"""Running the ``m3vit`` command from tests, as a user would: a fresh process."""

import subprocess
import sys

__all__ = ["run_m3vit"]


def run_m3vit(*args, timeout=600, env=None):
    """Run ``m3vit ARGS...`` (as ``python -m cli``, with ``env`` if given) and return the completed process."""
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)
