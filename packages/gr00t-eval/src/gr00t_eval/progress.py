"""Progress bars and log lines that share the console: no bar where the console is a log file (CI), and log
records written between bar redraws instead of onto the bar's line."""

from __future__ import annotations

import logging
import sys


def bar_options() -> dict:
    """tqdm keyword arguments for a command's progress bar: none where stderr is not a terminal (a CI log got a bar
    line per episode and log lines glued onto them; the commands print their outcome in plain lines anyway)."""
    try:
        interactive = sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        interactive = False
    return {"disable": not interactive, "mininterval": 0.5}


class BarAwareHandler(logging.StreamHandler):
    """A stderr handler that writes through tqdm.write, which clears a live bar first and redraws it after: an
    episode's error line used to land on the bar's own line (`...success=0.83]ERROR:...`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)
