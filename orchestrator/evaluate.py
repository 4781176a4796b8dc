"""Evaluate any classifier: every OOD detector it can serve, clean and under adaptive attack,
near and far OOD, with intervals.

    python -m orchestrator.evaluate --model MODULE:FACTORY [--model-arg K=V ...]
        [--checkpoint PATH] --dataset NAME [--ood SET ...] [--scores NAMES]
        [--eps 1/255,4/255] [--steps 100] [--n 500] [--head MODULE] [--out DIR]

The model is any `nn.Module` whose forward returns logits, built by `FACTORY(**model-args)`
and loaded from `--checkpoint` (read with `weights_only=True`); it sees the dataset's inputs
in [0, 1] (eps is measured there: put any normalisation inside the model). The features the
detectors need are found by hooks (`workloads.models.foreign.ForeignClassifier`): the input
of the last linear layer (or of `--head`), the feature maps before its pooling. The job:
orchestrator.jobs.evaluate_model; files in `--out` (default
runs/evaluate/<factory>-<dataset>-<time>/).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from orchestrator.cli import add_job_arguments, parse_eps, pool_arguments, run_command
from orchestrator.errors import UsageError, first_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.evaluate", description=__doc__.split("\n\n")[0],
        epilog="examples:\n  python -m orchestrator.evaluate --model torchvision.models:resnet18 "
               "--model-arg num_classes=10 --checkpoint resnet18.pt --dataset cifar10\n"
               "  python -m orchestrator.evaluate --model mypkg.nets:build --dataset digits "
               "--eps 0.05 --n 200 --num-actors 2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                        help="a function returning the nn.Module (logits out)")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument of the factory (int, float, bool or text; "
                             "A,B,C is a tuple, e.g. input_shape=1,8,8; repeatable)")
    parser.add_argument("--checkpoint", type=Path, help="weights: a state dict (or a dict "
                        "holding one under state_dict / model), read with weights_only=True")
    parser.add_argument("--head", help="the final linear layer's module name, when it is not "
                                       "the last nn.Linear the model calls")
    parser.add_argument("--dataset", required=True, help="the in-distribution dataset")
    parser.add_argument("--ood", nargs="+", metavar="SET",
                        help="OOD sets to use: names, or folders of your own images (any "
                             "depth; named by the folder) (default: the generated sets and "
                             "every OOD set of the dataset present)")
    parser.add_argument("--scores", help="detectors joined by + (default: every one the "
                                         "model can serve)")
    parser.add_argument("--eps", type=lambda t: list(dict.fromkeys(parse_eps(p)
                                                                    for p in t.split(","))),
                        default=[1 / 255, 4 / 255], help="attack radii (L-inf), comma "
                                                         "separated (default: 1/255,4/255)")
    parser.add_argument("--steps", type=int, default=100, help="APGD steps (default 100)")
    parser.add_argument("--n", type=int, default=500,
                        help="inputs of the ID test set and of each OOD set (default 500)")
    parser.add_argument("--batch-size", type=int, default=100, help="inputs per attack unit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="result directory (default: "
                                                 "runs/evaluate/<factory>-<dataset>-<time>)")
    add_job_arguments(parser)
    return parser


def default_ood_sets(dataset: str) -> list[str]:
    """The dataset's cross-dataset OOD sets and, for CIFAR-10 / CIFAR-100, OpenOOD v1.5's
    near and far sets."""
    from workloads.data.ood_sets import CROSS_DATASET_OOD
    from workloads.evaluation.detector_evaluation import OPENOOD_GROUPS

    openood = [s for sets in OPENOOD_GROUPS.get(dataset, {}).values() for s in sets]
    return list(dict.fromkeys([*openood, *CROSS_DATASET_OOD.get(dataset, ())]))


def _value(text: str):
    """int, float, bool, None or text; comma-separated: a tuple of those (e.g. a shape)."""
    if "," in text:
        return tuple(_value(part.strip()) for part in text.split(",") if part.strip())
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def main(args: argparse.Namespace) -> int:
    from orchestrator.jobs.evaluate_model import build_model, evaluate_model, load_weights
    from workloads.data import load_dataset
    from workloads.data.dataset import IMAGE_DATASETS
    from workloads.data.image_folders import OOD_ONLY_LOADERS, load_image_folder
    from workloads.data.ood_sets import match_shape
    from workloads.models.foreign import ForeignClassifier
    from workloads.scores import OOD_SCORES

    if args.n < 1 or args.steps < 1 or args.batch_size < 1:
        raise UsageError("--n, --steps and --batch-size must be >= 1")
    kwargs = {}
    for item in args.model_arg:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--model-arg expects KEY=VALUE, got '{item}'")
        kwargs[key.strip()] = _value(text.strip())
    pool_args = pool_arguments(args)
    data_dir = args.data_dir or os.environ.get("ROBUSTNESS_DATA_DIR", "data")
    generated = ("gaussian_noise", "uniform_noise", "natural_patches")
    wanted = args.ood or [*generated, *default_ood_sets(args.dataset)]
    named = {*generated, *IMAGE_DATASETS, *OOD_ONLY_LOADERS}
    folders = {s: Path(s).expanduser() for s in wanted
               if s not in named and (os.sep in s or s.startswith("~") or Path(s).is_dir())}
    for text, folder in folders.items():
        if not folder.is_dir():
            raise UsageError(f"--ood {text}: not a directory")
    names = [s for s in wanted if s not in folders]
    folder_names = [folder.resolve().name for folder in folders.values()]
    clash = [f for f in folder_names if folder_names.count(f) > 1 or f in names or f == "id"]
    if clash:
        raise UsageError(f"--ood: folder name {clash[0]} is given twice, is a set's name or is "
                         f"'id'; rename the folder")
    try:
        data = load_dataset(args.dataset, data_dir, ood_sets=tuple(
            s for s in names if s not in generated))
    except ValueError as error:
        raise UsageError(f"--ood: {error}" if args.ood else str(error)) from None
    for other, needs in data.skipped_ood.items():
        print(f"[evaluate] OOD set {other} is skipped: {needs} is not under {data_dir}",
              flush=True)
    data.ood = {k: v for k, v in data.ood.items() if k in names}
    for name, folder in zip(folder_names, folders.values()):  # one's own OOD images
        images = load_image_folder(folder, len(data.x_test), data.input_shape[1:])
        data.ood[name] = match_shape(images, data.input_shape)
    model = build_model(args.model, kwargs)
    provenance = {"model": args.model, "model_args": kwargs,
                  "checkpoint": str(args.checkpoint) if args.checkpoint else None,
                  "checkpoint_sha256": (load_weights(model, args.checkpoint)
                                        if args.checkpoint else None)}
    try:
        served = ForeignClassifier(model, data.x_train[:64], head=args.head)
    except (AttributeError, ValueError) as error:
        what = f"--head {args.head}" if args.head else f"--model {args.model}"
        raise UsageError(f"{what}: {error}") from None
    except RuntimeError as error:  # e.g. channels or sizes the model was not built for
        raise UsageError(f"--model {args.model}: fails on the inputs of {data.name}, shape "
                         f"{tuple(data.x_train.shape[1:])} ({first_line(error)})") from None
    if served.num_logits != data.num_classes:
        raise UsageError(f"--model {args.model}: returns {served.num_logits} logits, "
                         f"{data.name} has {data.num_classes} classes (a --model-arg such as "
                         f"num_classes={data.num_classes}?)")
    for part, why in served.unavailable.items():
        print(f"[evaluate] the model does not serve {part}: {why}", flush=True)
    scores = args.scores.split("+") if args.scores else None
    unknown = [s for s in scores or [] if s not in OOD_SCORES]
    if unknown:
        raise UsageError(f"--scores: unknown {', '.join(unknown)} (known: "
                         f"{', '.join(OOD_SCORES)})")
    name = f"{args.model.split(':')[-1]}-{args.dataset}"
    out = args.out or Path("runs", "evaluate", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.resume:
        runs = sorted(Path("runs", "evaluate").glob(f"{name}-*")) if args.out is None else [out]
        if not runs or not runs[-1].exists():
            raise UsageError(f"--resume: no earlier evaluation '{name}-*' in runs/evaluate")
        out = runs[-1]
    config = {"steps": args.steps, "norm": "Linf", "seed": args.seed,
              "batch_size": args.batch_size}
    evaluate_model(served, data, provenance, out, scores, args.eps, args.n, config,
                   pool_args, args.resume, args.wandb)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(build_parser(), main))
