"""How a sweep's fit ended, as Tune saw it: the trials' statuses when the experiment ended.

`Tuner.fit()` returns normally after Ctrl-C (Ray Tune's own SIGINT handler ends the
experiment and saves its state), and a trial's last report does not say whether Tune ended
it: a trial ASHA stopped and one still running at the interrupt both last reported
`status: "running"`. Tune's trial status does: a fit that ends with trials neither
TERMINATED nor ERROR was interrupted, and a search's files (best.json, search.md) are then
not written as if the search were whole.

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

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        _UNFINISHED[self.experiment] = [t.trial_id for t in trials if t.status not in ENDED]


def unfinished(experiment: str) -> list[str] | None:
    """The ids of the trials of `experiment` that had not ended when its fit ended (an
    interrupted fit); None when the fit's end was not seen (Tune itself failed)."""
    return _UNFINISHED.get(experiment)
