"""``PanopticNet``: ResNet-FPN backbone + unified panoptic head -> :class:`HeadOutputs`."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..data.description import DatasetDescription
from .backbone import STRIDES, ResNetFPN
from .config import ModelConfig, validate_config
from .head import PanopticHead
from .outputs import HeadOutputs

# Input conventions (per channel of the network's input, in its channel order).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # RGB, [0, 1] scale
CAFFE_MEAN_BGR = (102.9801, 115.9465, 122.7717)  # BGR, [0, 255] scale, std 1


class PanopticNet(nn.Module):
    """The single-stage panoptic network of paper Fig. 3.

    ``forward(images)`` takes ``[B, 3, H, W]`` float images already passed through
    :meth:`normalize` (H, W multiples of 128) and returns :class:`HeadOutputs`.
    Attributes: ``strides`` (8, 16, 32, 64, 128), ``description``, ``semantic_stride``,
    ``levelness_stride``, ``cfg``.
    """

    size_divisibility = 128

    def __init__(self, cfg: ModelConfig, description: DatasetDescription):
        super().__init__()
        validate_config(cfg)
        if description.num_things < 1:
            raise ValueError(f"PanopticNet: description {description.name!r} has no thing class")
        self.cfg = cfg
        self.description = description
        self.strides = STRIDES
        self.semantic_stride = cfg.head.semantic_stride
        self.levelness_stride = cfg.head.levelness_stride
        self.backbone = ResNetFPN(cfg.backbone, cfg.fpn)
        self.panoptic_head = PanopticHead(
            self.backbone.out_channels, len(STRIDES), description.num_things, description.num_classes, cfg.head
        )
        if cfg.input_format == "bgr_caffe":
            mean, std = CAFFE_MEAN_BGR, (1.0, 1.0, 1.0)
        else:
            mean, std = tuple(255.0 * m for m in IMAGENET_MEAN), tuple(255.0 * s for s in IMAGENET_STD)
        # Not persistent: the state dict holds exactly the learned tensors (the release's keys).
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.description.num_classes

    @property
    def num_things(self) -> int:
        return self.description.num_things

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 RGB ``[B, 3, H, W]`` (or ``[3, H, W]``) -> the float input this network expects.

        ``rgb_imagenet``: ``(x / 255 - mean) / std``, RGB.  ``bgr_caffe`` (release): channels
        reversed to BGR, 0-255 scale, Caffe means subtracted, no std.
        """
        if not isinstance(images, Tensor):
            raise TypeError(f"normalize: images must be a uint8 tensor [B, 3, H, W], got {type(images).__name__}")
        if images.dtype != torch.uint8:
            raise TypeError(f"normalize: images must be uint8 RGB (0-255), got {images.dtype}")
        squeeze = images.dim() == 3
        if squeeze:
            images = images[None]
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"normalize: images must be [B, 3, H, W], got {list(images.shape)}")
        x = images.to(self.pixel_mean.dtype)
        if self.cfg.input_format == "bgr_caffe":
            x = x.flip(1)
        x = (x - self.pixel_mean) / self.pixel_std
        return x[0] if squeeze else x

    def forward(self, images: Tensor) -> HeadOutputs:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"PanopticNet: images must be [B, 3, H, W], got {list(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.size_divisibility or w % self.size_divisibility:
            raise ValueError(
                f"PanopticNet: image size {h}x{w} must be a multiple of {self.size_divisibility} (pad first)"
            )
        return self.panoptic_head(self.backbone(images), (h, w))
