"""The test suite's own helpers, where a wrong one would hide a failure."""

import subprocess
import sys

import pytest
from conftest import run_captured

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
