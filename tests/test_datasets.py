import struct

import numpy as np
import pytest
import torch

from workloads.data import (
    DatasetMissingError,
    ensure_dataset,
    iterate_minibatches,
    load_dataset,
    load_digits,
    natural_image_patches,
)


def write_idx(folder, prefix, n, seed):
    """Write MNIST-format IDX files (big-endian header, unsigned bytes) the way LeCun did."""
    rng = np.random.default_rng(seed)
    raw = folder / prefix / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("t10k", n // 4)):
        labels = np.arange(count, dtype=np.uint8) % 10
        images = (rng.random((count, 28, 28)) * 255).astype(np.uint8)
        images[:, :, :3] = labels[:, None, None] * 25  # a label-dependent stripe
        with open(raw / f"{split}-images-idx3-ubyte", "wb") as f:
            f.write(struct.pack(">IIII", 0x00000803, count, 28, 28) + images.tobytes())
        with open(raw / f"{split}-labels-idx1-ubyte", "wb") as f:
            f.write(struct.pack(">II", 0x00000801, count) + labels.tobytes())
    return images, labels


def test_mnist_loader_reads_idx_files(tmp_path):
    test_images, test_labels = write_idx(tmp_path, "MNIST", 200, seed=0)
    data = load_dataset("mnist", tmp_path)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.x_train) + len(data.x_val) == 200 and len(data.x_test) == 50
    assert torch.equal(data.y_test, torch.from_numpy(test_labels.astype(np.int64)))
    assert torch.allclose(data.x_test[:, 0], torch.from_numpy(test_images).float() / 255)
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert set(data.ood) == {"gaussian_noise", "uniform_noise", "natural_patches"}
    for x in data.ood.values():
        assert x.shape == data.x_test.shape


def test_cross_dataset_ood_pairs_are_used_when_present(tmp_path):
    write_idx(tmp_path, "MNIST", 200, seed=0)
    write_idx(tmp_path, "FashionMNIST", 120, seed=1)
    data = load_dataset("mnist", tmp_path)
    assert "fashionmnist" in data.ood and "kmnist" not in data.ood
    assert data.ood["fashionmnist"].shape == (30, 1, 28, 28)


def test_missing_dataset_names_directory_files_and_download(tmp_path):
    with pytest.raises(DatasetMissingError) as info:
        ensure_dataset("fashionmnist", tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "FashionMNIST/raw/train-images-idx3-ubyte" in message
    assert "--download" in message
    with pytest.raises(DatasetMissingError):
        load_dataset("cifar10", tmp_path / "absent")


def test_digits_split_is_seeded_stratified_and_scaled():
    a, b = load_digits(seed=0), load_digits(seed=0)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797
    assert a.input_shape == (1, 8, 8)
    assert a.x_train.min() >= 0 and a.x_train.max() == 1.0
    counts = torch.bincount(a.y_test, minlength=10).float()
    assert counts.max() - counts.min() <= 2  # stratified
    assert not torch.equal(load_digits(seed=1).y_test, a.y_test)


def test_natural_patches_fit_the_id_shape():
    gray = natural_image_patches(7, (1, 8, 8))
    colour = natural_image_patches(3, (3, 32, 32))
    assert gray.shape == (7, 1, 8, 8) and colour.shape == (3, 3, 32, 32)
    assert gray.min() >= 0 and gray.max() <= 1 and gray.std() > 0.01


def test_two_workers_see_exactly_one_workers_global_batches():
    single = list(iterate_minibatches(103, 8, epoch=3, seed=5))
    rank0 = list(iterate_minibatches(103, 8, epoch=3, seed=5, rank=0, world_size=2))
    rank1 = list(iterate_minibatches(103, 8, epoch=3, seed=5, rank=1, world_size=2))
    assert len(single) == 12  # incomplete last batch dropped
    for whole, a, b in zip(single, rank0, rank1):
        assert len(a) == len(b) == 4
        assert torch.equal(whole, torch.cat([a, b]))
    with pytest.raises(ValueError):
        list(iterate_minibatches(100, 9, epoch=0, world_size=2))


def test_one_class_split_keeps_one_class_and_makes_the_rest_ood():
    from workloads.data import load_digits, one_class_split

    data = load_digits()
    anomaly = one_class_split(data, 3)
    for y in (anomaly.y_train, anomaly.y_val, anomaly.y_test):
        assert (y == 3).all() and len(y) > 0
    assert list(anomaly.ood) == ["other_classes"]
    assert len(anomaly.ood["other_classes"]) == (data.y_test != 3).sum()
    assert anomaly.levels == data.levels == 17
    with pytest.raises(ValueError, match="normal_class"):
        one_class_split(data, 10)


def test_one_class_ood_half_is_a_seeded_random_sample_of_the_other_classes():
    """The OOD evaluation takes the first len(test) OOD inputs: they must be drawn from
    every other class (issue 13), the same for the same seed."""
    from workloads.data import load_digits, one_class_split

    data = load_digits()
    others_in_file_order = data.x_test[data.y_test != 0]
    n = int((data.y_test == 0).sum())
    first = one_class_split(data, 0, seed=0).ood["other_classes"]
    assert torch.equal(first, one_class_split(data, 0, seed=0).ood["other_classes"])
    assert not torch.equal(first, one_class_split(data, 0, seed=1).ood["other_classes"])
    assert not torch.equal(first[:n], others_in_file_order[:n])
    # the same inputs, in another order
    assert torch.equal(first.flatten(1).sort(0).values,
                       others_in_file_order.flatten(1).sort(0).values)
    # the sample the evaluation uses holds most of the other classes
    labels = [int(data.y_test[(data.x_test == x).all(dim=tuple(range(1, x.dim() + 1)))][0])
              for x in first[:n]]
    assert len(set(labels)) >= 7 and 0 not in labels


def write_cifar(folder, name, n, seed, num_classes=None, test_n=None):
    """Write CIFAR python-pickle batches (a dict of "data", N x 3072 uint8 channel-major,
    and the labels) as Krizhevsky's archives hold them: CIFAR-10's five data batches and
    test batch, or CIFAR-100's train / test / meta with fine and coarse labels; `n`
    training images and `test_n` (default n / 4) test images."""
    import pickle

    rng = np.random.default_rng(seed)
    cifar100 = name == "cifar100"
    num_classes = num_classes or (100 if cifar100 else 10)
    root = folder / ("cifar-100-python" if cifar100 else "cifar-10-batches-py")
    root.mkdir(parents=True, exist_ok=True)
    test_n = test_n or n // 4
    files = ({"train": n, "test": test_n} if cifar100
             else {**{f"data_batch_{i}": n // 5 for i in range(1, 6)}, "test_batch": test_n})
    written = {}
    for file_name, count in files.items():
        labels = [int(v) for v in np.arange(count) % num_classes]
        images = (rng.random((count, 3, 32, 32)) * 255).astype(np.uint8)
        images[:, 0, :3, :] = np.array(labels, dtype=np.uint8)[:, None, None] * 2
        entry = {"batch_label": file_name, "data": images.reshape(count, 3072),
                 "filenames": [f"{i}.png" for i in range(count)]}
        if cifar100:
            entry.update(fine_labels=labels, coarse_labels=[v // 5 for v in labels])
        else:
            entry["labels"] = labels
        with open(root / file_name, "wb") as f:
            pickle.dump(entry, f)
        written[file_name] = (images, np.array(labels))
    if cifar100:
        with open(root / "meta", "wb") as f:
            pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)],
                         "coarse_label_names": [f"s{i}" for i in range(20)]}, f)
    return written


def write_tiny_imagenet(folder, n, seed, split="test"):
    """Tiny ImageNet's standard layout: tiny-imagenet-200/<split>/images/<split>_<i>.JPEG,
    64x64 RGB JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = folder / "tiny-imagenet-200" / split / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"{split}_{i}.JPEG", quality=95)


def test_cifar100_pickles_and_tiny_imagenet_folder_are_read(tmp_path):
    """CIFAR-100 from its pickles (100 classes, channel-major), with Tiny ImageNet
    (resized 64 -> 32) and FashionMNIST (gray -> RGB, 28 -> 32) as its OOD sets (003)."""
    written = write_cifar(tmp_path, "cifar100", 2000, seed=0)
    write_tiny_imagenet(tmp_path, 600, seed=1, split="val")
    write_idx(tmp_path, "FashionMNIST", 2000, seed=2)
    data = load_dataset("cifar100", tmp_path)
    assert data.skipped_ood == {"svhn": "train_32x32.mat"}
    assert data.num_classes == 100 and data.input_shape == (3, 32, 32)
    test_images, test_labels = written["test"]
    assert torch.equal(data.y_test, torch.from_numpy(test_labels))
    assert torch.allclose(data.x_test, torch.from_numpy(test_images).float() / 255)
    assert len(data.x_train) + len(data.x_val) == 2000
    assert data.ood["tinyimagenet"].shape == (500, 3, 32, 32)
    assert data.ood["fashionmnist"].shape == (500, 3, 32, 32)
    assert "svhn" not in data.ood


def test_cifar10_pickles_are_read_and_a_bad_batch_is_named(tmp_path):
    written = write_cifar(tmp_path, "cifar10", 200, seed=0)
    data = load_dataset("cifar10", tmp_path, ood=False)
    assert data.num_classes == 10
    assert torch.equal(data.y_test, torch.from_numpy(written["test_batch"][1]))
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    from workloads.data import DatasetUnreadableError

    with pytest.raises(DatasetUnreadableError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path, ood=False)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetMissingError, match="cifar-10-batches-py/test_batch"):
        ensure_dataset("cifar10", tmp_path)


def test_absent_ood_sets_name_the_file_each_needs(tmp_path):
    write_tiny_imagenet(tmp_path, 2, seed=0)
    write_idx(tmp_path, "FashionMNIST", 40, seed=2)
    from workloads.data import absent_ood_sets

    assert absent_ood_sets("cifar100", tmp_path) == {"svhn": "train_32x32.mat"}
    assert set(absent_ood_sets("cifar10", None)) == {"svhn", "tinyimagenet", "fashionmnist",
                                                     "dtd", "gtsrb"}
    assert absent_ood_sets("digits", tmp_path) == {}


def write_emnist_letters(folder, n, seed):
    """EMNIST letters' test split as torchvision keeps it: IDX files under EMNIST/raw/,
    images stored transposed."""
    rng = np.random.default_rng(seed)
    raw = folder / "EMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    images = (rng.random((n, 28, 28)) * 255).astype(np.uint8)
    labels = (np.arange(n) % 26 + 1).astype(np.uint8)
    with open(raw / "emnist-letters-test-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 0x00000803, n, 28, 28) + images.tobytes())
    with open(raw / "emnist-letters-test-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 0x00000801, n) + labels.tobytes())
    return images


def write_dtd(folder, n, seed):
    """The Describable Textures layout: dtd/dtd/images/<texture>/<texture>_<i>.jpg and the
    split lists dtd/dtd/labels/{train,val,test}1.txt of "<texture>/<file>" lines."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = folder / "dtd" / "dtd"
    (base / "labels").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        texture = ("banded", "dotted")[i % 2]
        (base / "images" / texture).mkdir(parents=True, exist_ok=True)
        name = f"{texture}_{i:04d}.jpg"
        pixels = (rng.random((40 + i, 50, 3)) * 255).astype(np.uint8)  # sizes vary
        Image.fromarray(pixels).save(base / "images" / texture / name)
        lines.append(f"{texture}/{name}")
    for split in ("train", "val", "test"):
        (base / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")


def write_gtsrb(folder, n, seed):
    """GTSRB's test split: gtsrb/GTSRB/Final_Test/Images/<i>.ppm and gtsrb/GT-final_test.csv
    (semicolon-separated, with ClassId)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = folder / "gtsrb" / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True, exist_ok=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i in range(n):
        side = 30 + i
        Image.fromarray((rng.random((side, side, 3)) * 255).astype(np.uint8)).save(
            images / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;{side};{side};5;5;{side - 5};{side - 5};{i % 43}")
    (folder / "gtsrb" / "GT-final_test.csv").write_text("\n".join(rows) + "\n")


def test_thesis_table_3_1_ood_sets_emnist_dtd_gtsrb_are_read(tmp_path):
    """FashionMNIST -> EMNIST letters (upright), CIFAR-10 -> DTD and GTSRB (resized to 32x32),
    from files in their real layouts, read by torchvision's parsers."""
    write_idx(tmp_path, "FashionMNIST", 200, seed=0)
    letters = write_emnist_letters(tmp_path, 80, seed=1)
    fashion = load_dataset("fashionmnist", tmp_path)
    assert fashion.ood["emnist"].shape == (50, 1, 28, 28)
    upright = torch.from_numpy(letters[:50].transpose(0, 2, 1).copy()).float() / 255
    assert torch.allclose(fashion.ood["emnist"][:, 0], upright)
    write_cifar(tmp_path, "cifar10", 200, seed=2)
    write_dtd(tmp_path, 30, seed=3)
    write_gtsrb(tmp_path, 60, seed=4)
    cifar = load_dataset("cifar10", tmp_path)
    assert cifar.ood["dtd"].shape == (30, 3, 32, 32)  # all 30 of the test list
    assert cifar.ood["gtsrb"].shape == (50, 3, 32, 32)
    assert 0 <= cifar.ood["gtsrb"].min() and cifar.ood["gtsrb"].max() <= 1
    assert cifar.ood["fashionmnist"].shape == (50, 3, 32, 32)  # written above
    assert set(cifar.skipped_ood) == {"svhn", "tinyimagenet"}
    from workloads.data import absent_ood_sets

    assert set(absent_ood_sets("cifar10", tmp_path)) == {"svhn", "tinyimagenet"}
    (tmp_path / "gtsrb" / "GT-final_test.csv").unlink()
    assert "gtsrb" in absent_ood_sets("cifar10", tmp_path)
