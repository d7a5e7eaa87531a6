"""``decode_boxes``: (l, t, r, b) offsets -> xyxy boxes around cell centres (eq. 8)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import block_size, launch
from ._grid import cell_centre


@triton.jit
def decode_block(x, y, l, t, r, b):
    """xyxy from a centre (x, y) and (l, t, r, b) offsets, in the offsets' dtype."""
    return x - l, y - t, x + r, y + b


@triton.jit
def _decode_boxes_kernel(off_ptr, out_ptr, H, W, stride, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    img = tl.program_id(1).to(tl.int64)
    P = H * W
    p = pid * BLOCK + tl.arange(0, BLOCK)
    m = p < P
    base = img * 4 * P
    l = tl.load(off_ptr + base + p, mask=m, other=0)
    t = tl.load(off_ptr + base + P + p, mask=m, other=0)
    r = tl.load(off_ptr + base + 2 * P + p, mask=m, other=0)
    b = tl.load(off_ptr + base + 3 * P + p, mask=m, other=0)
    # the centre of the location, rounded in the offsets' dtype
    x = cell_centre(p % W, stride, l.dtype)
    y = cell_centre(p // W, stride, l.dtype)
    x1, y1, x2, y2 = decode_block(x, y, l, t, r, b)
    tl.store(out_ptr + base + p, x1, mask=m)
    tl.store(out_ptr + base + P + p, y1, mask=m)
    tl.store(out_ptr + base + 2 * P + p, x2, mask=m)
    tl.store(out_ptr + base + 3 * P + p, y2, mask=m)


def decode_boxes(offsets: torch.Tensor, stride: int) -> torch.Tensor:
    b, _, h, w = offsets.shape
    out = torch.empty_like(offsets, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out
    block = block_size(h * w)
    launch(_decode_boxes_kernel, (triton.cdiv(h * w, block), b), offsets.contiguous(), out, h, w, stride, BLOCK=block)
    return out
