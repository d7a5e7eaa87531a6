"""Datasets, dataset descriptions and transforms."""
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
    "SYNTHETIC",
    "COCOPanopticDataset",
    "Category",
    "DatasetDescription",
    "DatasetError",
    "SyntheticConfig",
    "cityscapes_image_path",
    "collate",
    "generate_synthetic",
    "get_description",
    "masks_to_boxes",
    "register_description",
    "synthetic_dataset",
]
