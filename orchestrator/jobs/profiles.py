"""The defense's protocol sizes (thesis ch. 4, NOTES.md C): smoke, local and paper."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DefenseProfile:
    description: str
    val_fraction: float = 0.2          # of the test set, for the thresholds
    n_test: int | None = 1000          # the rest of the test set is cut to this
    n_val: int | None = None           # cut the validation set too (smoke only)
    eps: float = 8 / 255               # APGD-CE radius = the projection radius
    attack_batch_size: int = 100
    # CE - lambda * AM; the thesis states no lambda, and AM (hundreds on digits) outweighs
    # CE (a few nats) at lambda 1, so a grid: Table 4.4 reports the worst lambda.
    adaptive_lams: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)
    adaptive_steps: int = 100          # APGD iterations of the adaptive attack
    steps: int = 2000                  # Langevin steps per chain (thesis: 1e6)
    eta: float = 1e-3
    checkpoint_every: int = 500        # K
    record_every: int = 50
    chains_per_unit: int = 256
    am_candidates: int = 24            # early-stop values probed on validation
    seed: int = 0


PROFILES = {
    "smoke": DefenseProfile("seconds: 24 validation / 40 test inputs, 20-step chains",
                            n_test=40, n_val=24, adaptive_steps=10, steps=20,
                            checkpoint_every=10, record_every=5, am_candidates=8),
    "local": DefenseProfile("digits: 72 validation / 288 test inputs, 2,000-step chains"),
    "paper": DefenseProfile("the thesis' protocol (MNIST): 20% validation, 1,000 test, "
                            "chains of up to 1e6 steps, on GPUs", steps=1_000_000,
                            checkpoint_every=10_000, record_every=1000,
                            chains_per_unit=500, attack_batch_size=500),
}
