"""Data sets (MNIST embedded, CIFAR-10/100 archives, a synthetic set), safe unpickling, augmentation.

``load_dataset(name, split, root=None, *, val_size=None, seed=0) -> (ImageDataset, DatasetInfo)``;
images are NCHW with pixels in [0, 1] (``ImageDataset.tensors()`` gives float32).
"""

from smoothinf.data.dataset import DatasetInfo, ImageDataset
from smoothinf.data.registry import (
    default_data_root,
    get_dataset_info,
    list_datasets,
    load_dataset,
    load_splits,
)
from smoothinf.data.splits import SPLITS
from smoothinf.data.transforms import augment_crop_flip

__all__ = [
    "SPLITS",
    "DatasetInfo",
    "ImageDataset",
    "augment_crop_flip",
    "default_data_root",
    "get_dataset_info",
    "list_datasets",
    "load_dataset",
    "load_splits",
]
