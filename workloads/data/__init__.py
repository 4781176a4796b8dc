"""Data: in-distribution datasets by name (`datasets`: the entry points), the `Dataset` they
return (`dataset`), their loaders by format (`torchvision_sets`: IDX, CIFAR pickles, SVHN
.mat; `celeba`; `image_folders`: the OOD-only sets; `idx`: the IDX check), their OOD sets
(`ood_sets`) and the outlier sets of energy fine-tuning (`outliers`)."""

from workloads.data.celeba import load_celeba
from workloads.data.dataset import (
    DATASET_NAMES,
    DIGITS,
    IMAGE_DATASETS,
    Dataset,
    DatasetMissingError,
    DatasetUnreadableError,
)
from workloads.data.datasets import (
    DIGITS_TRAIN_SIZE,
    SPLIT_PER_SEED,
    VAL_FRACTION,
    absent_ood_sets,
    dataset_files,
    ensure_dataset,
    iterate_minibatches,
    load_dataset,
    load_digits,
    load_trial_data,
    one_class_split,
    training_set_size,
    trial_data_seed,
)
from workloads.data.idx import check_idx_file
from workloads.data.ood_sets import (
    CROSS_DATASET_OOD,
    match_shape,
    natural_image_patches,
    noise_ood_sets,
)
from workloads.data.torchvision_sets import load_image_dataset

__all__ = [
    "CROSS_DATASET_OOD", "DATASET_NAMES", "DIGITS", "DIGITS_TRAIN_SIZE", "IMAGE_DATASETS",
    "Dataset",
    "DatasetMissingError", "DatasetUnreadableError", "absent_ood_sets",
    "check_idx_file", "dataset_files",
    "ensure_dataset", "iterate_minibatches", "load_celeba", "load_dataset", "load_digits",
    "load_image_dataset", "load_trial_data", "match_shape", "natural_image_patches",
    "noise_ood_sets", "one_class_split", "training_set_size", "trial_data_seed",
    "SPLIT_PER_SEED", "VAL_FRACTION",
]
