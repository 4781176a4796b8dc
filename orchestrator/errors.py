"""The error of bad input, shared by every layer that checks what a user asked, and the exit
codes of the commands."""

EXIT_UNFINISHED = 1  # some trials (or units) did not finish: rerun with --resume
EXIT_USAGE = 2       # bad input, one line, no traceback
EXIT_NO_RESULTS = 3  # nothing to show: no trial of the sweep completed (all diverged or failed)



def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (empty for an error without one), cut to
    `limit` characters: what a one-line report of it shows."""
    return (str(error).strip().splitlines() or [""])[0][:limit]


class UsageError(ValueError):
    """Bad input to a command (a flag, a key, a file, a directory): the command prints one
    line naming it and exits with code 2, with no traceback (`orchestrator.cli`)."""


class NoResultsError(RuntimeError):
    """A sweep with no completed trial, given to a command that needs one (a report, a job
    on its checkpoints): one line and exit code 3 (`EXIT_NO_RESULTS`)."""
