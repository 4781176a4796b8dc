"""A Ray Train run inside a Tune trial (the sweep's DDP path): every report of the run,
forwarded as `ForwardReports` does, reaches Tune in order, the final one last, and the trial
ends. Through a real Tune run on a local Ray, in a subprocess with a time limit (a trial that
hangs must fail the test, not stall it)."""

import subprocess
import sys

SCRIPT = """
import sys, tempfile, time
import ray, torch  # torch: the session checks each report for tensors
from ray import tune
from ray.util.queue import Queue
from orchestrator.tune.trainable import fit_reporting_to_tune

def trainable(config):
    reports = Queue(1, actor_options={"num_cpus": 0})  # as the trainable makes it

    def fit():  # what a Train run's controller does through ForwardReports
        for step in range(3):
            reports.put({"step": step})
        return "fitted"

    assert fit_reporting_to_tune(fit, reports) == "fitted"
    # a large final report: slow for the session to take in (the old way's window)
    tune.report({"step": 99, **{f"k{i}": i for i in range(20_000)}})

ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
results = tune.Tuner(trainable, tune_config=tune.TuneConfig(num_samples=2),
                     run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(),
                                               verbose=0)).fit()
for result in results:
    print("steps", list(result.metrics_dataframe.step))
"""


def test_every_report_of_a_train_run_reaches_tune_the_final_last_and_the_trial_ends(
        sweep_env):
    """The old way (Ray's TuneReportCallback, whose items the session's main thread reports
    itself, and the final report through the same queue) hung on this final report: the
    function ended while the session was still taking it in, the function's end-of-run
    report filled the one-item result queue first, and the session blocked on its own put
    (as seen in CI on the two-worker sweep; with a final of 1,000,000 keys it hung every
    time). Before that, `tune.report(final)` with a report still queued hung the same way."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=sweep_env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("steps")]
    assert lines == ["steps [0, 1, 2, 99]"] * 2, proc.stdout[-2000:]


def test_an_error_of_the_train_run_is_the_trials_error():
    from orchestrator.tune.trainable import fit_reporting_to_tune

    class Reports:  # what the loop asks of the queue when no report comes
        def get(self, timeout):
            from ray.util.queue import Empty

            raise Empty

    def fit():
        raise RuntimeError("a worker group failed")

    import pytest

    with pytest.raises(RuntimeError, match="a worker group failed"):
        fit_reporting_to_tune(fit, Reports())
