"""Cityscapes panoptic, as written by cityscapesScripts' ``createPanopticImgs``.

Layout under ``root``::

    leftImg8bit/<split>/<city>/<image_id>_leftImg8bit.png
    gtFine/cityscapes_panoptic_<split>.json
    gtFine/cityscapes_panoptic_<split>/<image_id>_gtFine_panoptic.png

The JSON's ``images[].file_name`` (``..._gtFine_leftImg8bit.png``) names no real file, so images are
found from ``image_id`` (:func:`cityscapes_image_path`). Category ids are Cityscapes label ids
(the :data:`CITYSCAPES` preset); a JSON made with ``--use-train-id`` needs a description built from
its own categories (``description=None``).
"""
from __future__ import annotations

import os
from collections.abc import Callable

from .coco_panoptic import COCOPanopticDataset, cityscapes_image_path
from .description import CITYSCAPES, DatasetDescription


def cityscapes_panoptic_dataset(
    root: str,
    split: str = "train",
    transforms: Callable[[dict], dict] | None = None,
    description: DatasetDescription | None = CITYSCAPES,
) -> COCOPanopticDataset:
    root = str(root)
    image_root = os.path.join(root, "leftImg8bit", split)
    return COCOPanopticDataset(
        image_root,
        os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}.json"),
        os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}"),
        description=description,
        transforms=transforms,
        image_path_fn=cityscapes_image_path(image_root),
    )
