"""What produced a results directory: the project's commit (and whether the tree had
uncommitted changes), the versions of the packages that decide the numbers, the command
line, the machine, and a SHA-256 of every file of the datasets used. Written as
`provenance.json` beside the results; reports show it in a footer."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from workloads.data import CROSS_DATASET_OOD, dataset_files

FILE = "provenance.json"
ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "torchvision", "ray", "wandb", "pyautoattack", "pytorch-ood", "numpy",
            "scipy", "scikit-learn", "pandas")


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """`commit` and `dirty` of the checkout at `root` (None where it is not one)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine() -> dict[str, Any]:
    """Platform, CPU model and count, memory and GPUs of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in
                   Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = None
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError, AttributeError):
        pass
    gpus: list[str] = []
    try:
        import torch

        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no CUDA runtime: no GPUs to name
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cores": os.cpu_count(), "memory_gib": memory, "gpus": gpus}


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def dataset_digests(names: list[str], data_dir: str | None) -> dict[str, dict[str, str]]:
    """Per dataset, the SHA-256 of each of its files (named relative to their folder)."""
    return {name: {f"{p.parent.name}/{p.name}": file_digest(p)
                   for p in dataset_files(name, data_dir)} for name in names}


def datasets_read(names) -> list[str]:
    """The datasets whose files a study on `names` reads: each, and its cross-dataset OOD
    sets (where their files are present)."""
    names = [names] if isinstance(names, str) else list(names)
    return list(dict.fromkeys(n for name in names
                              for n in (name, *CROSS_DATASET_OOD.get(name, ()))))


def provenance(datasets: list[str], data_dir: str | None) -> dict[str, Any]:
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": list(getattr(sys, "orig_argv", sys.argv)), "cwd": os.getcwd(),
            "git": git_state(), "packages": package_versions(), "machine": machine(),
            "datasets": dataset_digests(datasets, data_dir)}


def write_provenance(directory: str | Path, datasets: list[str],
                     data_dir: str | None) -> dict[str, Any]:
    """Write `<directory>/provenance.json`. Where one exists (a resumed run), the first
    record stays and this one is appended to its `resumed` list; returns the file's
    record."""
    record = provenance(datasets, data_dir)
    path = Path(directory) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        first = json.loads(path.read_text())
        first.setdefault("resumed", []).append(record)
        record = first
    path.write_text(json.dumps(record, indent=2))
    return record


def provenance_markdown(record: dict[str, Any] | None) -> str:
    """The footer of a report: what produced its numbers."""
    if not record:
        return "_No provenance recorded (a run from before provenance.json existed)._"
    git = record.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (uncommitted changes)"
                                                      if git.get("dirty") else "")
    packages = ", ".join(f"{k} {v}" for k, v in (record.get("packages") or {}).items() if v)
    host = record.get("machine") or {}
    gpus = ", ".join(host.get("gpus") or []) or "no GPU"
    data = "; ".join(f"{name}: " + (", ".join(f"{f} {d[:12]}" for f, d in files.items())
                                     or "no files")
                     for name, files in (record.get("datasets") or {}).items())
    resumed = [f"- resumed {r.get('created')} by `{' '.join(r.get('command') or [])}` at "
               f"commit {((r.get('git') or {}).get('commit') or 'unknown')[:12]}"
               + (" (uncommitted changes)" if (r.get("git") or {}).get("dirty") else "")
               for r in record.get("resumed", [])]
    return "\n".join([
        "---", "**Provenance**", "",
        f"- command: `{' '.join(record.get('command') or [])}` (in {record.get('cwd')}, "
        f"{record.get('created')})",
        f"- commit: {commit}",
        f"- packages: {packages}",
        f"- machine: {host.get('cpu')}, {host.get('cores')} cores, "
        f"{host.get('memory_gib')} GiB, {gpus}; {host.get('platform')}, "
        f"Python {host.get('python')}",
        f"- data (SHA-256): {data or 'none recorded'}", *resumed])
