"""A Ray Train run inside a Tune trial (the sweep's DDP path): the run's reports, forwarded
through the trial session's one-item queue as `TuneReportCallback` does, all reach Tune, the
final one last, and the trial ends. Through a real Tune run on a local Ray, in a subprocess
with a time limit (a trial that hangs must fail the test, not stall it)."""

import subprocess
import sys

SCRIPT = """
import sys, tempfile
import ray
from ray import tune
from orchestrator.tune.trainable import report_after_fit

def trainable(config):
    from ray.train._internal.session import get_session
    queue = get_session()._get_or_create_inter_actor_queue()
    for step in range(3):  # what TuneReportCallback leaves queued when fit() returns
        queue.put({"step": step})
    report_after_fit({"step": 99})

ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
results = tune.Tuner(trainable, tune_config=tune.TuneConfig(num_samples=2),
                     run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(),
                                               verbose=0)).fit()
for result in results:
    print("steps", list(result.metrics_dataframe.step))
"""


def test_the_final_report_after_a_queued_one_reaches_tune_and_the_trial_ends(sweep_env):
    # The old way, `tune.report(final)` from the function with a report still queued,
    # hung here every time: the session took the queued one and blocked putting it into
    # the result queue that tune.report had filled.
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=sweep_env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("steps")]
    assert lines == ["steps [0, 1, 2, 99]"] * 2, proc.stdout[-2000:]
