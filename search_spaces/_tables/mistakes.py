"""Mistake detection (document 003 section 4.1; failure prediction in document 001): the
result table of the `mistakes` rows a final stage leaves (trial x score), with its bars."""

from __future__ import annotations

from search_spaces import ResultTable, ScoreBars
from search_spaces._tables.cells import mean_std

MISTAKES = ResultTable(
    name="mistakes",
    title="mistake detection",
    note="Correct vs wrong test predictions, scored by each detector (higher = more "
         "confident; errors are the positive class of AUPR-error). FPR95-success: the "
         "fraction of errors accepted where 95% of the successes are kept (Corbière et "
         "al.'s FPR-95%-TPR); FPR95-error: the fraction of successes flagged where 95% of "
         "the errors are caught. Mean ± std over {seeds} seed(s). The p-value is the "
         "one-sided Mann-Whitney U test that correct predictions score higher (003: p = "
         "1.9e-13 for GMM-100 on CIFAR-100).",
    by=("score",),
    columns={
        "wrong / all": lambda g: f"{g.n_wrong.mean():.0f} / "
                                 f"{(g.n_wrong + g.n_correct).mean():.0f}",
        "AUROC": lambda g: mean_std(g.auroc),
        "AUPR-success": lambda g: mean_std(g.aupr_success),
        "AUPR-error": lambda g: mean_std(g.aupr_error),
        "FPR95-success": lambda g: mean_std(g.fpr95_success),
        "FPR95-error": lambda g: mean_std(g.fpr95_error),
        "Mann-Whitney p (max)": lambda g: f"{g.mw_p.max():.2g}",
    },
    plot=ScoreBars(metrics=(("auroc", "AUROC"), ("aupr_error", "AUPR-error")),
                   title="Mistake detection: correct vs wrong test predictions"),
)
