"""Datasets: the embedded `digits` default and torchvision image sets, each with its OOD sets
(`workloads.data.ood_sets`), the one-class split of class anomaly detection, and the
minibatches every training path iterates.

Every loader returns a `Dataset` of in-memory float tensors in [0, 1] with shape
(N, C, H, W); vector models flatten them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from workloads.data.ood_sets import (
    CROSS_DATASET_OOD,
    match_shape,
    natural_image_patches,
    noise_ood_sets,
)

DIGITS = "digits"
IMAGE_DATASETS = ("mnist", "fashionmnist", "kmnist", "svhn", "cifar10", "cifar100")
DATASET_NAMES = (DIGITS, *IMAGE_DATASETS)
TINY_IMAGENET = "tinyimagenet"  # an OOD set only (document 003): no labels are read
NUM_CLASSES = {"cifar100": 100}  # the others have 10

# Files torchvision expects under DATA_DIR, for the error message of a missing dataset.
EXPECTED_FILES = {
    "mnist": ["MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/train-labels-idx1-ubyte",
              "MNIST/raw/t10k-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte"],
    "fashionmnist": ["FashionMNIST/raw/train-images-idx3-ubyte",
                     "FashionMNIST/raw/train-labels-idx1-ubyte",
                     "FashionMNIST/raw/t10k-images-idx3-ubyte",
                     "FashionMNIST/raw/t10k-labels-idx1-ubyte"],
    "kmnist": ["KMNIST/raw/train-images-idx3-ubyte", "KMNIST/raw/train-labels-idx1-ubyte",
               "KMNIST/raw/t10k-images-idx3-ubyte", "KMNIST/raw/t10k-labels-idx1-ubyte"],
    "svhn": ["train_32x32.mat", "test_32x32.mat"],
    "cifar10": ["cifar-10-batches-py/data_batch_1 .. data_batch_5",
                "cifar-10-batches-py/test_batch"],
    "cifar100": ["cifar-100-python/train", "cifar-100-python/test"],
    TINY_IMAGENET: ["tiny-imagenet-200/test/images/test_0.JPEG .. test_9999.JPEG "
                    "(or tiny-imagenet-200/val/images/val_*.JPEG)"],
    "emnist": ["EMNIST/raw/emnist-letters-test-images-idx3-ubyte",
               "EMNIST/raw/emnist-letters-test-labels-idx1-ubyte"],
    "dtd": ["dtd/dtd/images/<texture>/*.jpg", "dtd/dtd/labels/test1.txt"],
    "gtsrb": ["gtsrb/GTSRB/Final_Test/Images/*.ppm", "gtsrb/GT-final_test.csv"],
}
# The python-pickle versions of CIFAR (Krizhevsky 2009): batch files of a dict with "data"
# (N x 3072 uint8, channel-major 32x32) and the labels.
CIFAR_FILES = {"cifar10": ("cifar-10-batches-py",
                           [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
               "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels")}


class DatasetMissingError(FileNotFoundError):
    """A dataset is not under the data directory and downloading was not requested."""

    def __init__(self, name: str, data_dir: str | Path):
        self.name = name
        self.data_dir = str(data_dir)
        files = "\n".join(f"  {self.data_dir}/{f}" for f in EXPECTED_FILES[name])
        super().__init__(
            f"dataset '{name}' was not found in {self.data_dir}.\n"
            f"Expected files:\n{files}\n"
            f"Pass --download to fetch it there, or --data-dir to point at a copy."
        )


class DatasetUnreadableError(ValueError):
    """A dataset's files are present but cannot be read (truncated, corrupt): one line
    naming the file (or the directory), what is wrong, and how to fix it."""

    def __init__(self, name: str, where: str | Path, problem: str):
        self.name = name
        super().__init__(f"dataset '{name}': {where}: {problem}; delete it and pass "
                         f"--download, or copy it again")


IDX_TYPES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}  # type code -> bytes


def check_idx_file(path: Path) -> str | None:
    """What is wrong with an IDX file (MNIST's format: a magic number with the type and
    rank, big-endian sizes, then the data), or None if its size is what its header says."""
    data = path.read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        return f"not an IDX file ({len(data):,} bytes, no IDX magic number)"
    rank = data[3]
    if len(data) < 4 + 4 * rank:
        return f"truncated IDX header ({len(data):,} bytes)"
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    expected = 4 + 4 * rank + int(np.prod(shape)) * IDX_TYPES[data[2]]
    if len(data) != expected:
        return (f"truncated or corrupt IDX file ({len(data):,} bytes; its header, shape "
                f"{tuple(shape)}, needs {expected:,})")
    return None


@dataclass
class Dataset:
    """In-memory splits of one in-distribution dataset, and its OOD sets (test-sized)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    ood: dict[str, torch.Tensor] = field(default_factory=dict)
    levels: int = 256  # pixel values are k / (levels - 1): the dequantization grid
    skipped_ood: dict[str, str] = field(default_factory=dict)  # absent pair -> file expected

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _stratified_split(x: np.ndarray, y: np.ndarray, fractions: tuple[float, float], seed: int):
    """Split into train/val/test with fixed, seeded, stratified shuffles."""
    from sklearn.model_selection import train_test_split

    val_frac, test_frac = fractions
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_frac, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_frac / (1.0 - test_frac), stratify=y_rest,
        random_state=seed)
    return x_train, y_train, x_val, y_val, x_test, y_test


def load_digits(seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits scaled to [0, 1]; stratified 60/20/20 split."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    xtr, ytr, xva, yva, xte, yte = _stratified_split(x, y, (0.2, 0.2), seed)
    t = torch.from_numpy
    return Dataset(DIGITS, t(xtr), t(ytr), t(xva), t(yva), t(xte), t(yte), num_classes=10,
                   levels=17)


def _read_cifar(name: str, data_dir: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels of a CIFAR pickle split, read as torchvision
    reads them (latin-1 pickles) but without its MD5 check, which only the original files
    pass."""
    import pickle

    folder, train_files, test_files, label_key = CIFAR_FILES[name]
    images, labels = [], []
    for file_name in train_files if train else test_files:
        path = data_dir / folder / file_name
        if not path.is_file():
            raise DatasetMissingError(name, data_dir)
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(entry[label_key])
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as error:
            raise DatasetUnreadableError(name, path, f"not a CIFAR batch "
                                         f"({type(error).__name__}: {error})") from None
    return np.concatenate(images), np.asarray(labels, dtype=np.int64)


def _torchvision_dataset(name: str, data_dir: Path, train: bool, download: bool):
    import torchvision.datasets as tvd

    if name in ("mnist", "fashionmnist", "kmnist"):  # name the bad file, if one is
        for relative in EXPECTED_FILES[name]:
            path = data_dir / relative
            problem = check_idx_file(path) if path.is_file() else None
            if problem:
                raise DatasetUnreadableError(name, path, problem)
    kwargs = {"root": str(data_dir), "download": download}
    try:
        if name == "mnist":
            ds = tvd.MNIST(train=train, **kwargs)
        elif name == "fashionmnist":
            ds = tvd.FashionMNIST(train=train, **kwargs)
        elif name == "kmnist":
            ds = tvd.KMNIST(train=train, **kwargs)
        elif name == "svhn":
            ds = tvd.SVHN(split="train" if train else "test", **kwargs)
        elif name in CIFAR_FILES:  # downloaded by torchvision, read by `_read_cifar`
            tvd_class = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            ds = tvd_class(train=train, **kwargs) if download else None
        else:
            raise ValueError(f"unknown dataset '{name}'")
    except RuntimeError as error:
        if "not found" not in str(error).lower():  # torchvision: "Dataset not found. ..."
            raise DatasetUnreadableError(name, data_dir, f"unreadable files ({error})") from None
        if download:
            raise
        raise DatasetMissingError(name, data_dir) from error
    except (AssertionError, EOFError, ValueError, KeyError, OSError) as error:
        # a truncated pickle (CIFAR-10) or .mat file (SVHN), or a bad header
        raise DatasetUnreadableError(name, data_dir, f"unreadable files "
                                     f"({type(error).__name__}: {error})") from None
    return ds


def _torchvision_split(name: str, data_dir: Path, train: bool, download: bool):
    ds = _torchvision_dataset(name, data_dir, train, download)
    if name in CIFAR_FILES:
        return _read_cifar(name, data_dir, train)
    if name in ("mnist", "fashionmnist", "kmnist"):
        x = ds.data.numpy()[:, None, :, :]
        y = ds.targets.numpy()
    elif name == "svhn":
        x = ds.data  # (N, 3, 32, 32) uint8
        y = ds.labels
    return x, np.asarray(y, dtype=np.int64)


def load_image_dataset(name: str, data_dir: str | Path, download: bool = False,
                       seed: int = 0, val_fraction: float = 0.1) -> Dataset:
    """MNIST, FashionMNIST, KMNIST, SVHN, CIFAR-10 or CIFAR-100 (torchvision's files).

    The validation set is a seeded, stratified `val_fraction` of the training split.
    Raises DatasetMissingError when the files are absent and `download` is False.
    """
    from sklearn.model_selection import train_test_split

    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir() and not download:
        raise DatasetMissingError(name, data_dir)
    x, y = _torchvision_split(name, data_dir, train=True, download=download)
    x_test, y_test = _torchvision_split(name, data_dir, train=False, download=download)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=val_fraction, stratify=y, random_state=seed)

    def to_tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a)).float().div_(255.0)

    return Dataset(name, to_tensor(x_train), torch.from_numpy(y_train), to_tensor(x_val),
                   torch.from_numpy(y_val), to_tensor(x_test), torch.from_numpy(y_test),
                   num_classes=NUM_CLASSES.get(name, 10))


def load_tiny_imagenet(data_dir: str | Path, n: int, size: tuple[int, int]) -> torch.Tensor:
    """The first `n` images (sorted by name) of Tiny ImageNet's test folder (its validation
    folder if the test one is absent), (n, 3, 64, 64) in [0, 1]: the OOD set of document
    003, read from the standard layout `tiny-imagenet-200/{test,val}/images/*.JPEG`
    (`size` unused: `match_shape` resizes the batch)."""
    from PIL import Image, UnidentifiedImageError

    root = Path(data_dir).expanduser() / "tiny-imagenet-200"
    paths: list[Path] = []
    for split in ("test", "val"):
        paths = sorted((root / split / "images").glob("*.JPEG"))
        if paths:
            break
    if not paths:
        raise DatasetMissingError(TINY_IMAGENET, data_dir)
    images = []
    for path in paths[:n]:
        try:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as error:
            raise DatasetUnreadableError(TINY_IMAGENET, path, f"not an image ({error})") \
                from None
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous()


def _resized(image, size: tuple[int, int]) -> np.ndarray:
    """A PIL image as an RGB uint8 array of `size` (H, W), bilinear."""
    from PIL import Image

    return np.asarray(image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR),
                      dtype=np.uint8)


def _torchvision_images(name: str, build, data_dir: Path, n: int,
                        size: tuple[int, int]) -> torch.Tensor:
    """The first `n` images of a torchvision dataset (built by `build(root)`), resized to
    `size`, as (n, 3, H, W) in [0, 1]; its absence as DatasetMissingError."""
    try:
        dataset = build(str(Path(data_dir).expanduser()))
    except RuntimeError as error:
        if "not found" in str(error).lower():
            raise DatasetMissingError(name, data_dir) from None
        raise DatasetUnreadableError(name, data_dir, str(error)) from None
    except (OSError, ValueError, KeyError) as error:
        raise DatasetUnreadableError(name, data_dir, f"{type(error).__name__}: {error}") \
            from None
    images = [_resized(dataset[i][0], size) for i in range(min(n, len(dataset)))]
    if not images:
        raise DatasetMissingError(name, data_dir)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)


def load_emnist_letters(data_dir: str | Path, n: int, size: tuple[int, int]) -> torch.Tensor:
    """The first `n` test images of EMNIST letters (torchvision's IDX files), transposed
    upright as the EMNIST authors describe, (n, 1, 28, 28) in [0, 1] (thesis Table 3.1:
    FashionMNIST -> EMNIST)."""
    import torchvision.datasets as tvd

    root = Path(data_dir).expanduser()
    for relative in EXPECTED_FILES["emnist"]:
        path = root / relative
        if not path.is_file():
            raise DatasetMissingError("emnist", data_dir)
        problem = check_idx_file(path)
        if problem:
            raise DatasetUnreadableError("emnist", path, problem)
    dataset = tvd.EMNIST(str(root), split="letters", train=False, download=False)
    x = dataset.data[:n].transpose(1, 2)[:, None].float().div_(255.0)
    return x.contiguous()


def load_dtd(data_dir: str | Path, n: int, size: tuple[int, int]) -> torch.Tensor:
    """The first `n` images of the Describable Textures test split (partition 1,
    torchvision's `DTD` layout `dtd/dtd/{images,labels}`), resized (thesis Table 3.1)."""
    import torchvision.datasets as tvd

    return _torchvision_images("dtd", lambda root: tvd.DTD(root, split="test"), data_dir, n,
                               size)


def load_gtsrb(data_dir: str | Path, n: int, size: tuple[int, int]) -> torch.Tensor:
    """The first `n` images of the GTSRB test split (torchvision's `GTSRB` layout
    `gtsrb/GTSRB/Final_Test/Images/*.ppm` and `gtsrb/GT-final_test.csv`), resized (thesis
    Table 3.1)."""
    import torchvision.datasets as tvd

    return _torchvision_images("gtsrb", lambda root: tvd.GTSRB(root, split="test"), data_dir,
                               n, size)


# OOD sets that are never trained on: name -> loader(data_dir, n, (H, W)) -> (n, C, h, w)
OOD_ONLY_LOADERS = {TINY_IMAGENET: load_tiny_imagenet, "emnist": load_emnist_letters,
                    "dtd": load_dtd, "gtsrb": load_gtsrb}
# how to tell that an OOD-only set's files are present (a glob under the data directory)
OOD_ONLY_PRESENT = {TINY_IMAGENET: ("tiny-imagenet-200/test/images/*.JPEG",
                                    "tiny-imagenet-200/val/images/*.JPEG"),
                    "emnist": ("EMNIST/raw/emnist-letters-test-images-idx3-ubyte",),
                    "dtd": ("dtd/dtd/labels/test1.txt",),
                    "gtsrb": ("gtsrb/GT-final_test.csv",)}


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
    for train in (True, False):
        _torchvision_dataset(name, data_dir, train, download)
    if name in CIFAR_FILES:
        folder, train_files, test_files, _ = CIFAR_FILES[name]
        if not all((data_dir / folder / f).is_file() for f in train_files + test_files):
            raise DatasetMissingError(name, data_dir)


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False,
                 seed: int = 0, ood: bool = True) -> Dataset:
    """Load an in-distribution dataset by name, with its OOD sets sized like its test set."""
    if name == DIGITS:
        data = load_digits(seed)
    elif name in IMAGE_DATASETS:
        if data_dir is None:
            raise DatasetMissingError(name, "<no --data-dir given>")
        data = load_image_dataset(name, data_dir, download=download, seed=seed)
    else:
        raise ValueError(f"unknown dataset '{name}'; known: {', '.join(DATASET_NAMES)}")
    if ood:
        n = len(data.x_test)
        shape = data.input_shape
        data.ood.update(noise_ood_sets(n, shape, seed=seed + 1))
        data.ood["natural_patches"] = natural_image_patches(n, shape, seed=seed + 2)
        for other in CROSS_DATASET_OOD.get(name, ()):
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
                 "cifar100": "cifar-100-python/t*"}


def dataset_files(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """The files `name` is read from, those present: scikit-learn's bundled digits file, or
    the torchvision files under `data_dir` (what a provenance record hashes)."""
    if name == DIGITS:
        from importlib.resources import files

        return [Path(str(files("sklearn.datasets") / "data" / "digits.csv.gz"))]
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


def load_trial_data(config: dict) -> Dataset:
    """The dataset of a trial's config (`dataset`, `data_dir`, `data_seed`); with
    `normal_class` >= 0, its one-class anomaly version."""
    data = load_dataset(config["dataset"], config.get("data_dir"), download=False,
                        seed=config["data_seed"])
    if config.get("normal_class", -1) >= 0:
        data = one_class_split(data, config["normal_class"], seed=config["data_seed"])
    return data


def one_class_split(data: Dataset, normal_class: int, seed: int = 0) -> Dataset:
    """Class anomaly detection (NOTES.md B, Tables 3.2/3.3): train, validate and test on
    `normal_class` alone; the test examples of every other class, in an order drawn with
    `seed`, are the one OOD set, `other_classes`. The OOD evaluation compares the ID test
    set with as many OOD inputs, the first ones: a seeded random sample of the other
    classes, not the first classes of the file."""
    if not 0 <= normal_class < data.num_classes:
        raise ValueError(f"normal_class must be in 0..{data.num_classes - 1}, got {normal_class}")

    def keep(x, y):
        return x[y == normal_class], y[y == normal_class]

    others = data.x_test[data.y_test != normal_class]
    order = torch.randperm(len(others), generator=torch.Generator().manual_seed(seed))
    return Dataset(f"{data.name}-class{normal_class}", *keep(data.x_train, data.y_train),
                   *keep(data.x_val, data.y_val), *keep(data.x_test, data.y_test),
                   num_classes=data.num_classes, ood={"other_classes": others[order]},
                   levels=data.levels)


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
