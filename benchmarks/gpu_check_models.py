"""The per-model check of `benchmarks/gpu_check.py`: build a paper model (`gpu_check_specs`),
time a few steps of its loop's training on random inputs of the real shape, then run its
loop's final stage on small random data with the model on the device under check.

Two guards surround the model while it trains its first steps and while it is evaluated:

- `device_audit`: every module checks that each tensor it receives or returns is on the
  model's device, and raises `DeviceMismatch` naming the module otherwise. CUDA raises on
  most mismatches by itself; the audit names the layer and also catches what CUDA lets
  through (a CPU tensor into a parameter-free layer, a 0-dim CPU tensor);
- `ModelState`: the modules' training flags, the parameters' values and `requires_grad`,
  and the buffers, taken before the final stage and compared after it: a final stage must
  leave the model as it found it.

Any exception fails that model only: its record holds the phase, the error and the
traceback's last lines, and the check moves on to the next model.
"""

from __future__ import annotations

import contextlib
import gc
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from benchmarks.gpu_check_specs import (
    CLASSIFIER_LOOPS,
    LEVELS,
    ModelSpec,
    build_trainer,
    dry_model_overrides,
    final_overrides,
    final_stage,
)
from workloads.data import Dataset, noise_ood_sets
from workloads.models import DIGLM
from workloads.scores import batched_logits

Note = Callable[[str], None]  # a progress line


@dataclass(frozen=True)
class Sizes:
    """How much each model runs: training steps (a warm-up epoch, then a timed one), the
    batch (None: the paper's), and the splits of the final stage's random data."""

    warmup_steps: int
    timed_steps: int
    batch: int | None
    n_train: int
    n_val: int
    n_test: int
    n_ood: int
    dry: bool


GPU_SIZES = Sizes(warmup_steps=2, timed_steps=10, batch=None, n_train=512, n_val=256,
                  n_test=256, n_ood=256, dry=False)
DRY_SIZES = Sizes(warmup_steps=1, timed_steps=1, batch=2, n_train=8, n_val=8, n_test=8,
                  n_ood=8, dry=True)
# Splits a final stage needs at least (dry run): ood_baselines' `mahalanobis_lee` fits its
# layer weights by 5-fold cross-validation on two halves of the validation split.
MIN_SPLITS = {"ood_baselines": {"n_val": 24}}


class BudgetExceeded(Exception):
    """Raised (by the caller's timer) when the check's time budget runs out mid-model."""


class DeviceMismatch(RuntimeError):
    """A module received or returned a tensor on another device than the model's."""


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def device_audit(model: nn.Module) -> Iterator[None]:
    """Within the block, every module of `model` raises `DeviceMismatch` when a tensor it
    receives or returns is not on the model's device (hooks, removed afterwards)."""
    device = model_device(model)

    def check(name: str, module: nn.Module, what: str, value: Any) -> None:
        for tensor in _tensors(value):
            if tensor.device != device:
                raise DeviceMismatch(
                    f"module '{name or '<model>'}' ({type(module).__name__}) {what} a tensor "
                    f"on {tensor.device}; the model is on {device}")

    handles = []
    for name, module in model.named_modules():
        def before(module, args, kwargs, name=name):
            check(name, module, "received", (args, kwargs))

        def after(module, args, kwargs, output, name=name):
            check(name, module, "returned", output)

        handles += [module.register_forward_pre_hook(before, with_kwargs=True),
                    module.register_forward_hook(after, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class ModelState:
    """The modules' training flags, the parameters (values, `requires_grad`) and buffers of
    a model, copied; `changes(model)` lists what differs now."""

    def __init__(self, model: nn.Module):
        self.modes = {name: m.training for name, m in model.named_modules()}
        self.grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
        self.tensors = {**{f"parameter {n}": p.detach().clone()
                           for n, p in model.named_parameters()},
                        **{f"buffer {n}": b.detach().clone() for n, b in model.named_buffers()}}

    def changes(self, model: nn.Module) -> list[str]:
        now = ModelState.__new__(ModelState)
        now.modes = {name: m.training for name, m in model.named_modules()}
        now.grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
        now.tensors = {**{f"parameter {n}": p.detach() for n, p in model.named_parameters()},
                       **{f"buffer {n}": b.detach() for n, b in model.named_buffers()}}
        found = [f"training flag of '{n or '<model>'}' {self.modes.get(n)} -> {flag}"
                 for n, flag in now.modes.items() if self.modes.get(n) != flag]
        found += [f"requires_grad of '{n}' {self.grad_flags.get(n)} -> {flag}"
                  for n, flag in now.grad_flags.items() if self.grad_flags.get(n) != flag]
        for name in sorted(set(self.tensors) | set(now.tensors)):
            before, after = self.tensors.get(name), now.tensors.get(name)
            if before is None or after is None:
                found.append(f"{name} {'added' if before is None else 'removed'}")
            elif (before.shape != after.shape or before.dtype != after.dtype
                  or before.device != after.device):
                found.append(f"{name} {tuple(before.shape)} {before.dtype} {before.device} -> "
                             f"{tuple(after.shape)} {after.dtype} {after.device}")
            elif not (torch.equal(before, after) or (before.is_floating_point() and torch.allclose(
                    before, after, rtol=0.0, atol=0.0, equal_nan=True))):
                found.append(f"{name} values")
        return found


def random_pixels(n: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """`n` images on the 8-bit grid k / 255 (what the loaders give, what the flows'
    dequantization and the categorical decoder expect)."""
    return torch.randint(0, LEVELS, (n, *shape), generator=generator).float() / (LEVELS - 1)


def final_stage_data(spec: ModelSpec, model: nn.Module, sizes: Sizes,
                     seed: int = 1) -> Dataset:
    """Small random splits of the real input shape and two OOD sets (Gaussian and uniform
    noise, `noise_ood_sets`); class anomaly: one normal class and `other_classes`. A
    classifier's test labels are half its own predictions, so that mistake detection sees
    right and wrong predictions alike."""
    generator = torch.Generator().manual_seed(seed)
    shape, classes = spec.input_shape, spec.num_classes
    sizes = replace(sizes, **{k: max(v, getattr(sizes, k))
                              for k, v in MIN_SPLITS.get(spec.loop, {}).items()})

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, classes, (n,), generator=generator)
        if spec.loop == "class_anomaly":
            labels = torch.full((n,), spec.config["normal_class"])
        return random_pixels(n, shape, generator), labels

    (x_train, y_train), (x_val, y_val) = split(sizes.n_train), split(sizes.n_val)
    x_test, y_test = split(sizes.n_test)
    if spec.loop in CLASSIFIER_LOOPS or isinstance(model, DIGLM):
        half = sizes.n_test // 2
        y_test[:half] = batched_logits(model, x_test[:half]).argmax(1)
    ood = noise_ood_sets(sizes.n_ood, shape, seed=seed + 1)
    if spec.loop == "class_anomaly":
        ood = {"other_classes": random_pixels(sizes.n_ood, shape, generator)}
    return Dataset(spec.config["dataset"], x_train, y_train, x_val, y_val, x_test, y_test,
                   num_classes=classes, ood=ood, levels=LEVELS)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_and_time(spec: ModelSpec, config: dict[str, Any], device: torch.device,
                   sizes: Sizes, note: Note) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The model of `config`, trained by its loop for a warm-up epoch (under the device
    audit) and a timed epoch per batch size; per batch size: images/s, seconds per step and
    the projected seconds of one epoch of each paper dataset of the model (training steps
    only; incomplete last batches are dropped, as the loops drop them)."""
    generator = torch.Generator().manual_seed(0)
    batches = [sizes.batch] if sizes.batch else spec.batch_sizes
    largest = max(batches) * sizes.timed_steps
    x = random_pixels(largest, spec.input_shape, generator)
    y = torch.randint(0, spec.num_classes, (largest,), generator=generator)
    model, epoch_for = build_trainer(spec, config, x, device)
    timings = []
    for batch in batches:
        run = epoch_for(batch)
        with device_audit(model):
            run(x[:batch * sizes.warmup_steps], y[:batch * sizes.warmup_steps], batch, 0)
        _synchronize(device)
        started = time.perf_counter()
        loss = run(x[:batch * sizes.timed_steps], y[:batch * sizes.timed_steps], batch, 1)
        _synchronize(device)
        seconds = time.perf_counter() - started
        if not torch.isfinite(torch.tensor(loss)):
            raise FloatingPointError(f"training loss {loss} after {sizes.warmup_steps} + "
                                     f"{sizes.timed_steps} steps of batch {batch}")
        step = seconds / sizes.timed_steps
        timing = {"batch_size": batch, "steps": sizes.timed_steps, "seconds": seconds,
                  "images_per_s": batch / step, "step_seconds": step, "loss": loss,
                  "projected_epoch_seconds": {
                      d: spec.train_size(d) // batch * step for d in spec.datasets}}
        timings.append(timing)
        note(f"batch {batch}: {timing['images_per_s']:,.0f} images/s, epoch of "
             f"{spec.datasets[0]} ~{timing['projected_epoch_seconds'][spec.datasets[0]]:,.1f} s")
    return model, timings


def check_model(spec: ModelSpec, device: torch.device, sizes: Sizes,
                note: Note = lambda text: None) -> dict[str, Any]:
    """Build, train a few steps and evaluate one paper model on `device`; the record of
    what it measured, `status` "ok" or "failed" (with `phase`, `error`, `traceback`)."""
    overrides = dry_model_overrides(spec) if sizes.dry else {}
    stage_overrides = final_overrides(spec, sizes.dry)
    config = {**spec.config, **overrides}
    record: dict[str, Any] = {
        "name": spec.name, "sweeps": spec.sweeps, "loop": spec.loop,
        "dataset": config["dataset"], "paper_datasets": spec.datasets,
        "input_shape": list(spec.input_shape), "num_classes": spec.num_classes,
        "model_overrides": overrides, "final_stage_overrides": stage_overrides,
        "final_stage": final_stage(spec.loop).__name__, "device": str(device),
        "config": config}
    started, phase = time.perf_counter(), "build and train"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = None
    try:
        model, record["train"] = train_and_time(spec, config, device, sizes, note)
        record["params"] = sum(p.numel() for p in model.parameters())
        phase = "final stage"
        model.eval()  # as every loop hands it over (EpochLoop.evaluated)
        with device_audit(model):
            data = final_stage_data(spec, model, sizes)
            state = ModelState(model)
            stage_started = time.perf_counter()
            metrics, _ = final_stage(spec.loop)(model, data, {**config, **stage_overrides})
            _synchronize(device)
            record["final_stage_seconds"] = time.perf_counter() - stage_started
        record["final_metrics"] = len(metrics)
        record["final_metrics_nonfinite"] = sum(
            1 for v in metrics.values()
            if isinstance(v, float) and not torch.isfinite(torch.tensor(v)))
        phase = "state after the final stage"
        changes = state.changes(model)
        if changes:
            raise AssertionError(f"the final stage changed the model ({len(changes)}): "
                                 + "; ".join(changes[:5]))
        record["status"] = "ok"
        note(f"final stage {record['final_stage_seconds']:.1f} s, model left as found")
    except Exception as error:  # one model's failure must not stop the others
        lines = traceback.format_exc().rstrip().splitlines()
        message = (str(error).strip().splitlines() or [""])[0]
        status = "interrupted" if isinstance(error, BudgetExceeded) else "failed"
        record.update(status=status, phase=phase,
                      error=f"{type(error).__name__}: {message}"[:500], traceback=lines[-12:])
        note(f"{status.upper()} in {phase}: {record['error']}")
    finally:
        if device.type == "cuda":
            record["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    record["seconds"] = time.perf_counter() - started
    return record
