"""Data layer: datasets by name, semi-supervised splits, mixed batches."""

from .batching import SemiSupervisedBatches, parse_labelled_share
from .datasets import DATASETS, Dataset, load
from .idx import read_idx, write_idx
from .split import UNLABELLED, SemiSupervisedData, semi_supervised_split

__all__ = [
    "DATASETS",
    "UNLABELLED",
    "Dataset",
    "SemiSupervisedBatches",
    "SemiSupervisedData",
    "load",
    "parse_labelled_share",
    "read_idx",
    "semi_supervised_split",
    "write_idx",
]
