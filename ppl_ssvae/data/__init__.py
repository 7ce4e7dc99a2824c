"""Data layer: datasets by name, semi-supervised splits, mixed batches."""

from .batching import SemiSupervisedBatches, parse_labelled_share
from .datasets import DATASETS, Dataset, load
from .idx import read_idx, write_idx
from .split import (
    UNLABELLED,
    SemiSupervisedData,
    load_recipe,
    parse_class_ids,
    semi_supervised_split,
)

__all__ = [
    "DATASETS",
    "UNLABELLED",
    "Dataset",
    "SemiSupervisedBatches",
    "SemiSupervisedData",
    "load",
    "load_recipe",
    "parse_class_ids",
    "parse_labelled_share",
    "read_idx",
    "semi_supervised_split",
    "write_idx",
]
