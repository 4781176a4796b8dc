"""Datasets: the embedded `digits` default and torchvision image sets, each with its OOD sets
(`workloads.data.ood_sets`), the one-class split of class anomaly detection, and the
minibatches every training path iterates.

Every loader returns a `Dataset` of in-memory float tensors in [0, 1] with shape
(N, C, H, W); vector models flatten them.
"""

from __future__ import annotations

import os
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
CELEBA = "celeba"  # in-distribution set of document 002 (VAEs; OOD: SVHN, LSUN)
IMAGE_DATASETS = ("mnist", "fashionmnist", "kmnist", "svhn", "cifar10", "cifar100", CELEBA)
DATASET_NAMES = (DIGITS, *IMAGE_DATASETS)
TINY_IMAGENET = "tinyimagenet"  # an OOD set only (document 003): no labels are read
CELEBA_ATTRIBUTE = "Male"  # CelebA's label: this binary attribute of list_attr_celeba.txt
CELEBA_SIZE = 32  # document 002 §3.3.3: "resize and crop the data into size 32 x 32"
NUM_CLASSES = {"cifar100": 100, CELEBA: 2}  # the others have 10

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
    "places365": ["places365/places365_val.txt", "places365/val_256/*.jpg"],
    "inaturalist_plants": ["iNaturalist/2021_valid/<NNNNN_Plantae_phylum_class_order_family_"
                           "genus_species>/*.jpg (or iNaturalist/images/*.jpg)"],
    "lsun": ["LSUN/test/*.jpg (or LSUN_resize/LSUN_resize/*.jpg)"],
    CELEBA: ["celeba/list_eval_partition.txt", "celeba/list_attr_celeba.txt",
             "celeba/img_align_celeba/*.jpg"],
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
    # True: each OOD set is compared with as many ID test inputs as it has, and the reverse
    # (n = min of the two, the thesis' balanced Table 3.1); False: every input of both
    balanced_ood: bool = True

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
    """MNIST, FashionMNIST, KMNIST, SVHN, CIFAR-10, CIFAR-100 (torchvision's files) or
    CelebA (`load_celeba`).

    The validation set is a seeded, stratified `val_fraction` of the training split
    (CelebA: its official validation partition; `seed` and `val_fraction` are unused).
    Raises DatasetMissingError when the files are absent and `download` is False.
    """
    from sklearn.model_selection import train_test_split

    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir() and not download:
        raise DatasetMissingError(name, data_dir)
    if name == CELEBA:
        return load_celeba(data_dir, download=download)
    x, y = _torchvision_split(name, data_dir, train=True, download=download)
    x_test, y_test = _torchvision_split(name, data_dir, train=False, download=download)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=val_fraction, stratify=y, random_state=seed)

    def to_tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a)).float().div_(255.0)

    return Dataset(name, to_tensor(x_train), torch.from_numpy(y_train), to_tensor(x_val),
                   torch.from_numpy(y_val), to_tensor(x_test), torch.from_numpy(y_test),
                   num_classes=NUM_CLASSES.get(name, 10))


def _celeba_root(data_dir: Path, download: bool) -> Path:
    """`<data_dir>/celeba`, downloaded there by torchvision's `CelebA` when asked and
    absent; DatasetMissingError when its partition list, attribute list or image folder
    is missing."""
    root = data_dir / "celeba"

    def present() -> bool:
        return ((root / "list_eval_partition.txt").is_file()
                and (root / "list_attr_celeba.txt").is_file()
                and (root / "img_align_celeba").is_dir())

    if download and not present():
        import torchvision.datasets as tvd

        tvd.CelebA(str(data_dir), split="all", target_type=[], download=True)
    if not present():
        raise DatasetMissingError(CELEBA, data_dir)
    return root


def _read_celeba_lists(root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """CelebA's image files, their partition (0 train, 1 valid, 2 test) from
    `list_eval_partition.txt` ("<file> <partition>" lines) and their label, the
    CELEBA_ATTRIBUTE column of `list_attr_celeba.txt` (a count line, a line of the 40
    attribute names, then "<file> <40 values of -1 or 1>" lines) mapped to {0, 1} as
    torchvision maps it. Both are whitespace-separated, as torchvision reads them."""
    partition_path = root / "list_eval_partition.txt"
    files, partition = [], []
    try:
        for line in partition_path.read_text().splitlines():
            if line.strip():
                file_name, part = line.split()
                files.append(file_name)
                partition.append(int(part))
    except (ValueError, UnicodeDecodeError) as error:
        raise DatasetUnreadableError(CELEBA, partition_path, f"not CelebA's partition list "
                                     f"({type(error).__name__}: {error})") from None
    if not files:
        raise DatasetUnreadableError(CELEBA, partition_path, "an empty partition list")
    attr_path = root / "list_attr_celeba.txt"
    values = {}
    try:
        lines = attr_path.read_text().splitlines()
        column = 1 + lines[1].split().index(CELEBA_ATTRIBUTE)
        for line in lines[2:]:
            fields = line.split()
            if fields:
                values[fields[0]] = int(fields[column])
        labels = [(values[file_name] + 1) // 2 for file_name in files]
    except (IndexError, ValueError, KeyError, UnicodeDecodeError) as error:
        raise DatasetUnreadableError(CELEBA, attr_path, f"not CelebA's attribute list with "
                                     f"'{CELEBA_ATTRIBUTE}' for every image of the partition "
                                     f"list ({type(error).__name__}: {error})") from None
    return files, np.asarray(partition, dtype=np.int64), np.asarray(labels, dtype=np.int64)


def _center_cropped(image, size: int) -> np.ndarray:
    """A PIL image as an RGB uint8 (size, size, 3) array: the shorter side resized to
    `size` (bilinear), then the central square cut out, as torchvision's
    `Resize(size)` + `CenterCrop(size)` do."""
    from PIL import Image

    width, height = image.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    image = image.convert("RGB").resize((new_width, new_height), Image.BILINEAR)
    left = int(round((new_width - size) / 2.0))
    top = int(round((new_height - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def load_celeba(data_dir: str | Path, download: bool = False) -> Dataset:
    """CelebA as an in-distribution set (document 002 §3.3: VAEs trained on CelebA, SVHN
    and LSUN as OOD), center-cropped to CELEBA_SIZE x CELEBA_SIZE RGB (§3.3.3: "resize and
    crop the data into size 32 x 32"), in [0, 1].

    Layout: torchvision's `CelebA(root)` with root `<data_dir>`, i.e.
    `celeba/img_align_celeba/*.jpg`, `celeba/list_eval_partition.txt` and
    `celeba/list_attr_celeba.txt`. The lists are read here as torchvision reads them but
    without its MD5 check (of these and of `identity_CelebA.txt`, `list_bbox_celeba.txt`,
    `list_landmarks_align_celeba.txt`, which are not needed), which only the original
    files pass. Splits are the official partitions (train / valid / test); the label is the
    binary attribute CELEBA_ATTRIBUTE ("Male": 1, else 0), so `num_classes` is 2.
    """
    data_dir = Path(data_dir).expanduser()
    root = _celeba_root(data_dir, download)
    files, partition, labels = _read_celeba_lists(root)
    x = _read_images(CELEBA, [root / "img_align_celeba" / f for f in files],
                     lambda image: _center_cropped(image, CELEBA_SIZE))

    def part(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        keep = partition == k
        images = torch.from_numpy(np.ascontiguousarray(x[keep].transpose(0, 3, 1, 2)))
        return images.float().div_(255.0), torch.from_numpy(labels[keep])

    return Dataset(CELEBA, *part(0), *part(1), *part(2), num_classes=NUM_CLASSES[CELEBA])


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


def _read_images(name: str, paths: list[Path], prepare) -> np.ndarray:
    """`prepare(image)` (an (H, W, 3) uint8 array) of each image file, stacked in order;
    decoded in a few threads (PIL releases the GIL while it decodes and resizes). A listed
    file that is absent or not an image is a DatasetUnreadableError naming it."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image, UnidentifiedImageError

    def read(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                return prepare(image)
        except FileNotFoundError:
            raise DatasetUnreadableError(name, path, "listed but absent") from None
        except (UnidentifiedImageError, OSError) as error:
            raise DatasetUnreadableError(name, path, f"not an image ({error})") from None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return np.stack(list(pool.map(read, paths)))


def _image_batch(name: str, paths: list[Path], size: tuple[int, int]) -> torch.Tensor:
    """The images at `paths` resized to `size` (H, W), as (N, 3, H, W) in [0, 1]."""
    x = _read_images(name, paths, lambda image: _resized(image, size))
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def _spread(items: list, n: int) -> list:
    """`n` of `items` evenly spaced over the list (all of them when n >= len(items))."""
    k = min(n, len(items))
    return [items[i * len(items) // k] for i in range(k)]


def load_places365(data_dir: str | Path, n: int, size: tuple[int, int]) -> torch.Tensor:
    """The first `n` images of the Places365 validation list, resized (thesis 000,
    Table 3.1: CIFAR-10 -> Places365).

    Layout: torchvision's `Places365(root, split="val", small=True)` with root
    `<data_dir>/places365`: the list `places365/places365_val.txt` ("<file> <class>" lines)
    and the 256x256 images `places365/val_256/<file>`. The list is parsed as torchvision
    parses it, but read here without torchvision's MD5 check of the list (and of
    `categories_places365.txt`, not needed: no labels are read), which only the original
    files pass.
    """
    root = Path(data_dir).expanduser() / "places365"
    listing = root / "places365_val.txt"
    if not listing.is_file() or not (root / "val_256").is_dir():
        raise DatasetMissingError("places365", data_dir)
    names = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetUnreadableError("places365", listing, "an empty image list")
    paths = [root / "val_256" / name.lstrip("/") for name in names[:n]]
    return _image_batch("places365", paths, size)


PLANTAE = "Plantae"  # iNaturalist's plant kingdom (thesis 000, Table 3.1: "plants")


def _inaturalist_plant_files(version_dir: Path, data_dir: str | Path) -> list[Path]:
    """The images of the Plantae categories of an iNaturalist 2021 folder, as torchvision's
    `INaturalist` indexes it (category folders `NNNNN_Kingdom_Phylum_Class_Order_Family_
    Genus_species`, kingdom from the name), sorted by category and file name."""
    import torchvision.datasets as tvd

    try:
        dataset = tvd.INaturalist(str(version_dir.parent), version=version_dir.name,
                                  target_type="kingdom")
    except RuntimeError as error:
        if "not found" in str(error).lower():
            raise DatasetMissingError("inaturalist_plants", data_dir) from None
        raise DatasetUnreadableError("inaturalist_plants", version_dir, str(error)) from None
    plantae = dataset.categories_index["kingdom"].get(PLANTAE)
    return sorted(Path(dataset.root, dataset.all_categories[category], file_name)
                  for category, file_name in dataset.index
                  if dataset.categories_map[category]["kingdom"] == plantae)


def load_inaturalist_plants(data_dir: str | Path, n: int,
                            size: tuple[int, int]) -> torch.Tensor:
    """`n` plant images of iNaturalist, resized (thesis 000, Table 3.1: CIFAR-10 ->
    iNaturalist (plants); the thesis splits iNaturalist "into 'Animalia' and 'Plantae'
    parts", and the OOD benchmark of Huang & Li, MOS 2021, uses plants).

    Primary layout: torchvision's `INaturalist(root, version="2021_valid")` with root
    `<data_dir>/iNaturalist`, i.e. `iNaturalist/2021_valid/<NNNNN_Kingdom_Phylum_Class_
    Order_Family_Genus_species>/*.jpg`; only the categories whose kingdom is Plantae are
    kept, and `n` images are taken evenly spaced over them (sorted by category, then file),
    so every part of the plant taxonomy is drawn from. Where that folder is absent (or has
    no Plantae category), the prepared benchmark folder of Huang & Li (their 10,000 plant
    images) is read: `iNaturalist/images/*.jpg`, the first `n` by name.
    """
    root = Path(data_dir).expanduser() / "iNaturalist"
    version_dir = root / "2021_valid"
    paths: list[Path] = []
    if version_dir.is_dir():
        paths = _spread(_inaturalist_plant_files(version_dir, data_dir), n)
    if not paths:
        paths = sorted((root / "images").glob("*.jpg"))[:n]
    if not paths:
        raise DatasetMissingError("inaturalist_plants", data_dir)
    return _image_batch("inaturalist_plants", paths, size)


# The prepared LSUN OOD folders of ODIN's release (Liang et al. 2018; 10,000 test images,
# 32x32): `LSUN.tar.gz` (crops) and `LSUN_resize.tar.gz` (resized), as extracted.
LSUN_FOLDERS = ("LSUN/test", "LSUN_resize/LSUN_resize")


def load_lsun(data_dir: str | Path, n: int, size: tuple[int, int]) -> torch.Tensor:
    """The first `n` images (by name) of the prepared LSUN OOD folder, resized (document
    002, §3.3.1: CelebA -> LSUN).

    torchvision's `LSUN` reads LSUN's LMDB databases and needs the `lmdb` package, which
    this project does not install; the folder read instead is ODIN's widely used release,
    `LSUN/test/*.jpg` (or `LSUN_resize/LSUN_resize/*.jpg`), read with PIL.
    """
    root = Path(data_dir).expanduser()
    for folder in LSUN_FOLDERS:
        paths = sorted((root / folder).glob("*.jpg"))[:n]
        if paths:
            return _image_batch("lsun", paths, size)
    raise DatasetMissingError("lsun", data_dir)


# OOD sets that are never trained on: name -> loader(data_dir, n, (H, W)) -> (n, C, h, w)
OOD_ONLY_LOADERS = {TINY_IMAGENET: load_tiny_imagenet, "emnist": load_emnist_letters,
                    "dtd": load_dtd, "gtsrb": load_gtsrb, "places365": load_places365,
                    "inaturalist_plants": load_inaturalist_plants, "lsun": load_lsun}
# how to tell that an OOD-only set's files are present (a glob under the data directory)
OOD_ONLY_PRESENT = {TINY_IMAGENET: ("tiny-imagenet-200/test/images/*.JPEG",
                                    "tiny-imagenet-200/val/images/*.JPEG"),
                    "emnist": ("EMNIST/raw/emnist-letters-test-images-idx3-ubyte",),
                    "dtd": ("dtd/dtd/labels/test1.txt",),
                    "gtsrb": ("gtsrb/GT-final_test.csv",),
                    "places365": ("places365/places365_val.txt",),
                    "inaturalist_plants": (f"iNaturalist/2021_valid/*_{PLANTAE}_*/*.jpg",
                                           "iNaturalist/images/*.jpg"),
                    "lsun": tuple(f"{folder}/*.jpg" for folder in LSUN_FOLDERS)}


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
        _celeba_root(data_dir, download)
        return
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
                 "cifar100": "cifar-100-python/t*",
                 CELEBA: "celeba/*.txt"}  # CelebA: its lists, not its 202,599 images


def dataset_files(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """The files `name` is read from, those present: scikit-learn's bundled digits file, or
    the torchvision files under `data_dir` (what a provenance record hashes; for CelebA
    its partition and annotation lists)."""
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
    return Dataset(f"{data.name}-class{normal_class}", *keep(data.x_train, data.y_train),
                   *keep(data.x_val, data.y_val), *keep(data.x_test, data.y_test),
                   num_classes=data.num_classes, ood={"other_classes": others[order]},
                   levels=data.levels, balanced_ood=False)


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
