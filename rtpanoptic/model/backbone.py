"""ResNet body (torchvision, FrozenBatchNorm) and a 5-level FPN (P3-P7, strides 8..128).

Module and parameter names follow the authors' release (maskrcnn-benchmark style, torchvision
0.3 FPN naming), so its checkpoint loads with ``strict=True``:
``body.{conv1,bn1,layer1..4}``, ``fpn.inner_blocks.i``, ``fpn.layer_blocks.i``,
``fpn.extra_blocks.{p6,p7}``.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

from .config import BackboneConfig, FPNConfig

# Output channels of layer2/3/4 (C3, C4, C5) per depth.
STAGE_CHANNELS = {18: (128, 256, 512), 34: (128, 256, 512), 50: (512, 1024, 2048)}
STRIDES = (8, 16, 32, 64, 128)


def load_imagenet_weights(resnet: nn.Module, path: str | Path) -> None:
    """Load a torchvision ResNet state dict (e.g. ``resnet50-0676ba61.pth``) from a local file.

    ``fc.*`` may be present or absent; every other ResNet tensor must be there with its shape.
    Nothing is downloaded.  The file is read by :func:`rtpanoptic.weights.read_weights`
    (``weights_only=True``: a pickle is never run); a missing, unreadable or unfitting file raises
    :class:`~rtpanoptic.weights.WeightsError` (one line, starting ``backbone.pretrained:``).
    """
    from ..weights import WeightsError, read_weights

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"backbone.pretrained: no such file {path} (weights are never downloaded)")
    try:
        state = read_weights(path).state_dict
    except WeightsError as exc:
        raise WeightsError(f"backbone.pretrained: {exc}") from None
    own = resnet.state_dict()
    missing = [k for k in own if k not in state and not k.startswith("fc.")]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        raise WeightsError(
            f"backbone.pretrained: {path} does not fit this ResNet: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, wrong shapes {wrong[:5]} (is it the right depth?)"
        )
    resnet.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def build_resnet_body(cfg: BackboneConfig) -> nn.Module:
    """torchvision ResNet up to layer4 returning ``{"c3", "c4", "c5"}`` (layer2/3/4 outputs)."""
    if cfg.norm == "frozen_bn":
        norm_layer = partial(FrozenBatchNorm2d, eps=cfg.frozen_bn_eps)
    else:
        norm_layer = nn.BatchNorm2d
    resnet = getattr(torchvision.models, f"resnet{cfg.depth}")(weights=None, norm_layer=norm_layer)
    if cfg.pretrained:
        load_imagenet_weights(resnet, cfg.pretrained)
    stages = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    for stage in stages[: cfg.freeze_at]:
        for name in stage:
            for p in getattr(resnet, name).parameters():
                p.requires_grad_(False)
    return IntermediateLayerGetter(resnet, {"layer2": "c3", "layer3": "c4", "layer4": "c5"})


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/2 on P5 (or C5), P7 = conv3x3/2 on ReLU(P6)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        p6 = self.p6(x)
        return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    """Top-down FPN on C3-C5 (1x1 laterals, nearest upsampling, 3x3 outputs) plus P6, P7."""

    def __init__(self, in_channels: list[int], cfg: FPNConfig):
        super().__init__()
        ch = cfg.channels
        self.p6_from = cfg.p6_from
        self.inner_blocks = nn.ModuleList(nn.Conv2d(c, ch, 1) for c in in_channels)
        self.layer_blocks = nn.ModuleList(nn.Conv2d(ch, ch, 3, padding=1) for _ in in_channels)
        for conv in [*self.inner_blocks, *self.layer_blocks]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        self.extra_blocks = LastLevelP6P7(ch if cfg.p6_from == "p5" else in_channels[-1], ch)

    def state_dict_aliases(self) -> dict[str, str]:
        """``{other name: own name}`` of the tensors a state dict may name differently (relative to
        this module): torchvision >= 0.13 names the convs ``inner_blocks.i.0.weight``."""
        return {f"{block}.{i}.0.{param}": f"{block}.{i}.{param}"
                for block in ("inner_blocks", "layer_blocks") for i in range(len(getattr(self, block)))
                for param in ("weight", "bias")}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for other, own in self.state_dict_aliases().items():
            if prefix + other in state_dict:
                state_dict[prefix + own] = state_dict.pop(prefix + other)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        inner = self.inner_blocks[-1](feats[-1])
        outs = [self.layer_blocks[-1](inner)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.inner_blocks[i](feats[i])
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.layer_blocks[i](inner))
        outs.extend(self.extra_blocks(outs[-1] if self.p6_from == "p5" else feats[-1]))
        return outs


class ResNetFPN(nn.Module):
    """Images ``[B, 3, H, W]`` -> ``[P3, P4, P5, P6, P7]``, all ``fpn.channels`` wide."""

    strides = STRIDES

    def __init__(self, backbone: BackboneConfig, fpn: FPNConfig):
        super().__init__()
        self.body = build_resnet_body(backbone)
        self.fpn = FPN(list(STAGE_CHANNELS[backbone.depth]), fpn)
        self.out_channels = fpn.channels

    def forward(self, images: Tensor) -> list[Tensor]:
        c = self.body(images)
        return self.fpn([c["c3"], c["c4"], c["c5"]])


__all__ = ["FPN", "STRIDES", "ResNetFPN", "build_resnet_body", "load_imagenet_weights"]
