"""The error of bad input, shared by every layer that checks what a user asked."""


class UsageError(ValueError):
    """Bad input to a command (a flag, a key, a file, a directory): the command prints one
    line naming it and exits with code 2, with no traceback (`orchestrator.cli`)."""
