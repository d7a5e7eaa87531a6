"""Box score of dense boxes against query boxes, and its gradient, as ``@triton.jit`` helpers.

Mirrors :func:`rtpanoptic.ops.reference.pairwise_box_score` operation by operation, in the
dtype of the coordinates (float32 for float16/bfloat16 boxes, which the loaders upcast; so
results round exactly like the reference's, launched without FMA contraction), with box_math.h's
NaN rule (``nan_min``/``nan_max``: torch.minimum/maximum/clamp propagate NaN; Triton's default
minimum/maximum return the other operand), and its autograd:
``max(x, 0)`` (``reference.positive_part``) passes the gradient where ``x > 0`` (0 at 0 and at NaN) and ``minimum``/``maximum``
split it in half on ties, as PyTorch's derivatives do.
"""
import triton
import triton.language as tl


@triton.jit
def load_dense(base, P, p, m, OPMATH: tl.constexpr):
    """Coordinates (x1, y1, x2, y2) at pixels ``p`` of a contiguous [4, P] dense box map starting
    at ``base`` (0 where ``m`` is False), as ``OPMATH``."""
    plane = tl.cast(P, tl.int64)
    dx1 = tl.load(base + p, mask=m, other=0).to(OPMATH)
    dy1 = tl.load(base + plane + p, mask=m, other=0).to(OPMATH)
    dx2 = tl.load(base + 2 * plane + p, mask=m, other=0).to(OPMATH)
    dy2 = tl.load(base + 3 * plane + p, mask=m, other=0).to(OPMATH)
    return dx1, dy1, dx2, dy2


@triton.jit
def load_box(ptr, j, OPMATH: tl.constexpr):
    """Box ``j`` (x1, y1, x2, y2) of a contiguous [N, 4] tensor, as four ``OPMATH`` scalars."""
    j4 = tl.cast(j, tl.int64) * 4
    x1 = tl.load(ptr + j4).to(OPMATH)
    y1 = tl.load(ptr + j4 + 1).to(OPMATH)
    x2 = tl.load(ptr + j4 + 2).to(OPMATH)
    y2 = tl.load(ptr + j4 + 3).to(OPMATH)
    return x1, y1, x2, y2


@triton.jit
def div_rn(a, b):
    """IEEE division rounded to nearest, as PyTorch's.  Triton's ``/`` on float32 lowers to
    the approximate ``div.full.f32`` on NVIDIA GPUs; float16/bfloat16 are divided in float32
    and rounded once more (exact: float32 has more than twice their precision)."""
    if a.dtype == tl.float64:
        return a / b
    elif a.dtype == tl.float32:
        return tl.math.div_rn(a, b)
    else:
        return tl.math.div_rn(a.to(tl.float32), b.to(tl.float32)).to(a.dtype)


@triton.jit
def nan_min(a, b):
    """torch.minimum: NaN if either is NaN."""
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def nan_max(a, b):
    """torch.maximum (and clamp(min=b)): NaN if either is NaN."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def box_score(dx1, dy1, dx2, dy2, qx1, qy1, qx2, qy2, eps, TRI: tl.constexpr):
    """score("iou" | "tri") of dense boxes against query boxes (broadcasting)."""
    zero = tl.zeros_like(dx1 + qx1)
    one = zero + 1
    iw = nan_max(nan_min(dx2, qx2) - nan_max(dx1, qx1), zero)
    ih = nan_max(nan_min(dy2, qy2) - nan_max(dy1, qy1), zero)
    inter = iw * ih
    union = (dx2 - dx1) * (dy2 - dy1) + (qx2 - qx1) * (qy2 - qy1) - inter
    if TRI:
        cw = nan_max(dx2, qx2) - nan_min(dx1, qx1)
        ch = nan_max(dy2, qy2) - nan_min(dy1, qy1)
        enclosing = cw * ch + eps
        s = div_rn(inter + one, union + one) - div_rn(enclosing - union, enclosing)
    else:
        nonzero = union != zero
        s = tl.where(nonzero, div_rn(inter, tl.where(nonzero, union, one)), zero)
    return s


@triton.jit
def _d_min(a, b):
    """d minimum(a, b) / da as PyTorch: 1 if a < b, 1/2 on ties, else 0."""
    return tl.where(a < b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def _d_max(a, b):
    """d maximum(a, b) / da as PyTorch: 1 if a > b, 1/2 on ties, else 0."""
    return tl.where(a > b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def box_score_grad(dx1, dy1, dx2, dy2, qx1, qy1, qx2, qy2, eps, g, TRI: tl.constexpr):
    """Gradients of ``g * score`` w.r.t. the 8 coordinates (dense 4, then query 4)."""
    zero = tl.zeros_like(dx1 + qx1)
    one = zero + 1
    iw_raw = nan_min(dx2, qx2) - nan_max(dx1, qx1)
    ih_raw = nan_min(dy2, qy2) - nan_max(dy1, qy1)
    iw = nan_max(iw_raw, zero)
    ih = nan_max(ih_raw, zero)
    inter = iw * ih
    wd = dx2 - dx1
    hd = dy2 - dy1
    wq = qx2 - qx1
    hq = qy2 - qy1
    union = wd * hd + wq * hq - inter
    if TRI:
        cw = nan_max(dx2, qx2) - nan_min(dx1, qx1)
        ch = nan_max(dy2, qy2) - nan_min(dy1, qy1)
        enclosing = cw * ch + eps
        up1 = union + one
        d_union = div_rn(one, enclosing) - div_rn(inter + one, up1 * up1)
        g_inter = g * (div_rn(one, up1) - d_union)
        g_area = g * d_union
        g_enc = -g * div_rn(union, enclosing * enclosing)
    else:
        nonzero = union != zero
        u = tl.where(nonzero, union, one)
        d_union = -div_rn(inter, u * u)
        g_inter = tl.where(nonzero, g * (div_rn(one, u) - d_union), zero)
        g_area = tl.where(nonzero, g * d_union, zero)
    g_iw = tl.where(iw_raw > zero, g_inter * ih, zero)
    g_ih = tl.where(ih_raw > zero, g_inter * iw, zero)
    # inter: iw = min(x2) - max(x1), ih = min(y2) - max(y1)
    gdx1 = -g_iw * _d_max(dx1, qx1) - g_area * hd
    gqx1 = -g_iw * _d_max(qx1, dx1) - g_area * hq
    gdx2 = g_iw * _d_min(dx2, qx2) + g_area * hd
    gqx2 = g_iw * _d_min(qx2, dx2) + g_area * hq
    gdy1 = -g_ih * _d_max(dy1, qy1) - g_area * wd
    gqy1 = -g_ih * _d_max(qy1, dy1) - g_area * wq
    gdy2 = g_ih * _d_min(dy2, qy2) + g_area * wd
    gqy2 = g_ih * _d_min(qy2, dy2) + g_area * wq
    if TRI:
        g_cw = g_enc * ch
        g_ch = g_enc * cw
        gdx1 -= g_cw * _d_min(dx1, qx1)
        gqx1 -= g_cw * _d_min(qx1, dx1)
        gdx2 += g_cw * _d_max(dx2, qx2)
        gqx2 += g_cw * _d_max(qx2, dx2)
        gdy1 -= g_ch * _d_min(dy1, qy1)
        gqy1 -= g_ch * _d_min(qy1, dy1)
        gdy2 += g_ch * _d_max(dy2, qy2)
        gqy2 += g_ch * _d_max(qy2, dy2)
    return gdx1, gdy1, gdx2, gdy2, gqx1, gqy1, gqx2, gqy2
