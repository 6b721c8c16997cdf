"""Progress of long commands on stderr: one line per stage, on a terminal or not.

On a terminal each stage is a tqdm line that counts simulated cycles as they pass (and the time
spent) and stays when the stage ends; elsewhere (a log, a pipe, CI) each stage is one plain line,
its name when it starts and its time when it ends, so a log shows where a long run is without
carriage-return noise. Results stay on stdout.
"""

import sys
import time
from contextlib import contextmanager

__all__ = ["Progress"]


class Progress:
    """Stages of one command.

    Parameters
    ----------
    file : text stream, optional
        Where the lines go; stderr by default.
    """

    def __init__(self, file=None):
        self.file = file or sys.stderr
        self.tty = self.file.isatty()
        self._bar = None

    @contextmanager
    def stage(self, what, simulates=False):
        """Run the body as the stage ``what``; in a stage that ``simulates``, ``cycles`` reports
        the simulated cycles."""
        start = time.perf_counter()
        if self.tty:
            from tqdm import tqdm

            shown = "{desc}: {n_fmt}{unit} in {elapsed} ({rate_fmt})" if simulates else "{desc}: {elapsed}"
            self._bar = tqdm(desc=what, unit=" cycles", unit_scale=True, file=self.file, dynamic_ncols=True,
                             bar_format=shown)
        else:
            print(f"{what} ...", end="", file=self.file, flush=True)
        ok = False
        try:
            yield self
            ok = True
        finally:
            seconds = time.perf_counter() - start
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            else:
                print(f" {'done' if ok else 'failed'} in {seconds:.1f} s", file=self.file, flush=True)

    def cycles(self, count):
        """The stage's simulation has reached ``count`` cycles (shown on a terminal only)."""
        if self._bar is not None:
            self._bar.update(count - self._bar.n)
