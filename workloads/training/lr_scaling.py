"""Learning-rate scaling with batch size (NOTES.md A).

    none:   lr_B = lr_S
    sqrt:   lr_B = lr_S * sqrt(B / B_S)   (Hoffer et al. 2017)
    linear: lr_B = lr_S * B / B_S         (Goyal et al. 2017)

B is always the *global* batch size (all workers together); B_S is the reference batch size
at which `base_lr` was tuned.
"""

from __future__ import annotations

import math

LR_SCALING_RULES = ("none", "sqrt", "linear")


def scaled_lr(base_lr: float, batch_size: int, reference_batch_size: int,
              rule: str = "none") -> float:
    """The learning rate for global batch `batch_size` under `rule`."""
    if batch_size <= 0 or reference_batch_size <= 0:
        raise ValueError("batch sizes must be positive")
    ratio = batch_size / reference_batch_size
    if rule == "none":
        return base_lr
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    if rule == "linear":
        return base_lr * ratio
    raise ValueError(f"unknown lr scaling rule '{rule}'; known: {', '.join(LR_SCALING_RULES)}")
