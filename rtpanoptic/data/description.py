"""Dataset descriptions: how contiguous train ids map to a dataset's categories.

Inside the model, semantic classes are contiguous train ids ``0..C-1`` (things and stuff
together) and box classes are thing indices ``0..K-1``; a :class:`DatasetDescription`
maps both to the dataset's category ids, names, colours and the thing/stuff split.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    id: int  # dataset category id (as in the COCO-panoptic JSON)
    name: str
    isthing: bool
    color: tuple[int, int, int]


@dataclass(frozen=True)
class DatasetDescription:
    """Categories in train-id order, plus the semantic ignore label."""

    name: str
    categories: tuple[Category, ...]
    ignore_label: int = 255

    def __post_init__(self):
        ids = [c.id for c in self.categories]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.name}: duplicate category ids {ids}")
        if 0 <= self.ignore_label < len(self.categories):
            raise ValueError(f"{self.name}: ignore_label {self.ignore_label} collides with a train id")

    @property
    def num_classes(self) -> int:
        """Semantic classes C (things and stuff)."""
        return len(self.categories)

    @property
    def thing_train_ids(self) -> list[int]:
        """Semantic train id of each thing index 0..K-1."""
        return [i for i, c in enumerate(self.categories) if c.isthing]

    @property
    def num_things(self) -> int:
        return len(self.thing_train_ids)

    @property
    def is_thing(self) -> list[bool]:
        return [c.isthing for c in self.categories]

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.categories]

    @property
    def colors(self) -> list[tuple[int, int, int]]:
        return [c.color for c in self.categories]

    def category_to_train_id(self) -> dict[int, int]:
        return {c.id: i for i, c in enumerate(self.categories)}

    def train_id_to_category(self, train_id: int) -> Category:
        return self.categories[train_id]

    def thing_index_to_train_id(self, k: int) -> int:
        return self.thing_train_ids[k]

    def coco_categories(self) -> list[dict]:
        """The ``categories`` list of a COCO-panoptic JSON."""
        return [
            {"id": c.id, "name": c.name, "isthing": int(c.isthing), "color": list(c.color), "supercategory": c.name}
            for c in self.categories
        ]

    @classmethod
    def from_coco_categories(cls, name: str, categories: Sequence[dict], ignore_label: int = 255):
        """Train ids in the order of the JSON's ``categories`` list."""
        cats = []
        for i, c in enumerate(categories):
            try:
                color = tuple(int(v) for v in c.get("color", _fallback_color(i)))
                cats.append(Category(int(c["id"]), str(c["name"]), bool(c["isthing"]), color))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{name}: category #{i} {c!r} is malformed ({exc})") from None
        return cls(name, tuple(cats), ignore_label)


def _fallback_color(i: int) -> tuple[int, int, int]:
    return ((37 * i + 71) % 256, (91 * i + 13) % 256, (53 * i + 197) % 256)


# Cityscapes: the 19 train classes (cityscapesScripts' labels.py), things are train ids 11..18.
_CITYSCAPES = [
    (7, "road", False, (128, 64, 128)),
    (8, "sidewalk", False, (244, 35, 232)),
    (11, "building", False, (70, 70, 70)),
    (12, "wall", False, (102, 102, 156)),
    (13, "fence", False, (190, 153, 153)),
    (17, "pole", False, (153, 153, 153)),
    (19, "traffic light", False, (250, 170, 30)),
    (20, "traffic sign", False, (220, 220, 0)),
    (21, "vegetation", False, (107, 142, 35)),
    (22, "terrain", False, (152, 251, 152)),
    (23, "sky", False, (70, 130, 180)),
    (24, "person", True, (220, 20, 60)),
    (25, "rider", True, (255, 0, 0)),
    (26, "car", True, (0, 0, 142)),
    (27, "truck", True, (0, 0, 70)),
    (28, "bus", True, (0, 60, 100)),
    (31, "train", True, (0, 80, 100)),
    (32, "motorcycle", True, (0, 0, 230)),
    (33, "bicycle", True, (119, 11, 32)),
]
CITYSCAPES = DatasetDescription("cityscapes", tuple(Category(*c) for c in _CITYSCAPES), ignore_label=255)


def _coco_panoptic() -> DatasetDescription:
    from ._coco_categories import coco_panoptic_rows

    return DatasetDescription("coco_panoptic", tuple(Category(*r) for r in coco_panoptic_rows()), ignore_label=255)


# COCO panoptic 2017: 133 classes, things are train ids 0..79, stuff 80..132.
COCO_PANOPTIC = _coco_panoptic()

_REGISTRY: dict[str, DatasetDescription] = {"cityscapes": CITYSCAPES, "coco_panoptic": COCO_PANOPTIC, "coco": COCO_PANOPTIC}


def register_description(desc: DatasetDescription) -> None:
    _REGISTRY[desc.name] = desc


def get_description(name: str) -> DatasetDescription:
    if name not in _REGISTRY:
        raise KeyError(f"unknown dataset description {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]
