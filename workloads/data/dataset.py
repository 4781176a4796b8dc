"""The `Dataset` every loader returns (in-memory float tensors in [0, 1] of shape
(N, C, H, W), splits and OOD sets), the datasets' names, and the errors of a dataset that is
missing or unreadable."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

DIGITS = "digits"
CELEBA = "celeba"  # in-distribution set of document 002 (VAEs; OOD: SVHN, LSUN)
IMAGE_DATASETS = ("mnist", "fashionmnist", "kmnist", "svhn", "cifar10", "cifar100", CELEBA)
DATASET_NAMES = (DIGITS, *IMAGE_DATASETS)
TINY_IMAGENET = "tinyimagenet"  # an OOD set only (document 003): no labels are read
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
    # each test input's index in the dataset as loaded (None: its position in the test
    # files); per-example outputs key inputs by it, so trials of one data_seed align
    test_index: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def stratified_split(x: np.ndarray, y: np.ndarray, fractions: tuple[float, float], seed: int):
    """Split into train/val/test with fixed, seeded, stratified shuffles."""
    from sklearn.model_selection import train_test_split

    val_frac, test_frac = fractions
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_frac, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_frac / (1.0 - test_frac), stratify=y_rest,
        random_state=seed)
    return x_train, y_train, x_val, y_val, x_test, y_test
