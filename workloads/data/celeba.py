"""CelebA (document 002's in-distribution set): the aligned JPEGs with their partition and
attribute lists, cropped and resized to 32 x 32, labelled by one binary attribute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from workloads.data.dataset import (
    CELEBA,
    NUM_CLASSES,
    Dataset,
    DatasetMissingError,
    DatasetUnreadableError,
)
from workloads.data.image_folders import read_images

CELEBA_ATTRIBUTE = "Male"  # CelebA's label: this binary attribute of list_attr_celeba.txt
CELEBA_SIZE = 32  # document 002 §3.3.3: "resize and crop the data into size 32 x 32"


def celeba_root(data_dir: Path, download: bool) -> Path:
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
    root = celeba_root(data_dir, download)
    files, partition, labels = _read_celeba_lists(root)
    x = read_images(CELEBA, [root / "img_align_celeba" / f for f in files],
                     lambda image: _center_cropped(image, CELEBA_SIZE))

    def part(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        keep = partition == k
        images = torch.from_numpy(np.ascontiguousarray(x[keep].transpose(0, 3, 1, 2)))
        return images.float().div_(255.0), torch.from_numpy(labels[keep])

    return Dataset(CELEBA, *part(0), *part(1), *part(2), num_classes=NUM_CLASSES[CELEBA])
