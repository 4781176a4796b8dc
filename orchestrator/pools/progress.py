"""The progress line of a pool job, on stderr."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

ProgressFn = Callable[[dict[str, Any]], None]


class Progress:
    """A progress line on stderr: redrawn in place on a terminal, otherwise printed every
    `interval` seconds (and at the end) so that logs stay readable."""

    def __init__(self, label: str, interval: float = 10.0, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval
        self.started = time.perf_counter()
        self._last = -math.inf
        self._text = ""

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def update(self, text: str, fraction: float | None = None, force: bool = False) -> None:
        """Show `text`, after a bar filled to `fraction` (0..1) when given."""
        if fraction is not None:
            filled = int(round(20 * min(max(fraction, 0.0), 1.0)))
            text = f"[{'#' * filled}{'.' * (20 - filled)}] {fraction:4.0%} {text}"
        self._text = text
        now = time.perf_counter()
        if self.tty:
            print(f"\r[{self.label}] {text}\033[K", end="", file=self.stream, flush=True)
        elif force or now - self._last >= self.interval:
            print(f"[{self.label}] {text}", file=self.stream, flush=True)
            self._last = now

    def close(self) -> None:
        if self.tty and self._text:
            print(file=self.stream, flush=True)


def eta_text(seconds: float) -> str:
    """`, ETA 1m05s` for the remaining `seconds` ("" when unknown or none)."""
    if not math.isfinite(seconds) or seconds <= 0:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes \
        else f"{secs}s"
    return f", ETA {text}"
