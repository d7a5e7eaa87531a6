"""Datasets, dataset descriptions and transforms."""
from .builtin import DATASETS, build_dataset, coco_panoptic_dataset
from .cityscapes import cityscapes_panoptic_dataset
from .coco_panoptic import COCOPanopticDataset, DatasetError, cityscapes_image_path, collate, masks_to_boxes
from .description import (
    CITYSCAPES,
    COCO_PANOPTIC,
    Category,
    DatasetDescription,
    get_description,
    register_description,
)
from .synthetic import SYNTHETIC, SyntheticConfig, generate_synthetic, synthetic_dataset

__all__ = [
    "CITYSCAPES",
    "COCO_PANOPTIC",
    "DATASETS",
    "SYNTHETIC",
    "COCOPanopticDataset",
    "Category",
    "DatasetDescription",
    "DatasetError",
    "SyntheticConfig",
    "build_dataset",
    "cityscapes_image_path",
    "cityscapes_panoptic_dataset",
    "coco_panoptic_dataset",
    "collate",
    "generate_synthetic",
    "get_description",
    "masks_to_boxes",
    "register_description",
    "synthetic_dataset",
]
