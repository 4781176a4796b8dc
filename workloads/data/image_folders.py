"""The OOD sets that are never trained on, read from their image folders (Tiny ImageNet,
DTD, GTSRB, Places365, iNaturalist plants, LSUN) or torchvision's files (EMNIST letters):
each loader returns its first `n` images as (n, C, H, W) in [0, 1]."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from workloads.data.dataset import (
    EXPECTED_FILES,
    TINY_IMAGENET,
    DatasetMissingError,
    DatasetUnreadableError,
)
from workloads.data.idx import check_idx_file


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


def read_images(name: str, paths: list[Path], prepare) -> np.ndarray:
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
    x = read_images(name, paths, lambda image: _resized(image, size))
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
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_image_folder(folder: str | Path, n: int, size: tuple[int, int]) -> torch.Tensor:
    """A researcher's own OOD set: `n` of the image files under `folder` (any depth, sorted
    by path, spread evenly over them), resized to `size`, (n, 3, H, W) in [0, 1]."""
    root = Path(folder).expanduser()
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetUnreadableError(root.name, root, "holds no image files "
                                     f"({', '.join(IMAGE_SUFFIXES)})")
    return _image_batch(root.name, _spread(paths, n), size)


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
