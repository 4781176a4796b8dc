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
