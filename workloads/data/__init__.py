"""Data: in-distribution datasets (`datasets`) and their OOD sets (`ood_sets`)."""

from workloads.data.datasets import (
    DATASET_NAMES,
    DIGITS,
    IMAGE_DATASETS,
    Dataset,
    DatasetMissingError,
    DatasetUnreadableError,
    absent_ood_sets,
    check_idx_file,
    dataset_files,
    ensure_dataset,
    iterate_minibatches,
    load_celeba,
    load_dataset,
    load_digits,
    load_image_dataset,
    load_trial_data,
    one_class_split,
)
from workloads.data.ood_sets import (
    CROSS_DATASET_OOD,
    match_shape,
    natural_image_patches,
    noise_ood_sets,
)

__all__ = [
    "CROSS_DATASET_OOD", "DATASET_NAMES", "DIGITS", "IMAGE_DATASETS", "Dataset",
    "DatasetMissingError", "DatasetUnreadableError", "absent_ood_sets",
    "check_idx_file", "dataset_files",
    "ensure_dataset", "iterate_minibatches", "load_celeba", "load_dataset", "load_digits",
    "load_image_dataset", "load_trial_data", "match_shape", "natural_image_patches",
    "noise_ood_sets", "one_class_split",
]
