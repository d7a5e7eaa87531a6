"""Training transforms on sample dicts (:mod:`rtpanoptic.data.coco_panoptic`; paper §5.3).

Every transform changes ``image`` (bilinear), ``semantic`` / ``instance_masks`` / ``crowd_mask``
(nearest, pixel-centre aligned) together, then recomputes ``boxes`` from the masks and drops
instances left without pixels (with their labels). Randomness comes from ``torch``'s generator
(``generator=`` for reproducibility; DataLoader workers seed torch per worker).

- Cityscapes (paper: "a random crop of 1800 x 900 and re-scale the crops randomly between (0.7, 1.3)"):
  ``RandomCrop((900, 1800))`` + ``RandomScale(0.7, 1.3)`` + ``RandomHorizontalFlip()``; sizes then vary
  per sample and :func:`rtpanoptic.data.collate` pads the batch.
- COCO (paper): ``ResizeShortestSide((640, 720, 800), max_size=1333)`` + ``RandomHorizontalFlip()``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .coco_panoptic import masks_to_boxes

Sample = dict


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def _check(sample: Sample) -> tuple[int, int]:
    img = sample.get("image")
    if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[0] != 3:
        raise ValueError("transforms: sample['image'] must be a [3, H, W] tensor")
    return int(img.shape[1]), int(img.shape[2])


def _finish(sample: Sample, masks: torch.Tensor) -> Sample:
    keep = masks.flatten(1).any(dim=1)
    sample["instance_masks"] = masks[keep]
    sample["labels"] = sample["labels"][keep]
    sample["boxes"] = masks_to_boxes(sample["instance_masks"])
    return sample


def resize(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resize every dense field of ``sample`` to ``size = (H, W)``."""
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"resize: size must be positive, got {size}")
    sample = dict(sample)
    img = sample["image"]
    out = F.interpolate(img[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    sample["image"] = out.round().clamp(0, 255).to(img.dtype) if img.dtype == torch.uint8 else out.to(img.dtype)

    def near(x: torch.Tensor) -> torch.Tensor:
        # uint8 keeps memory low for many masks; semantic train ids / ignore (<= 255) fit too.
        return F.interpolate(x[None].to(torch.uint8), size=(h, w), mode="nearest-exact")[0]

    sem = sample["semantic"]
    if sem.numel() and int(sem.max()) > 255:
        raise ValueError("resize: semantic labels above 255 are not supported")
    sample["semantic"] = near(sem[None])[0].to(sem.dtype)
    sample["crowd_mask"] = near(sample["crowd_mask"][None])[0].bool()
    masks = sample["instance_masks"]
    masks = near(masks).bool() if masks.shape[0] else masks.new_zeros((0, h, w))
    return _finish(sample, masks)


class RandomScale:
    """Rescale by a factor drawn uniformly from ``[min_scale, max_scale]``."""

    def __init__(self, min_scale: float = 0.7, max_scale: float = 1.3, generator: torch.Generator | None = None):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"RandomScale: need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale, self.generator = min_scale, max_scale, generator

    def __call__(self, sample: Sample) -> Sample:
        h, w = _check(sample)
        u = float(torch.rand((), generator=self.generator))
        s = self.min_scale + (self.max_scale - self.min_scale) * u
        return resize(sample, (max(1, round(h * s)), max(1, round(w * s))))

    def __repr__(self) -> str:
        return f"RandomScale({self.min_scale}, {self.max_scale})"


class ResizeShortestSide:
    """Resize so the shorter side is one of ``sizes`` (drawn at random), the longer at most ``max_size``."""

    def __init__(self, sizes: Sequence[int] | int, max_size: int | None = None, generator=None):
        self.sizes = [int(sizes)] if isinstance(sizes, int) else [int(s) for s in sizes]
        if not self.sizes or min(self.sizes) <= 0:
            raise ValueError(f"ResizeShortestSide: sizes must be positive, got {sizes}")
        self.max_size, self.generator = max_size, generator

    def __call__(self, sample: Sample) -> Sample:
        h, w = _check(sample)
        target = self.sizes[int(torch.randint(len(self.sizes), (), generator=self.generator))]
        scale = target / min(h, w)
        if self.max_size is not None and max(h, w) * scale > self.max_size:
            scale = self.max_size / max(h, w)
        return resize(sample, (max(1, round(h * scale)), max(1, round(w * scale))))

    def __repr__(self) -> str:
        return f"ResizeShortestSide({self.sizes}, max_size={self.max_size})"


class RandomCrop:
    """Crop ``size = (H, W)`` at a random position; smaller images are padded bottom/right first
    (image 0, semantic ``ignore_label``, masks False)."""

    def __init__(self, size: tuple[int, int] | int, ignore_label: int = 255, generator=None):
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(self.size) <= 0:
            raise ValueError(f"RandomCrop: size must be positive, got {size}")
        self.ignore_label, self.generator = ignore_label, generator

    def __call__(self, sample: Sample) -> Sample:
        h, w = _check(sample)
        ch, cw = self.size
        sample = dict(sample)
        if h < ch or w < cw:
            ph, pw = max(h, ch), max(w, cw)
            sample["image"] = F.pad(sample["image"], (0, pw - w, 0, ph - h), value=0)
            sample["semantic"] = F.pad(sample["semantic"], (0, pw - w, 0, ph - h), value=self.ignore_label)
            sample["crowd_mask"] = F.pad(sample["crowd_mask"], (0, pw - w, 0, ph - h), value=False)
            sample["instance_masks"] = F.pad(sample["instance_masks"], (0, pw - w, 0, ph - h), value=False)
            h, w = ph, pw
        y0 = int(torch.randint(h - ch + 1, (), generator=self.generator))
        x0 = int(torch.randint(w - cw + 1, (), generator=self.generator))
        return crop(sample, y0, x0, ch, cw)

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


def crop(sample: Sample, y0: int, x0: int, h: int, w: int) -> Sample:
    sample = dict(sample)
    sample["image"] = sample["image"][:, y0 : y0 + h, x0 : x0 + w]
    sample["semantic"] = sample["semantic"][y0 : y0 + h, x0 : x0 + w]
    sample["crowd_mask"] = sample["crowd_mask"][y0 : y0 + h, x0 : x0 + w]
    return _finish(sample, sample["instance_masks"][:, y0 : y0 + h, x0 : x0 + w])


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5, generator=None):
        if not 0 <= p <= 1:
            raise ValueError(f"RandomHorizontalFlip: p must lie in [0, 1], got {p}")
        self.p, self.generator = p, generator

    def __call__(self, sample: Sample) -> Sample:
        _check(sample)
        if float(torch.rand((), generator=self.generator)) >= self.p:
            return sample
        return hflip(sample)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip({self.p})"


def hflip(sample: Sample) -> Sample:
    sample = dict(sample)
    sample["image"] = sample["image"].flip(-1)
    sample["semantic"] = sample["semantic"].flip(-1)
    sample["crowd_mask"] = sample["crowd_mask"].flip(-1)
    return _finish(sample, sample["instance_masks"].flip(-1))


def cityscapes_train_transforms(crop_size=(900, 1800), scale=(0.7, 1.3), ignore_label: int = 255) -> Compose:
    """Paper §5.3, Cityscapes: random 1800x900 crop, crop rescaled by 0.7-1.3, horizontal flip."""
    return Compose([RandomCrop(crop_size, ignore_label), RandomScale(*scale), RandomHorizontalFlip()])


def coco_train_transforms(sizes=(640, 720, 800), max_size: int = 1333) -> Compose:
    """Paper §5.3, COCO: shortest side drawn from (640, 720, 800), horizontal flip, no crop."""
    return Compose([ResizeShortestSide(sizes, max_size), RandomHorizontalFlip()])


def synthetic_train_transforms(size: int = 128, scale=(0.7, 1.3), ignore_label: int = 255) -> Compose:
    """Synthetic set: rescale 0.7-1.3 then a fixed ``size`` crop (padded when smaller), flip.
    Fixed-size outputs batch without padding."""
    return Compose([RandomScale(*scale), RandomCrop(size, ignore_label), RandomHorizontalFlip()])
