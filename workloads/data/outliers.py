"""Training outlier sets: the OOD data a detector is *trained* with (Liu et al. 2020's energy
fine-tuning; thesis section 3.6.6: "The energy-based model is trained with both
CIFAR-10/FashionMNIST as ID data and SVHN/MNIST as OOD data", Table 3.1's caption).

An outlier set is drawn from training data only, never from a test split, so the test OOD
sets stay unseen: SVHN's and MNIST's *training* splits for CIFAR-10 and FashionMNIST (their
test splits are among the evaluation's OOD sets, as in the thesis, which flags the overlap:
"84.0% ... or 79.44% when not taking into account MNIST and SVHN"). The embedded `digits`
have no second dataset; their outlier set is `shuffled_pixels`, each training digit with its
64 pixels in a random order of its own. It keeps the digits' 17-level pixel histogram and
ink mass (so it is not told apart by brightness statistics) and destroys the strokes; it is
none of the local test OOD sets: Gaussian and uniform noise have i.i.d. continuous pixels
with another histogram, and natural-image patches are smooth photographs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from workloads.data.datasets import Dataset, load_image_dataset
from workloads.data.ood_sets import match_shape

OUTLIER_SETS = ("auto", "svhn", "mnist", "shuffled_pixels")
# "auto": the thesis' outlier set of each ID dataset (section 3.6.6), ours for digits.
THESIS_OUTLIERS = {"cifar10": "svhn", "fashionmnist": "mnist", "digits": "shuffled_pixels"}


def resolve_outlier_set(name: str, dataset: str) -> str:
    """The outlier set `name` stands for with ID data `dataset` ("auto": `THESIS_OUTLIERS`).
    Raises ValueError for an unknown name, an "auto" without a pairing, or the ID dataset
    itself."""
    if name not in OUTLIER_SETS:
        raise ValueError(f"unknown outlier set '{name}'; known: {', '.join(OUTLIER_SETS)}")
    if name == "auto":
        if dataset not in THESIS_OUTLIERS:
            raise ValueError(f"no outlier set is paired with '{dataset}'; pairs: "
                             + ", ".join(f"{k} -> {v}" for k, v in THESIS_OUTLIERS.items()))
        return THESIS_OUTLIERS[dataset]
    if name == dataset:
        raise ValueError(f"the outlier set '{name}' is the in-distribution dataset itself")
    return name


def shuffled_pixels(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each image of `x` (N, C, H, W) with its pixel positions permuted by a random
    permutation of its own (the channels of a pixel move together)."""
    n, channels = x.shape[:2]
    flat = x.reshape(n, channels, -1)
    generator = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.rand(n, flat.shape[2], generator=generator), dim=1)
    return torch.gather(flat, 2, order[:, None, :].expand_as(flat)).reshape(x.shape)


def load_outliers(name: str, data: Dataset, data_dir: str | Path | None = None,
                  seed: int = 0) -> torch.Tensor:
    """The training outlier set `name` (see `resolve_outlier_set`) for ID data `data`: the
    training split of another dataset resized to the ID input shape, or the shuffled-pixel
    ID training images."""
    name = resolve_outlier_set(name, data.name)
    if name == "shuffled_pixels":
        return shuffled_pixels(data.x_train, seed)
    if data_dir is None:
        raise ValueError(f"the outlier set '{name}' needs a data directory")
    other = load_image_dataset(name, data_dir, seed=seed)
    return match_shape(other.x_train, data.input_shape)
