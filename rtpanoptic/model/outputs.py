"""What the network returns: the contract between the model, the losses and the predictor."""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class HeadOutputs(NamedTuple):
    """Raw outputs of the unified panoptic head for a batch ``[B, 3, H, W]`` (H, W multiples of 128).

    Per FPN level i (strides 8, 16, 32, 64, 128), maps of size ``[h_i, w_i] = [H, W] / stride_i``:
      box_offsets[i]   ``[B, 4, h_i, w_i]`` (l, t, r, b) distances in input pixels, positive
      centerness[i]    ``[B, 1, h_i, w_i]`` logits
      class_logits[i]  ``[B, K, h_i, w_i]`` thing-class logits (sigmoid, K = thing classes)
    Global:
      levelness        ``[B, L + 1, H / 4, W / 4]`` logits, channel 0 = background
      semantic         ``[B, C, H / s, W / s]`` logits over all C classes (s = 4 in the paper)
    """

    box_offsets: list[Tensor]
    centerness: list[Tensor]
    class_logits: list[Tensor]
    levelness: Tensor
    semantic: Tensor
