"""The thesis' Tables 4.1-4.4 (its defense, NOTES.md C), beside which the defense job prints
ours. A study's own published numbers live with its search space (`search_spaces/<name>.py`,
the thesis' shared ones in `search_spaces/_tables/thesis.py`).

Values are as printed: AUROC / AUPR / TNR at 95% TPR as fractions, accuracies as fractions.
"""

from __future__ import annotations

from search_spaces._tables.thesis import THESIS

# Thesis Tables 4.1-4.4 (MNIST, APGD-CE, eps 8/255), by alpha.
TABLES_4_SOURCE = f"{THESIS}, Tables 4.1-4.4"
TABLES_4 = {
    2.0: {"detection": {"auroc": 1.0, "aupr": 1.0, "tnr95": 1.0, "accuracy": 0.922},
          "restored_accuracy": 0.481, "defense_accuracy": 0.608,
          "adaptive_defense_accuracy": 0.619},
    0.0: {"detection": {"auroc": 0.056, "aupr": 0.318, "tnr95": 0.0, "accuracy": 0.5},
          "restored_accuracy": 0.107, "defense_accuracy": 0.329,
          "adaptive_defense_accuracy": 0.331},
}
