"""A prepared GPU check: in one command and a few minutes of one GPU, everything of the
project that only a GPU can confirm, measured and recorded.

    python benchmarks/gpu_check.py --require-cuda          # on the GPU machine (~7 min)
    python benchmarks/gpu_check.py --dry-run               # CPU, tiny sizes (CI)

What it checks, per distinct model of the sweeps' `paper` profiles (`gpu_check_specs`; the
paper architecture at its real size, built by the sweeps' factories):
1. a few training steps with the profile's optimizer and objective (the loops' own
   `train_epoch` / `train_one_epoch`) on random inputs of the real shape, timed: images/s
   and the projected seconds of one epoch of each paper dataset at the paper's batch size;
2. the model's final stage (what its loop runs after training) on small random data, the
   model on the device, with every module checking that the tensors it sees are on the
   model's device and the model compared before and after (`gpu_check_models`);
and then the fractional-GPU attack pool: 4 actors of 0.25 GPU, their devices, and their
results against the same units on the CPU (`gpu_check_pool`).

Without CUDA (or with `--dry-run`) the same code runs on the CPU at tiny sizes (small widths
where a factory takes them; DenseNet-BC-100 and WRN-28-10 at their real size on 2 inputs a
step), one torch thread, the pool's actors without GPUs.

Output: a line per step as it goes, a table at the end, and a JSON record (`--out`, default
gpu_check.json; rewritten after every item). A time budget (`--budget-seconds`, default
420) skips what would start too late, with a note, and stops an item that overruns it.
Exit status: 0 when everything that ran passed; 1 when a check failed (one line per
failure at the end); 2 with one line for bad arguments.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # the wall time counts the imports below

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POOL = "pool"
POOL_RESERVE = {False: 60.0, True: 45.0}  # seconds kept for the pool (GPU, dry run)
MIN_ITEM = {False: 10.0, True: 3.0}       # an item does not start with less time left


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr and exit code 2, no usage block, no traceback."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny sizes (chosen anyway when CUDA is not available)")
    parser.add_argument("--require-cuda", action="store_true",
                        help="fail (exit 1) instead of dry-running when CUDA is not available")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"),
                        help="the JSON record (default: gpu_check.json)")
    parser.add_argument("--budget-seconds", type=float, default=420.0,
                        help="wall-time budget of the whole check, imports included "
                             "(default 420)")
    parser.add_argument("--only", default="",
                        help="comma-separated model names, sweep names or 'pool' (default: all)")
    parser.add_argument("--list", action="store_true", help="list the items and exit")
    args = parser.parse_args(argv)
    if not args.budget_seconds > 0:
        parser.error(f"--budget-seconds must be positive, got {args.budget_seconds:g}")
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a directory; give a file path")
    if not args.out.parent.resolve().is_dir() or not os.access(args.out.parent.resolve(),
                                                               os.W_OK):
        parser.error(f"--out {args.out}: its directory does not exist or is not writable")
    args.parser = parser
    return args


def elapsed() -> float:
    return time.perf_counter() - STARTED


def say(text: str) -> None:
    print(f"[{elapsed():6.1f} s] {text}", flush=True)


def environment(torch: ModuleType, device: Any, dry: bool, reason: str) -> dict[str, Any]:
    """What ran the check: device, versions, machine, commit."""
    import ray

    info: dict[str, Any] = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": sys.argv, "dry_run": dry, "dry_run_reason": reason, "device": str(device),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "ray": ray.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, device_memory_gib=props.total_memory / 2**30,
                    compute_capability=f"{props.major}.{props.minor}",
                    cuda_device_count=torch.cuda.device_count(),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                    tf32_cudnn=torch.backends.cudnn.allow_tf32)
    else:
        info["device_name"] = platform.processor() or platform.machine()
    try:
        git = ["git", "-C", str(ROOT)]
        info["git_commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True,
                                            text=True, timeout=10).stdout.strip()
        info["git_dirty"] = bool(subprocess.run([*git, "status", "--porcelain"],
                                                capture_output=True, text=True,
                                                timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def select(specs: list[Any], only: str, parser: OneLineParser) -> tuple[list[Any], bool]:
    """The models and whether the pool runs, from `--only`; an unknown name is bad input."""
    if not only:
        return specs, True
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    names = {s.name for s in specs} | {sweep for s in specs for sweep in s.sweeps} | {POOL}
    unknown = [w for w in wanted if w not in names]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; known: {POOL}, "
                     + ", ".join(s.name for s in specs))
    chosen = [s for s in specs if s.name in wanted or set(s.sweeps) & set(wanted)]
    return chosen, POOL in wanted


def write_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(path)


def run_with_deadline(deadline: float, work: Callable[[], Any],
                      exception: type[Exception]) -> Any:
    """`work()`, interrupted by `exception` once `deadline` (on the `elapsed` clock) passes."""
    timer = hasattr(signal, "setitimer")
    if timer:
        def stop(signum, frame):
            raise exception(f"stopped by the time budget after {elapsed():.0f} s")

        previous = signal.signal(signal.SIGALRM, stop)
        signal.setitimer(signal.ITIMER_REAL, max(deadline - elapsed(), 0.01))
    try:
        return work()
    finally:
        if timer:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def table(models: list[dict[str, Any]]) -> str:
    """The summary: one row per model and batch size."""
    head = (f"{'model':<44} {'status':<11} {'params':>8} {'batch':>6} {'images/s':>10} "
            f"{'epoch s':>9} {'final s':>8}")
    rows = [head, "-" * len(head)]
    for m in models:
        params = f"{m['params'] / 1e6:.2f}M" if "params" in m else ""
        final = f"{m['final_stage_seconds']:.1f}" if "final_stage_seconds" in m else ""
        timings = m.get("train") or [{}]
        for i, t in enumerate(timings):
            epoch = t.get("projected_epoch_seconds", {}).get(m["paper_datasets"][0])
            rows.append(f"{m['name'] if i == 0 else '':<44} {m['status'] if i == 0 else '':<11} "
                        f"{params if i == 0 else '':>8} {t.get('batch_size', ''):>6} "
                        f"{t.get('images_per_s', float('nan')):>10,.0f} "
                        f"{'' if epoch is None else f'{epoch:,.0f}':>9} "
                        f"{final if i == 0 else '':>8}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from benchmarks.gpu_check_models import DRY_SIZES, GPU_SIZES, BudgetExceeded, check_model
    from benchmarks.gpu_check_specs import paper_models

    cuda = torch.cuda.is_available()
    dry = args.dry_run or not cuda
    reason = "--dry-run" if args.dry_run else ("" if cuda else "torch.cuda.is_available() "
                                               "is False")
    specs, run_pool = select(paper_models(), args.only, args.parser)
    if args.list:
        print("\n".join([s.name for s in specs] + ([POOL] if run_pool else [])))
        return 0
    if args.require_cuda and not cuda:
        print(f"FAIL cuda: --require-cuda, but torch.cuda.is_available() is False "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda})", flush=True)
        return 1
    if dry:
        torch.set_num_threads(1)  # robust on a small shared CPU; results do not depend on it
    device = torch.device("cuda", 0) if not dry else torch.device("cpu")
    sizes = DRY_SIZES if dry else GPU_SIZES
    record: dict[str, Any] = {**environment(torch, device, dry, reason),
                              "budget_seconds": args.budget_seconds, "models": [],
                              "pool": None, "skipped": [], "failures": []}
    say(f"{'DRY RUN on the CPU (' + reason + ')' if dry else 'GPU check on'} "
        f"{record['device_name']}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
        f"{len(specs)} models{' + pool' if run_pool else ''}, budget "
        f"{args.budget_seconds:.0f} s -> {args.out}")
    models_until = args.budget_seconds - (POOL_RESERVE[dry] if run_pool else 0.0)
    for number, spec in enumerate(specs, 1):
        if models_until - elapsed() < MIN_ITEM[dry]:
            record["skipped"].append(f"{spec.name}: not started, {elapsed():.0f} s of the "
                                     f"{args.budget_seconds:.0f} s budget used")
            say(f"({number}/{len(specs)}) {spec.name}: SKIPPED (budget)")
            continue
        say(f"({number}/{len(specs)}) {spec.name} [{', '.join(spec.sweeps)}]")
        result = run_with_deadline(models_until, lambda s=spec: check_model(
            s, device, sizes, note=lambda text: say(f"    {text}")), BudgetExceeded)
        record["models"].append(result)
        if result["status"] != "ok":
            record["failures"].append(f"{spec.name}: {result['status']} in {result['phase']}: "
                                      f"{result['error']}")
        write_json(args.out, record)
    if run_pool:
        record["pool"] = pool_item(dry, args.budget_seconds, record)
        write_json(args.out, record)
    record["total_seconds"] = elapsed()
    record["status"] = "failed" if record["failures"] else "passed"
    write_json(args.out, record)
    print("\n" + table(record["models"]))
    pool = record["pool"] or {}
    if pool.get("status") == "ok":
        print(f"\npool: {len(pool['actors'])} actors on "
              f"{sorted({a['device'] for a in pool['actors']})}, {pool['units_computed']} "
              f"units, {pool['samples_per_s']:.0f} samples/s, x_adv agreement with the CPU "
              f"{pool['x_adv_agreement']:.1%}")
    for note in record["skipped"]:
        print(f"SKIPPED {note}")
    for failure in record["failures"]:
        print(f"FAIL {failure}")
    say(f"{'FAILED' if record['failures'] else 'PASSED'}: {len(record['models'])} models, "
        f"pool {pool.get('status', 'not run')}; {len(record['failures'])} failures, "
        f"{len(record['skipped'])} skipped; record in {args.out}")
    return 1 if record["failures"] else 0


def pool_item(dry: bool, budget: float, record: dict[str, Any]) -> dict[str, Any] | None:
    """The pool check within what is left of the budget; a failure is recorded, not raised."""
    import traceback

    from benchmarks.gpu_check_models import BudgetExceeded
    from benchmarks.gpu_check_pool import check_pool

    if budget - elapsed() < MIN_ITEM[dry]:
        record["skipped"].append(f"{POOL}: not started, {elapsed():.0f} s of the "
                                 f"{budget:.0f} s budget used")
        say(f"{POOL}: SKIPPED (budget)")
        return None
    say(f"{POOL}: the attack pool, 4 actors x {'0 GPU (dry run)' if dry else '0.25 GPU'}")
    try:
        result = run_with_deadline(budget, lambda: check_pool(
            dry, note=lambda text: say(f"    {text}")), BudgetExceeded)
    except Exception as error:  # recorded as the pool's failure
        lines = traceback.format_exc().rstrip().splitlines()
        message = (str(error).strip().splitlines() or [""])[0]
        result = {"status": "failed", "error": f"{type(error).__name__}: {message}"[:500],
                  "traceback": lines[-12:], "failures": [f"{type(error).__name__}: {message}"]}
    for failure in result["failures"]:
        record["failures"].append(f"{POOL}: {failure}")
        say(f"    FAILED: {failure}")
    if result["status"] == "ok":
        say(f"    ok: x_adv agreement {result['x_adv_agreement']:.1%}, logits within "
            f"{result['logits_max_abs_diff']:.2g} of the CPU model's")
    return result


if __name__ == "__main__":
    sys.exit(main())
