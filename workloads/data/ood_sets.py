"""OOD sets built for any in-distribution set (NOTES.md E): Gaussian and uniform noise,
natural-image patches cut from scikit-learn's bundled sample photos, and the cross-dataset
pairs of NOTES.md (A: CIFAR-10 <-> SVHN; B: FashionMNIST -> MNIST, KMNIST, EMNIST and CIFAR-10
-> DTD, GTSRB, Places365, iNaturalist (plants) as in thesis Table 3.1; D: CIFAR-10/100 ->
SVHN, Tiny ImageNet, FashionMNIST; document 002 §3.3: CelebA -> SVHN, LSUN), resized to the
ID input shape."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Cross-dataset OOD pairs (NOTES.md A and B). Only those present on disk are used.
CROSS_DATASET_OOD = {
    "mnist": ("fashionmnist", "kmnist"),
    "fashionmnist": ("mnist", "kmnist", "emnist"),  # thesis Table 3.1
    "kmnist": ("mnist", "fashionmnist"),
    "svhn": ("cifar10",),
    # document 003, Tables 1-3 (Gaussian noise is among every set's noise sets); thesis
    # Table 3.1: CIFAR-10 -> SVHN, iNaturalist (plants), DTD, Places365, GTSRB
    "cifar10": ("svhn", "tinyimagenet", "fashionmnist", "dtd", "gtsrb", "places365",
                "inaturalist_plants"),
    "cifar100": ("svhn", "tinyimagenet", "fashionmnist"),
    "celeba": ("svhn", "lsun"),  # document 002 §3.3 (VAEs on CelebA)
}


def natural_image_patches(n: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """`n` random patches of scikit-learn's bundled sample photos, resized to `shape`.

    Patches are square crops of random size (1/8 to 1/2 of the shorter side), converted to
    grayscale when `shape` has one channel, and scaled to [0, 1].
    """
    from sklearn.datasets import load_sample_images

    channels, height, width = shape
    images = [torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0
              for img in load_sample_images().images]
    generator = torch.Generator().manual_seed(seed)
    patches = []
    for i in range(n):
        img = images[i % len(images)]
        _, h, w = img.shape
        side = int(torch.randint(min(h, w) // 8, min(h, w) // 2, (1,), generator=generator))
        top = int(torch.randint(0, h - side, (1,), generator=generator))
        left = int(torch.randint(0, w - side, (1,), generator=generator))
        patches.append(img[:, top:top + side, left:left + side])
    out = torch.stack([F.interpolate(p[None], size=(height, width), mode="area")[0]
                       for p in patches])
    if channels == 1:
        gray = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        out = (out * gray).sum(dim=1, keepdim=True)
    return out.clamp_(0.0, 1.0)


def noise_ood_sets(n: int, shape: tuple[int, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    """Gaussian noise (mean 0.5, std 0.25, clipped) and uniform noise on [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = (0.5 + 0.25 * torch.randn((n, *shape), generator=generator)).clamp_(0.0, 1.0)
    uniform = torch.rand((n, *shape), generator=generator)
    return {"gaussian_noise": gaussian, "uniform_noise": uniform}


def match_shape(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Resize and convert channels so a cross-dataset OOD set fits the ID input shape."""
    channels, height, width = shape
    if x.shape[2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    if x.shape[1] == 3 and channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return x.clamp(0.0, 1.0).contiguous()
