"""Job directories that survive failures, and their unit files (NOTES.md C, D).

A pool job writes everything it finishes under its directory `out/`: `job.json` (what was
asked: the fingerprint of config, model and inputs) and one file per finished unit. A rerun
with `resume=True` checks the fingerprint and loads the finished units instead of
recomputing them; a different job in the same directory is refused. Unit files are written
atomically (a temporary file renamed into place), so a unit file is either complete or
absent, whenever the process dies.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.interrupts import atomic_write
from orchestrator.pools.base import PoolError

JOB_FILE = "job.json"


def _digest(update, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        update(str((t.dtype, tuple(t.shape))).encode())
        # reshape: a 0-d tensor (batch norm's num_batches_tracked) cannot be viewed as bytes
        update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, nn.Module):
        for name, tensor in value.state_dict().items():
            update(name.encode())
            _digest(update, tensor)
    else:
        update(json.dumps(value, sort_keys=True, default=str).encode())


def fingerprint(*parts: Any) -> str:
    """A SHA-256 of configs, tensors and model weights: names one job exactly."""
    sha = hashlib.sha256()
    for part in parts:
        _digest(sha.update, part)
    return sha.hexdigest()[:16]


def open_job(out: str | Path, kind: str, config: dict[str, Any], digest: str,
             resume: bool) -> Path:
    """Create (or, with `resume`, reopen) the job directory `out`.

    Resuming a directory that holds a different job (another config, model or inputs)
    raises PoolError naming the differing config keys; without `resume`, earlier unit
    files of the directory are removed so that nothing stale is mixed in.
    """
    out = Path(out)
    path = out / JOB_FILE
    job = {"kind": kind, "fingerprint": digest, "config": config}
    if resume and path.exists():
        earlier = json.loads(path.read_text())
        if earlier.get("fingerprint") != digest:
            old = earlier.get("config", {})
            changed = sorted(k for k in {*old, *config} if old.get(k) != config.get(k))
            what = (f"settings differ: {', '.join(changed)}" if changed
                    else "the model or the inputs differ")
            raise PoolError(f"cannot resume {out}: it holds another {kind} job ({what})")
        return out
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("units/*.pt"), *out.glob("chains/*.pt")]:
        stale.unlink()
    save_json(job, path)
    return out


def save_json(obj: Any, path: Path) -> None:
    """Write a JSON file whole or not at all (`atomic_write`)."""
    atomic_write(path, json.dumps(obj, indent=2, default=str))


def save_unit(obj: dict[str, Any], path: Path) -> None:
    """Write a unit file atomically: complete or absent (a full disk leaves no partial
    file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


def load_unit(path: Path) -> dict[str, Any]:
    """Read a unit file with `weights_only=True` (tensors and plain values only: a file
    cannot run code). A corrupt or truncated file raises PoolError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors all mean "unreadable"
        raise PoolError(f"unit file {path} is corrupt or truncated ({error.__class__.__name__}"
                        f"); delete it to recompute that unit") from None
