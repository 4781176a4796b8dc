"""Per-example outputs: one row per input a final stage (or a job) scored, so that any metric
can be recomputed, two detectors compared paired on the same inputs, and intervals drawn over
the test inputs after the fact (`workloads.evaluation.resampling`).

    examples = Examples(data)                 # the test split's labels and indices
    classifier_test_metrics(model, data, examples=examples)   # prediction, correct, ...
    evaluate_ood(model, data, scores, examples=examples)      # score_<name> per split
    frame = examples.frame()                  # a DataFrame; a sweep keeps it as parquet

Schema (one row per input; `EXAMPLE_COLUMNS` are always there):

- `split` (str): "test" (the ID test split) or the OOD set's name;
- `index` (int64): for "test", the input's index in the dataset as loaded (digits: its row
  in scikit-learn's array; an image dataset: its index in the test files), else its
  position in the OOD set. Equal indices are the same input in every trial of a data_seed;
- `label` (int64): the class, -1 for OOD inputs;
- `prediction` (int64): the classifier's argmax, -1 for OOD inputs or without a classifier;
- `correct` (bool): prediction == label (False for OOD inputs);
- `confidence` (float): the classifier's max softmax probability (NaN without one);
- `nll` (float): -log p(label | x) (NaN for OOD inputs or without a classifier);
- `compared_with` (int64): on an OOD set's rows, how many test inputs (the first ones) it
  was compared with (its own count where balanced; all of them where not); -1 on "test";
- `score_<name>` (float): each score the stage computed, higher = more in-distribution
  or more confident (NaN where not computed: an OOD set is scored on its first n inputs);
- `prediction_<name>` (int64): a score's own prediction where it has one (MC dropout's
  averaged prediction); failure prediction is then of its errors.

Floats are float32 where that holds every value exactly (a model's outputs are float32),
else float64: every metric recomputes from the file exactly as the stage computed it.
A sweep writes every trial's rows to `results/examples.parquet`, with `trial_id`:
`pandas.read_parquet("SWEEP_DIR/results/examples.parquet")`.

Jobs add: the detector evaluation (`attack --target ood`, `evaluate`: `examples.parquet`
in the job's directory; `workloads.evaluation.detector_evaluation`) scores the first n test
inputs and the first n of each OOD set (every OOD set compared with all n: `compared_with`
n) and adds, per attacked detector and eps, `score_<name>_attacked_eps<eps>` (eps to 6
significant digits, e.g. `score_msp_attacked_eps0.00392157`): the score at the input after
APGD on that score within eps, on "test" rows the ID input pushed down (to look OOD), on an
OOD set's rows the OOD input pushed up (to look ID); NaN where not attacked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from workloads.data import Dataset

if TYPE_CHECKING:
    import pandas as pd

TEST = "test"
EXAMPLE_COLUMNS = ("split", "index", "label", "prediction", "correct", "confidence", "nll",
                   "compared_with")
SCORE_PREFIX, PREDICTION_PREFIX = "score_", "prediction_"
EXAMPLES = "examples"  # a final stage's artifact: the frame (written as examples.parquet)


class Examples:
    """Per-example outputs of one trained model, gathered as a stage computes them."""

    def __init__(self, data: Dataset):
        self.data = data
        self._columns: dict[str, dict[str, np.ndarray]] = {
            TEST: {"index": test_indices(data), "label": data.y_test.cpu().numpy()}}
        self._sizes: dict[str, int] = {TEST: len(data.x_test)}
        self._compared: dict[str, int] = {}

    def _split(self, split: str, n: int) -> dict[str, np.ndarray]:
        if split not in self._columns:
            self._columns[split] = {}
        self._sizes[split] = max(self._sizes.get(split, 0), n)
        return self._columns[split]

    def record_logits(self, logits: torch.Tensor, prefix: str = "") -> None:
        """The classifier's outputs on the test split: prediction, correct, confidence, nll
        (with `prefix`, those of another model scored on the same inputs: `<prefix>correct`)."""
        logits = logits.detach().cpu()
        confidence, prediction = logits.softmax(dim=1).max(dim=1)  # as the ECE bins them
        labels = self.data.y_test.cpu()
        columns = self._split(TEST, len(logits))
        nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        columns.update({f"{prefix}prediction": prediction.numpy(),
                        f"{prefix}correct": (prediction == labels).numpy(),
                        f"{prefix}confidence": confidence.numpy(),
                        f"{prefix}nll": nll.numpy()})

    def record_score(self, split: str, name: str, values, compared_with: int = -1) -> None:
        """A score's values on the first len(values) inputs of `split` (higher = more ID);
        an OOD set's `compared_with`: how many test inputs (the first) it is compared with."""
        values = np.asarray(values, dtype=np.float64).ravel()
        self._split(split, len(values))[SCORE_PREFIX + name] = values
        if split != TEST:
            self._compared[split] = compared_with

    def record_prediction(self, name: str, predictions) -> None:
        """A score's own predictions on the test split (its errors are what it predicts)."""
        predictions = np.asarray(predictions, dtype=np.int64).ravel()
        self._split(TEST, len(predictions))[PREDICTION_PREFIX + name] = predictions

    def frame(self) -> pd.DataFrame:
        """One row per input of each split, the columns of the module's schema."""
        import pandas as pd

        names = list(dict.fromkeys(
            c for columns in self._columns.values() for c in columns
            if c not in ("index", "label")))
        parts = []
        for split, n in self._sizes.items():
            columns = self._columns[split]
            part = {"split": np.full(n, split, dtype=object),
                    "index": columns.get("index", np.arange(n)).astype(np.int64)[:n],
                    "label": columns.get("label", np.full(n, -1)).astype(np.int64)[:n]}
            part["compared_with"] = np.full(n, self._compared.get(split, -1), dtype=np.int64)
            for name in ("prediction", "correct", "confidence", "nll", *names):
                part[name] = _padded(columns.get(name), n, name)
            parts.append(pd.DataFrame(part))
        frame = pd.concat(parts, ignore_index=True)
        frame["split"] = frame["split"].astype(str)
        return frame


def _padded(values: np.ndarray | None, n: int, name: str) -> np.ndarray:
    """`values` to length n: NaN (or -1 / False) where an input was not scored."""
    scored = name.startswith(SCORE_PREFIX)  # a score is a float, whatever its name
    integer = not scored and (name.endswith("prediction") or name.startswith(PREDICTION_PREFIX))
    boolean = not scored and name.endswith("correct")
    fill = -1 if integer else False if boolean else np.nan
    dtype = np.int64 if integer else bool if boolean else np.float64
    out = np.full(n, fill, dtype=dtype)
    if values is not None:
        out[:len(values)] = np.asarray(values)[:n]
    if dtype is np.float64 and np.array_equal(out.astype(np.float32), out, equal_nan=True):
        return out.astype(np.float32)  # lossless: the values were float32
    return out


def test_indices(data: Dataset) -> np.ndarray:
    """The test inputs' indices in the dataset as loaded (`Dataset.test_index`; without
    one, their positions in the test split)."""
    index = getattr(data, "test_index", None)
    return np.arange(len(data.x_test)) if index is None else np.asarray(index, dtype=np.int64)
