"""The image datasets torchvision downloads: MNIST, FashionMNIST and KMNIST (IDX files),
SVHN (.mat), CIFAR-10 and CIFAR-100 (python pickles, read here without torchvision's MD5
check), each file checked so that a truncated one is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from workloads.data.celeba import load_celeba
from workloads.data.dataset import (
    CELEBA,
    EXPECTED_FILES,
    NUM_CLASSES,
    Dataset,
    DatasetMissingError,
    DatasetUnreadableError,
)
from workloads.data.idx import check_idx_file

# The python-pickle versions of CIFAR (Krizhevsky 2009): batch files of a dict with "data"
# (N x 3072 uint8, channel-major 32x32) and the labels.
CIFAR_FILES = {"cifar10": ("cifar-10-batches-py",
                           [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
               "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels")}


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


def torchvision_dataset(name: str, data_dir: Path, train: bool, download: bool):
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
    ds = torchvision_dataset(name, data_dir, train, download)
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
