"""Are in- and out-of-distribution inputs linearly separable in a representation? Document
002's test (section 3.3.7, Table 3.1, Fig. 3.9): a linear SVM trained to tell ID latent codes
(positive) from OOD ones (negative), its accuracy on held-out codes of each class. The document
compares it with "direct separation on random projections of raw pixel space", and with two
samples of the ID distribution (train vs test), which should not separate."""

from __future__ import annotations

import numpy as np
import torch


def linear_separability(positive: torch.Tensor | np.ndarray, negative: torch.Tensor | np.ndarray,
                        test_fraction: float = 0.5, seed: int = 0) -> dict[str, float]:
    """Train a linear SVM (scikit-learn `LinearSVC`, C = 1, on standardised codes) on a
    stratified `1 - test_fraction` of equally many positive and negative codes; return
    `pos_acc` and `neg_acc`, its accuracy on the held-out positives and negatives (document
    002, Table 3.1's "Pos. Acc." and "Neg. Acc."), and `n` the codes per class."""
    # scikit-learn imported on use: every trial process imports this module (start-up time)
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    n = min(len(pos), len(neg))
    if n < 4:
        raise ValueError(f"need at least 4 codes per class, got {len(pos)} and {len(neg)}")
    x = np.concatenate([pos[:n], neg[:n]]).reshape(2 * n, -1)
    y = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed)
    svm = make_pipeline(StandardScaler(), LinearSVC(C=1.0, max_iter=20000, random_state=seed))
    predicted = svm.fit(x_train, y_train).predict(x_test)
    return {"pos_acc": float((predicted[y_test == 1] == 1).mean()),
            "neg_acc": float((predicted[y_test == 0] == 0).mean()), "n": n}


def random_projection(x: torch.Tensor, dim: int, seed: int = 0) -> torch.Tensor:
    """x flattened and multiplied by a fixed Gaussian matrix to `dim` values: the raw-pixel
    control of document 002 (section 3.3.7)."""
    flat = x.reshape(len(x), -1).double()
    matrix = torch.randn(flat.shape[1], dim, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64)
    return (flat @ matrix / flat.shape[1] ** 0.5).float()
