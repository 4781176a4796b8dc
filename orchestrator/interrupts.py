"""How a command ends on Ctrl-C (SIGINT) or SIGTERM (what `timeout`, a cluster scheduler or
`kill` sends): truthfully, resumable, with the shell's exit code for the signal (128 + its
number: 130, 143).

A sweep asks Tune to stop on the first signal (`stop_tune`: Tune saves its experiment state
and ends the fit; the sweep then writes what its trials reported, marks the unfinished ones
`interrupted` and prints the command that resumes it). A job has nothing to wind down: its
finished units are on disk, so the first signal stops it at once. For either, a second
signal stops at once (`Interrupted`), still leaving a resumable run: Tune's experiment
state and a job's units are written as they finish, each file whole (`atomic_write`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A command stopped at once by a signal (a job's first, or a sweep's second). A
    KeyboardInterrupt: Ray's blocking calls (`ray.wait`, `ray.get`) turn a KeyboardInterrupt
    raised while they wait into one of their own, and any other exception into a
    SystemError; the signal itself is in the block's `Received`."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


def exit_code(signum: int) -> int:
    """The shell's exit status of a command ended by signal `signum`: 130 for SIGINT, 143
    for SIGTERM."""
    return 128 + int(signum)


class Received:
    """The signals a command received, in order (`first`: the one that ended it)."""

    def __init__(self):
        self.signals: list[int] = []

    @property
    def first(self) -> int | None:
        return self.signals[0] if self.signals else None


def stop_tune(signum: int = signal.SIGINT) -> bool:
    """Ask a running `Tuner.fit()` to stop as after Ctrl-C: Tune saves the experiment's
    state and returns. Tune listens on SIGUSR1 while it fits (`ray.tune.tune.
    _setup_signal_catching`); False when it is not fitting (nothing listens)."""
    if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
        return False
    os.kill(os.getpid(), signal.SIGUSR1)
    return True


_ACTIVE: list = []  # the handler of the innermost `interruptible` block, and its Received


@contextmanager
def interruptible(first: Callable[[int], bool] | None = stop_tune) -> Iterator[Received]:
    """Within the block, SIGINT and SIGTERM are recorded (the `Received` it yields); the
    first calls `first(signum)` (default `stop_tune`: a fitting sweep winds down), and
    raises `Interrupted` when there is no `first` or it returns False (a job, or a sweep
    not yet fitting); a second raises `Interrupted` at once. The handlers before the block
    are put back after it. A sweep disables Tune's own SIGINT handler
    (`TUNE_DISABLE_SIGINT_HANDLER`) so that this one decides, for both signals alike."""
    received = Received()

    def handle(signum, frame):
        received.signals.append(signum)
        if len(received.signals) > 1 or first is None or not first(signum):
            raise Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _ACTIVE.append((handle, received))
    reinstall()
    try:
        yield received
    finally:
        _ACTIVE.pop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def reinstall() -> None:
    """Put the active block's handler back on SIGINT and SIGTERM: `ray.init` sets its own
    SIGTERM handler on the driver (it exits at once, losing the ending), so a command calls
    this after it."""
    if _ACTIVE:
        for s in SIGNALS:
            signal.signal(s, _ACTIVE[-1][0])


def first_signal() -> int | None:
    """The first signal the active block received (None: none, or no block)."""
    return _ACTIVE[-1][1].first if _ACTIVE else None


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write `path` whole or not at all: to a temporary name beside it, then renamed (a
    full disk or a kill mid-write leaves the old file, or none, never a truncated one)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as stream:
            stream.write(data.encode() if isinstance(data, str) else data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:  # named by the file meant, not the temporary one
        raise OSError(error.errno, error.strerror, str(path)) from None
    finally:
        temporary.unlink(missing_ok=True)
