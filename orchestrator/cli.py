"""What the command-line entry points share: the exit code and one-line report of bad input,
the radius parser, and the flags of the jobs on a sweep's trials (data, actor pool, resume,
W&B).

    python -m orchestrator.sweep | report | attack | langevin | defend
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from orchestrator.errors import (
    EXIT_NO_RESULTS,
    EXIT_UNFINISHED,
    EXIT_USAGE,
    NoResultsError,
    UsageError,
)
from orchestrator.interrupts import exit_code, interruptible


def usage_errors() -> tuple[type[Exception], ...]:
    """What a command reports in one line with EXIT_USAGE: bad input, found before or during
    the work (an impossible pool, an unknown attack, a missing dataset). Imported when an
    error is raised, not before: a command checks its input without loading torch or Ray
    (a typo costs a fraction of a second, not the ~4 s of those imports)."""
    from orchestrator.pools.base import PoolError
    from workloads.adversarial.attacks import AttackError
    from workloads.data import DatasetMissingError, DatasetUnreadableError

    return (UsageError, PoolError, AttackError, DatasetMissingError, DatasetUnreadableError)


def finite_float(text: str) -> float:
    """An argparse type: a float that is finite ("inf" and "nan" are bad input, exit 2)."""
    value = float(text)  # a ValueError is argparse's "invalid finite_float value"
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def resume_command(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """The command line that resumes this one (its arguments with `--resume`), or None for
    a command without `--resume`."""
    if "--resume" not in parser._option_string_actions:
        return None
    return shlex.join([*parser.prog.split(), *(a for a in argv if a != "--resume"),
                       "--resume"])


def _stop_ray() -> None:
    """Shut down the Ray this process started, if any, before a command's last line: its
    actors' last log lines (forwarded to the driver as they die) come before it, not
    after."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _last_line(parser: argparse.ArgumentParser, argv: list[str], what: str,
               resumable: str, otherwise: str) -> None:
    """A command's ending cut short, in one last line after its Ray is shut down: `what`
    happened, then `resumable` and the command that resumes it, or for a command without
    --resume `otherwise`."""
    _stop_ray()
    resume = resume_command(parser, argv)
    print(f"{parser.prog}: {what}; "
          + (f"{resumable} resume with: {resume}" if resume else otherwise),
          file=sys.stderr, flush=True)


def run_command(parser: argparse.ArgumentParser, main, argv: list[str] | None = None) -> int:
    """Parse, run `main(args)`, and turn bad input into one line and exit code 2. A pool
    whose actors kept dying ends with exit code 1 and a hint: its finished work is kept.
    Ctrl-C or SIGTERM (`orchestrator.interrupts`): a sweep winds down on the first and
    ends on its own; a job, or anything on a second signal, stops at once with one line,
    the command that resumes it and exit code 130 (SIGINT) or 143 (SIGTERM).
    `args.argv` holds the arguments as given (a command's resume advice repeats them)."""
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with interruptible() as received:
            try:
                return main(args)
            except KeyboardInterrupt:  # `Interrupted`, or the one Ray raises in its place
                pass
        # the signal that stopped it: the last (a sweep's second; a job's first)
        signum = received.signals[-1] if received.signals else signal.SIGINT
        _last_line(parser, args.argv, f"stopped by {signal.Signals(signum).name}",
                   "what finished is kept;", "run it again")
        return exit_code(signum)
    except NoResultsError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return EXIT_NO_RESULTS
    except Exception as error:
        if isinstance(error, UsageError) or isinstance(error, usage_errors()):
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {error.filename}" if error.filename else ""
            whole = ("every file written is whole (written under a temporary name, then "
                     "renamed): free space and")
            _last_line(parser, args.argv, f"no space left on the device{where}", whole,
                       f"{whole} run it again")
            return EXIT_UNFINISHED
        from ray.exceptions import RayActorError

        if not isinstance(error, RayActorError):
            raise
        first = (str(error).strip().splitlines() or [""])[0]
        print(f"{parser.prog}: error: an actor died more often than it is restarted "
              f"({first}); the finished units and chain checkpoints are kept, rerun with "
              f"--resume to continue", file=sys.stderr)
        return EXIT_UNFINISHED


def job_parser(command: str, doc: str, examples: list[str], sweep_help: str,
               preamble: str = "") -> argparse.ArgumentParser:
    """The parser of a job command `python -m orchestrator.<command>`: its description (the
    module docstring's first paragraph), `preamble` and examples below the help, and the
    sweep directory the job runs on."""
    prog = f"python -m orchestrator.{command}"
    parser = argparse.ArgumentParser(
        prog=prog, description=doc.split("\n\n")[0],
        epilog=preamble + "examples:\n" + "\n".join(f"  {prog} {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help=sweep_help)
    return parser


def parse_eps(text: str) -> float:
    """`0.031` or a fraction such as `8/255`."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 8/255, "
                                         f"got '{text}'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """--data-dir, the actor pool's resources, --resume and --wandb."""
    parser.add_argument("--data-dir", default=os.environ.get("ROBUSTNESS_DATA_DIR"),
                        help="where torchvision datasets live (default: $ROBUSTNESS_DATA_DIR, "
                             "else where the trial read them)")
    group = parser.add_argument_group("actor pool")
    group.add_argument("--num-actors", type=int, default=2,
                       help="Ray actors in the pool (default 2)")
    group.add_argument("--cpus-per-actor", type=finite_float, default=1,
                       help="CPUs per actor (default 1; its torch threads)")
    group.add_argument("--gpus-per-actor", type=finite_float, default=0,
                       help="GPUs per actor; fractions (0.25, 0.5) share a GPU (default 0)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the latest run of this job: reuse its finished units "
                             "and chain checkpoints")
    parser.add_argument("--wandb", choices=("offline", "online", "disabled"),
                        help="W&B mode (default: online with an API key, else offline)")


def pool_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The actor pool's resources from --num-actors, --cpus-per-actor, --gpus-per-actor,
    checked: keyword arguments of the pools (`AttackPool(model, **pool_args)`)."""
    from orchestrator.pools.base import actor_options

    if args.num_actors < 1:
        raise UsageError("--num-actors must be >= 1")
    actor_options(args.cpus_per_actor, args.gpus_per_actor)  # PoolError names the flag
    return {"num_actors": args.num_actors, "cpus_per_actor": args.cpus_per_actor,
            "gpus_per_actor": args.gpus_per_actor}
