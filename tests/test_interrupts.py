"""Ctrl-C and SIGTERM end a command truthfully (orchestrator/interrupts.py, cli.run_command):
real signals to real processes, each waited for on a condition (the process says it is
ready), never a sleep."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.interrupts import atomic_write, exit_code

JOB = textwrap.dedent("""
    import argparse, sys, time
    from orchestrator.cli import run_command

    def main(args):
        if args.winds_down:  # a sweep's fit: Tune listens on SIGUSR1 to stop
            import signal
            signal.signal(signal.SIGUSR1, lambda *a: print("winding down", flush=True))
        print("ready", flush=True)
        while True:
            time.sleep(0.05)

    parser = argparse.ArgumentParser(prog="python -m orchestrator.attack")
    parser.add_argument("sweep_dir")
    parser.add_argument("--winds-down", action="store_true")
    parser.add_argument("--resume", action="store_true")
    sys.exit(run_command(parser, main))
""")


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    process = subprocess.Popen([sys.executable, str(script), "SWEEP", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).parents[1])
    assert process.stdout.readline().strip() == "ready"  # waits until the handler is set
    return process


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_job_stops_at_once_with_the_signals_exit_code_and_how_to_resume(tmp_path, signum):
    job = start(tmp_path)
    job.send_signal(signum)
    out, err = job.communicate(timeout=60)
    assert job.returncode == exit_code(signum) == {signal.SIGINT: 130,
                                                   signal.SIGTERM: 143}[signum]
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    name = signal.Signals(signum).name
    assert line == (f"python -m orchestrator.attack: stopped by {name}; what finished is "
                    f"kept; resume with: python -m orchestrator.attack SWEEP --resume")


def test_a_sweep_winds_down_on_the_first_signal_and_stops_on_the_second(tmp_path):
    job = start(tmp_path, "--winds-down")
    job.send_signal(signal.SIGTERM)
    assert job.stdout.readline().strip() == "winding down"  # asked Tune to stop, still runs
    assert job.poll() is None
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 130 and "stopped by SIGINT" in err and "Traceback" not in err


def test_a_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write(path, "old")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("os.fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, "new and longer")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [path.name]
