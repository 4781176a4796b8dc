"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one
scalar T > 0 that divides the logits, fitted on held-out validation data by minimizing the
NLL with L-BFGS; the "calibrated MSP" baseline of document 003 (NOTES.md D) and of 001.

The fit runs on log T (so T stays positive) in float64 with a strong-Wolfe line search until
the gradient vanishes; tests/test_temperature_and_failures.py checks it against a bounded
scalar search (scipy). pytorch-ood's `TemperatureScaling` is not used: its 50 L-BFGS
iterations of step 0.01 from T = 1 stop short of the minimum (T = 1.27 against 4.77 on the
test's overconfident logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def temperature_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean NLL of `labels` under softmax(logits / T)."""
    return F.cross_entropy(logits.double() / temperature, labels).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T that minimizes the NLL of softmax(logits / T) on (`logits`, `labels`), the
    validation split's."""
    if len(logits) == 0:
        raise ValueError("temperature scaling needs validation logits")
    logits, labels = logits.detach().double().cpu(), labels.detach().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=200, tolerance_grad=1e-10,
                                  tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def scaled_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T)."""
    return (logits / temperature).softmax(dim=1)
