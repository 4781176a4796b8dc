"""Datasets: the embedded `digits` default and torchvision image sets, each with its OOD sets
(`workloads.data.ood_sets`), the one-class split of class anomaly detection, and the
minibatches every training path iterates.

Every loader returns a `Dataset` of in-memory float tensors in [0, 1] with shape
(N, C, H, W); vector models flatten them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from workloads.data.celeba import celeba_root
from workloads.data.dataset import (
    CELEBA,
    DATASET_NAMES,
    DIGITS,
    EXPECTED_FILES,
    IMAGE_DATASETS,
    Dataset,
    DatasetMissingError,
    stratified_split,
)
from workloads.data.image_folders import OOD_ONLY_LOADERS, OOD_ONLY_PRESENT
from workloads.data.ood_sets import (
    CROSS_DATASET_OOD,
    match_shape,
    natural_image_patches,
    noise_ood_sets,
)
from workloads.data.torchvision_sets import CIFAR_FILES, load_image_dataset, torchvision_dataset

# The training split of digits holds 1,077 examples for every seed (1,797 split 60/20/20,
# stratified: scikit-learn sizes the splits from the count alone; the seed only draws which
# examples). The sweep's pre-flight batch check reads it here instead of importing
# scikit-learn and loading the set before Ray starts; a test holds it to the loaded split.
DIGITS_TRAIN_SIZE = 1077

# The share of an image dataset's training split held out for validation (stratified), unless
# a trial's config sets `val_fraction`; digits' 60/20/20 split is fixed.
VAL_FRACTION = 0.1


def load_digits(seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits scaled to [0, 1]; stratified 60/20/20 split."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    xtr, ytr, xva, yva, xte, yte = stratified_split(x, y, (0.2, 0.2), seed)
    # the same shuffles of the row numbers: each test input's row in scikit-learn's array
    test_index = stratified_split(np.arange(len(y)), y, (0.2, 0.2), seed)[4]
    t = torch.from_numpy
    return Dataset(DIGITS, t(xtr), t(ytr), t(xva), t(yva), t(xte), t(yte), num_classes=10,
                   levels=17, test_index=test_index)


def training_set_size(name: str, data_dir: str | Path | None, seed: int = 0,
                      normal_class: int = -1, val_fraction: float = VAL_FRACTION) -> int:
    """How many training examples a trial of `name` (with `seed`, `val_fraction`, and
    `normal_class` for class anomaly detection; -1: every class) trains on. Digits' full
    training split is known without loading it; the others are loaded (their files may be
    any size)."""
    if name == DIGITS and normal_class < 0:
        return DIGITS_TRAIN_SIZE
    data = load_dataset(name, data_dir, seed=seed, ood=False, val_fraction=val_fraction)
    return len(one_class_split(data, normal_class).x_train if normal_class >= 0
               else data.x_train)


def ensure_dataset(name: str, data_dir: str | Path | None, download: bool = False) -> None:
    """Check that `name` can be loaded (downloading it when asked) without loading it.

    Raises DatasetMissingError naming the directory, the expected files and --download.
    """
    if name == DIGITS:
        return
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown dataset '{name}'; known: {', '.join(DATASET_NAMES)}")
    if data_dir is None:
        raise DatasetMissingError(name, "<no --data-dir given>")
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir() and not download:
        raise DatasetMissingError(name, data_dir)
    if name == CELEBA:
        celeba_root(data_dir, download)
        return
    for train in (True, False):
        torchvision_dataset(name, data_dir, train, download)
    if name in CIFAR_FILES:
        folder, train_files, test_files, _ = CIFAR_FILES[name]
        if not all((data_dir / folder / f).is_file() for f in train_files + test_files):
            raise DatasetMissingError(name, data_dir)


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False,
                 seed: int = 0, ood: bool = True,
                 ood_sets: tuple[str, ...] | None = None,
                 val_fraction: float = VAL_FRACTION) -> Dataset:
    """Load an in-distribution dataset by name, with its OOD sets sized like its test set:
    the noise sets, natural-image patches and its cross-dataset sets (`CROSS_DATASET_OOD`,
    or the datasets named in `ood_sets`), each where its files are present. An image
    dataset's validation set is a stratified `val_fraction` of its training split."""
    if name == DIGITS:
        data = load_digits(seed)
    elif name in IMAGE_DATASETS:
        if data_dir is None:
            raise DatasetMissingError(name, "<no --data-dir given>")
        data = load_image_dataset(name, data_dir, download=download, seed=seed,
                                  val_fraction=val_fraction)
    else:
        raise ValueError(f"unknown dataset '{name}'; known: {', '.join(DATASET_NAMES)}")
    if ood:
        n = len(data.x_test)
        shape = data.input_shape
        data.ood.update(noise_ood_sets(n, shape, seed=seed + 1))
        data.ood["natural_patches"] = natural_image_patches(n, shape, seed=seed + 2)
        others = CROSS_DATASET_OOD.get(name, ()) if ood_sets is None else ood_sets
        unknown = [o for o in others if o not in IMAGE_DATASETS and o not in OOD_ONLY_LOADERS]
        if unknown or name in others:
            raise ValueError(f"OOD sets {', '.join(unknown or [name])}: not a dataset other "
                             f"than {name}; known: "
                             f"{', '.join(sorted({*IMAGE_DATASETS, *OOD_ONLY_LOADERS} - {name}))}")
        for other in others:
            try:
                if other in OOD_ONLY_LOADERS:
                    x_other = OOD_ONLY_LOADERS[other](data_dir, n, shape[1:])
                else:
                    x_other = load_image_dataset(other, data_dir, download=download,
                                                 seed=seed).x_test[:n]
            except DatasetMissingError:
                # a cross-dataset pair is used only where its files are present
                data.skipped_ood[other] = EXPECTED_FILES[other][0]
                continue
            data.ood[other] = match_shape(x_other, shape)
    return data


# Where each dataset's files sit under the data directory (what `dataset_files` lists).
FILE_PATTERNS = {"mnist": "MNIST/raw/*-ubyte", "fashionmnist": "FashionMNIST/raw/*-ubyte",
                 "kmnist": "KMNIST/raw/*-ubyte", "svhn": "*_32x32.mat",
                 "cifar10": "cifar-10-batches-py/*_batch*",
                 "cifar100": "cifar-100-python/t*",
                 CELEBA: "celeba/*.txt"}  # CelebA: its lists, not its 202,599 images


def dataset_files(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """The files `name` is read from, those present: scikit-learn's bundled digits file, or
    the torchvision files under `data_dir` (what a provenance record hashes; for CelebA
    its partition and annotation lists)."""
    if name == DIGITS:
        from importlib.util import find_spec

        # found without importing scikit-learn (~1 s of a sweep driver that needs none of it)
        return [Path(find_spec("sklearn").origin).parent / "datasets" / "data" / "digits.csv.gz"]
    if name not in FILE_PATTERNS or data_dir is None:
        return []
    return sorted(p for p in Path(data_dir).expanduser().glob(FILE_PATTERNS[name])
                  if p.is_file())


def absent_ood_sets(name: str, data_dir: str | Path | None) -> dict[str, str]:
    """The cross-dataset OOD sets of `name` whose files are not under `data_dir`, each with
    the file it needs (such pairs are skipped, not an error)."""
    absent = {}
    for other in CROSS_DATASET_OOD.get(name, ()):
        root = Path(data_dir).expanduser() if data_dir is not None else None
        present = root is not None and (
            any(any(root.glob(pattern)) for pattern in OOD_ONLY_PRESENT[other])
            if other in OOD_ONLY_PRESENT else bool(dataset_files(other, root)))
        if not present:
            absent[other] = EXPECTED_FILES[other][0]
    return absent


SPLIT_PER_SEED = "seed"  # `data_seed` = "seed": each training seed draws its own split


def trial_data_seed(config: dict) -> int:
    """The seed of a trial's split and OOD sets: its `data_seed` (0 when absent), or with
    `data_seed` "seed" (`--vary-split`) its training `seed`: seeds then differ in their
    test inputs too, and intervals over seeds cover the split's variance."""
    data_seed = config.get("data_seed", 0)
    return int(config["seed"]) if data_seed == SPLIT_PER_SEED else int(data_seed)


def load_trial_data(config: dict) -> Dataset:
    """The dataset of a trial's config (`dataset`, `data_dir`, `data_seed` as
    `trial_data_seed` reads it, `val_fraction`); with `normal_class` >= 0, its one-class
    anomaly version."""
    seed = trial_data_seed(config)
    data = load_dataset(config["dataset"], config.get("data_dir"), download=False, seed=seed,
                        val_fraction=config.get("val_fraction", VAL_FRACTION))
    if config.get("normal_class", -1) >= 0:
        data = one_class_split(data, config["normal_class"], seed=seed)
    return data


def one_class_split(data: Dataset, normal_class: int, seed: int = 0) -> Dataset:
    """Class anomaly detection (NOTES.md B, Tables 3.2/3.3): train, validate and test on
    `normal_class` alone; the test examples of every other class are the one OOD set,
    `other_classes`, compared whole with the normal class's test examples (not balanced:
    the protocol of GradCon and OCGAN, whose numbers the thesis quotes, scores the whole
    test split). Its order is drawn with `seed`, so that a prefix (the training-time
    diagnostic's subsample, the histograms) is a random sample of the other classes."""
    if not 0 <= normal_class < data.num_classes:
        raise ValueError(f"normal_class must be in 0..{data.num_classes - 1}, got {normal_class}")

    def keep(x, y):
        return x[y == normal_class], y[y == normal_class]

    others = data.x_test[data.y_test != normal_class]
    order = torch.randperm(len(others), generator=torch.Generator().manual_seed(seed))
    test_index = (np.arange(len(data.x_test)) if data.test_index is None
                  else np.asarray(data.test_index))[(data.y_test == normal_class).numpy()]
    return Dataset(f"{data.name}-class{normal_class}", *keep(data.x_train, data.y_train),
                   *keep(data.x_val, data.y_val), *keep(data.x_test, data.y_test),
                   num_classes=data.num_classes, ood={"other_classes": others[order]},
                   levels=data.levels, balanced_ood=False, test_index=test_index)


def iterate_minibatches(num_examples: int, batch_size: int, epoch: int, seed: int = 0,
                        rank: int = 0, world_size: int = 1):
    """Yield index tensors of this worker's share of each global batch of one epoch.

    The epoch's permutation depends only on (seed, epoch), so every worker sees the same
    global batches; worker `rank` takes the rank-th slice of `batch_size // world_size`.
    Incomplete last batches are dropped, so per-worker batches are always equal in size and
    N workers with batch b see exactly the examples 1 worker with batch N*b sees.
    """
    if batch_size % world_size:
        raise ValueError(f"global batch size {batch_size} is not divisible by {world_size} workers")
    local = batch_size // world_size
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_examples, generator=generator)
    for start in range(0, num_examples - batch_size + 1, batch_size):
        yield order[start + rank * local: start + (rank + 1) * local]
