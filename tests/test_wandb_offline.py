"""The offline-run reader against a run written by the real wandb SDK (offline mode)."""

import subprocess
import sys

from orchestrator.tracking.offline import find_offline_runs, read_offline_run


def test_reader_recovers_config_history_and_summary(tmp_path, sweep_env):
    script = (
        "import wandb\n"
        "run = wandb.init(project='p', group='g1', config={'batch_size': 8, 'model': 'gffn'},"
        f" dir={str(tmp_path)!r})\n"
        "for epoch in range(40):\n"
        "    run.log({'epoch': epoch, 'loss': 1.0 / (epoch + 1), 'pad': 'x' * 2000})\n"
        "run.summary['test_acc'] = 0.75\n"
        "run.finish()\n")
    subprocess.run([sys.executable, "-c", script], check=True, env=sweep_env, timeout=120)
    runs = find_offline_runs(tmp_path)
    assert len(runs) == 1
    run = read_offline_run(runs[0])
    assert run.group == "g1" and run.project == "p"
    assert run.config["batch_size"] == 8 and run.config["model"] == "gffn"
    assert [row["epoch"] for row in run.history] == list(range(40))  # spans 32 KiB blocks
    assert run.summary["loss"] == 1.0 / 40
    assert run.summary["test_acc"] == 0.75


def test_the_sweeps_end_waits_for_wandb_at_most_its_limit_and_says_how_far_it_is():
    """The W&B thread's queue drained: True at once when the work finishes; with work that
    outlasts the limit, progress lines while waiting and False at the limit (the old end
    joined the thread without a bound or a word)."""
    import queue
    import threading
    import time

    from orchestrator.tracking.runs import drain

    work: queue.Queue = queue.Queue()
    release = threading.Event()

    def worker():
        while (item := work.get()) is not None:
            item()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    for _ in range(3):
        work.put(lambda: release.wait(60))
    work.put(None)
    said: list[str] = []
    started = time.monotonic()
    assert drain(thread, work, limit=1.0, every=0.25, say=said.append) is False
    assert 1.0 <= time.monotonic() - started < 10
    assert any("finishing the trial runs" in line for line in said[:-1])
    assert "gave up" in said[-1] and "ROBUSTNESS_WANDB_DRAIN_S" in said[-1]
    release.set()
    assert drain(thread, work, limit=60.0, every=0.25, say=said.append) is True
