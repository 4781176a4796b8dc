"""How a sweep's fit ended, as Tune saw it: which trials had not ended when it did.

`Tuner.fit()` returns normally after Ctrl-C (Ray Tune's own SIGINT handler ends the
experiment and saves its state), and neither a trial's last report nor its final Tune
status says whether Tune ended it: a trial ASHA stopped and one still running at the
interrupt both last reported `status: "running"`, and Tune's clean-up marks every trial
TERMINATED at the end. What tells them apart is whether Tune ended the trial itself: it
calls a callback's `on_trial_complete` (or `on_trial_error`) for every trial it stops or
that returns or fails, but not for those its clean-up stops. A fit that ends with such
trials was interrupted, and a search's files (best.json, search.md) are then not written
as if the search were whole.

`TrialEndings` is a Tune callback (only hooks `ray.tune.Callback` defines). Tune pickles
callbacks with the experiment and a resumed sweep gets an unpickled copy, so what the
callback saw is kept per experiment in the process (`unfinished`), not on the instance.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

_UNFINISHED: dict[str, list[str]] = {}  # experiment name -> trial ids not ended at its end
ENDED = ("TERMINATED", "ERROR")


class TrialEndings(Callback):
    def __init__(self, experiment: str):
        self.experiment = experiment
        self._ended: set[str] | None = None  # trials that ended (None: no step seen yet)

    def __getstate__(self):  # pickled with the experiment: the setting only
        return {"experiment": self.experiment}

    def __setstate__(self, state):
        self.__init__(**state)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._seen(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._seen(trials).add(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._seen(trials).add(trial.trial_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._ended is None:  # no step: nothing ran, nothing was stopped by clean-up
            _UNFINISHED[self.experiment] = [t.trial_id for t in trials if t.status not in ENDED]
            return
        _UNFINISHED[self.experiment] = [t.trial_id for t in trials
                                        if t.trial_id not in self._ended]

    def _seen(self, trials: list) -> set[str]:
        """The trials that ended; first called before any of this run's trials ended, it
        starts with those a resumed experiment had finished before."""
        if self._ended is None:
            self._ended = {t.trial_id for t in trials if t.status in ENDED}
        return self._ended


def unfinished(experiment: str) -> list[str] | None:
    """The ids of the trials of `experiment` that Tune had not ended when its fit ended (an
    interrupted fit); None when the fit's end was not seen (Tune itself failed)."""
    return _UNFINISHED.get(experiment)
