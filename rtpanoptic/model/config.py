"""Configuration of the network and of its inference defaults (plain dataclasses).

Works with :mod:`rtpanoptic.config` (YAML files and ``key.sub=value`` overrides)::

    cfg = load_config(ModelConfig, None, ["head.loc_channels=32"], base=preset_config("r18-fpn"))
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Range, check_ranges

INPUT_FORMATS = ("rgb_imagenet", "bgr_caffe")
NORMS = ("frozen_bn", "bn")
DEPTHS = (18, 34, 50)
SCORES = ("iou", "tri")


@dataclass
class BackboneConfig:
    depth: int = 50  # ResNet-18 / 34 / 50 (torchvision)
    # Local file with torchvision ImageNet weights (a ResNet state dict); None: random init.
    pretrained: str | None = None
    norm: str = "frozen_bn"  # "frozen_bn" (paper, release) or "bn" (trainable, e.g. from scratch)
    frozen_bn_eps: float = 1e-5  # 0.0 reproduces the release (torchvision <= 0.8 had no eps)
    freeze_at: int = 2  # stages with frozen weights: 0 none, 1 stem, 2 stem + layer1, ... 5 all


@dataclass
class FPNConfig:
    channels: int = 256
    p6_from: str = "p5"  # "p5" (release: P6 = conv(P5)) or "c5" (RetinaNet paper)


@dataclass
class HeadConfig:
    loc_channels: int = 256  # localisation (bbox) tower width
    sem_channels: int = 128  # semantics (cls) tower width
    num_convs: int = 4  # Conv3x3 + GroupNorm + ReLU blocks per tower
    gn_channels_per_group: int = 8  # GroupNorm groups = channels // this (release: 16 for 128, 32 for 256)
    semantic_stride: int = 4  # 4 in the paper (Fig. 3), 8 in the release
    levelness_stride: int = 4
    prior_prob: float = 0.01  # FCOS prior for the thing-class logits' bias
    max_log_offset: float = 9.210340371976184  # exp(clamp(scale * x, max=ln 10000)) box parametrisation


MASK_MODES = ("grid", "release")
SEMANTIC_DTYPES = ("int64", "int32", "int16", "uint8")


@dataclass
class InferenceConfig:
    """Defaults of :class:`rtpanoptic.inference.Predictor` (each can be overridden there)."""

    pre_nms_thresh: float = 0.05  # on the class probability, before the centerness product
    pre_nms_top_n: int = 1000  # candidates per level, by class prob x centerness
    nms_thresh: float = 0.6  # class-aware NMS
    global_nms_thresh: float | None = None  # class-agnostic NMS after it (release: 0.97)
    post_nms_top_n: int = 100  # queries kept per image
    score: str = "iou"  # box attention score: "iou" (paper eq. 6) or "tri" (release)
    sigma: float = 0.3  # mask threshold (paper 0.3; release 0.4 with "tri")
    score_threshold: float = 0.0  # fusion: queries below this score are dropped
    overlap_threshold: float = 0.5  # fusion: max fraction of a mask already taken
    stuff_area_limit: int = 0  # fusion: minimum stuff area, in input pixels
    # "grid": masks score * P_sem > sigma on the levelness grid, id map upsampled (nearest);
    # "release": the released code's masks, soft masks x stride bilinear then >= sigma, boxes
    # clipped to [0, W - 1] x [0, H - 1] (ops.panoptic_from_dense_release)
    mask_mode: str = "grid"
    # dtype of the semantic map (PanopticResult.semantic): "int64", or "int32" / "int16" / "uint8"
    # (the classes must fit), which ops.upsample_argmax writes directly on every backend: uint8 is an
    # eighth of the int64 map's memory traffic.  Narrow maps index like integer tensors except
    # uint8, which torch's indexing reads as a mask: cast before using one as an index.
    semantic_dtype: str = "int64"


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    input_format: str = "rgb_imagenet"  # or "bgr_caffe" (release: BGR 0-255 minus Caffe means)
    description: str = "cityscapes"  # name of a registered DatasetDescription


_COUNT = Range(1, 2**31 - 1)
_PROBABILITY = Range(0, 1)

# the allowed values of every numeric field of ModelConfig (tests check that none is missing);
# finite, so inf and nan are refused
MODEL_RANGES: dict[str, Range] = {
    "backbone.depth": Range(18, 50),  # and one of DEPTHS
    "backbone.frozen_bn_eps": Range(0, 1),
    "backbone.freeze_at": Range(0, 5),
    "fpn.channels": Range(1, 8192),
    "head.loc_channels": Range(1, 8192),
    "head.sem_channels": Range(1, 8192),
    "head.num_convs": Range(1, 64),
    "head.gn_channels_per_group": Range(1, 8192),
    "head.semantic_stride": Range(4, 8),  # and 4 or 8
    "head.levelness_stride": Range(4, 8),
    "head.prior_prob": Range(0, 1, low_open=True, high_open=True),
    "head.max_log_offset": Range(0, 80, low_open=True),  # exp(80) is near float32's largest
    "inference.pre_nms_thresh": _PROBABILITY,
    "inference.pre_nms_top_n": _COUNT,
    "inference.nms_thresh": _PROBABILITY,
    "inference.global_nms_thresh": _PROBABILITY,
    "inference.post_nms_top_n": Range(0, 2**31 - 1),
    # the mask threshold: "tri" scores (and so score x probability) lie in (-1, 1], "iou" ones in [0, 1]
    "inference.sigma": Range(-1, 1),
    "inference.score_threshold": _PROBABILITY,
    "inference.overlap_threshold": _PROBABILITY,
    "inference.stuff_area_limit": Range(0, 2**31 - 1),
}


def validate_config(cfg: ModelConfig) -> None:
    """Raise ValueError naming the field for a value the network cannot be built with: every number
    within its :data:`MODEL_RANGES` range, the names among their choices."""
    b, f, h, i = cfg.backbone, cfg.fpn, cfg.head, cfg.inference
    check_ranges(cfg, MODEL_RANGES, "model config")
    checks = [
        (b.depth in DEPTHS, "backbone.depth", f"one of {DEPTHS}", b.depth),
        (b.norm in NORMS, "backbone.norm", f"one of {NORMS}", b.norm),
        (f.p6_from in ("p5", "c5"), "fpn.p6_from", "'p5' or 'c5'", f.p6_from),
        (h.semantic_stride in (4, 8), "head.semantic_stride", "4 or 8", h.semantic_stride),
        (h.levelness_stride in (4, 8), "head.levelness_stride", "4 or 8", h.levelness_stride),
        (cfg.input_format in INPUT_FORMATS, "input_format", f"one of {INPUT_FORMATS}", cfg.input_format),
        (i.score in SCORES, "inference.score", f"one of {SCORES}", i.score),
        (i.mask_mode in MASK_MODES, "inference.mask_mode", f"one of {MASK_MODES}", i.mask_mode),
        (i.semantic_dtype in SEMANTIC_DTYPES, "inference.semantic_dtype", f"one of {SEMANTIC_DTYPES}",
         i.semantic_dtype),
    ]
    for name, width in (("head.loc_channels", h.loc_channels), ("head.sem_channels", h.sem_channels)):
        ok = width > 0 and h.gn_channels_per_group > 0 and width % h.gn_channels_per_group == 0
        checks.append((ok, name, f"a positive multiple of head.gn_channels_per_group={h.gn_channels_per_group}", width))
    for ok, name, expected, got in checks:
        if not ok:
            raise ValueError(f"model config: {name} must be {expected}, got {got!r}")
