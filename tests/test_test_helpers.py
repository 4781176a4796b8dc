"""The test suite's own helpers, where a wrong one would hide a failure."""

import subprocess
import sys

import pytest
from conftest import command_in_process, run_captured, subprocess_env

HANGS = """
import subprocess, sys, time
def parent_waits_here():
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\\n"
        "def child_waits_here():\\n    print('ready', flush=True)\\n    time.sleep(600)\\n"
        "child_waits_here()"], stdout=subprocess.PIPE, text=True)
    child.stdout.readline()  # the child is in child_waits_here
    print("x" * 3 + "-output-" + "y" * 3, flush=True)
    time.sleep(600)
parent_waits_here()
"""


def test_a_command_past_its_timeout_leaves_the_stacks_of_its_whole_tree(capsys):
    with pytest.raises(subprocess.TimeoutExpired):
        run_captured([sys.executable, "-c", HANGS], env=None, timeout=10)
    printed = capsys.readouterr().out
    assert "parent_waits_here" in printed  # the command itself
    assert "child_waits_here" in printed  # and its descendant
    assert "xxx-output-yyy" in printed  # its output's tail


def test_a_command_in_time_is_subprocess_run():
    proc = run_captured([sys.executable, "-c", "import sys; print('out'); "
                         "print('err', file=sys.stderr); sys.exit(3)"], env=None, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")


@pytest.mark.parametrize("args", [["batch_size_gffn", "--set", "foo=1"],
                                  ["batch_size_gffn", "--profile", "huge"],
                                  ["no_such_sweep"], ["--list"]])
def test_a_command_in_process_prints_and_exits_as_its_process_does(tmp_path, args):
    env = subprocess_env(tmp_path, str(tmp_path))
    alone = subprocess.run([sys.executable, "-m", "orchestrator.sweep", *args],
                           capture_output=True, text=True, env=env, timeout=120)
    here = command_in_process("sweep", *args, env=env)
    assert (here.returncode, here.stdout, here.stderr) == \
        (alone.returncode, alone.stdout, alone.stderr)


def test_a_command_in_process_shows_an_escaped_error_and_restores_env_and_cwd(
        tmp_path, monkeypatch):
    import os
    from pathlib import Path

    import orchestrator.sweep

    def crash(args):
        assert os.environ == {"ONLY": "this"} and Path.cwd() == tmp_path
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(orchestrator.sweep, "main", crash)
    env, cwd = dict(os.environ), Path.cwd()
    proc = command_in_process("sweep", "x", env={"ONLY": "this"}, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RuntimeError: a bug, not bad input" in proc.stderr
    assert dict(os.environ) == env and Path.cwd() == cwd
