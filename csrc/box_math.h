// The float formulas of the CPU and CUDA kernels (box scores with their hand-written
// derivatives, IoU, bilinear sampling and its adjoint, the mask loss's mean), in one place.
//
// Every formula follows rtpanoptic/ops/reference.py operation by operation (same
// association order, so float32 results match the reference bit for bit: the CUDA build
// passes -fmad=false, so that nvcc does not fuse a * b + c into one rounding, and
// tests/ops/test_cuda_compile.py checks the PTX of every function here), and every
// derivative follows what PyTorch's autograd does on the reference:
//   * max(x, 0) (reference.positive_part) passes the gradient only where x > 0 (0 at exactly 0 and at
//     NaN): written out in the reference, since clamp(min=0)'s gradient at 0 changed between torch versions;
//   * torch.min / torch.max split the gradient in halves between equal arguments;
//   * "iou": torch.where(union != 0, inter / union, 0) -> score and gradient 0 where union == 0;
//   * everything else multiplies, so a NaN coordinate makes the gradients that depend on it
//     NaN even where the upstream gradient is 0 (callers must not skip zero gradients).
// NaN/inf coordinates: the arithmetic propagates them (a NaN box gets a NaN score, which
// then never passes a ">" threshold); no kernel branches on them, so nothing hangs.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RTP_HD __host__ __device__ __forceinline__
#else
#define RTP_HD inline
#endif

namespace rtpanoptic {

// Added to the enclosing-box area of the "tri" score (reference.TRI_EPS).
constexpr double kTriEps = 1e-7;

enum class Score : int { kIoU = 0, kTri = 1 };

template <typename T>
RTP_HD T rtp_max(T a, T b) {
  return b > a ? b : a;
}
// torch.minimum / torch.maximum propagate NaN; so do these.
template <typename T>
RTP_HD T nan_min(T a, T b) {
  return (a != a) ? a : ((b != b) ? b : (b < a ? b : a));
}
template <typename T>
RTP_HD T nan_max(T a, T b) {
  return (a != a) ? a : ((b != b) ? b : (b > a ? b : a));
}
// d min(a, b) / da following autograd: 1 if a < b, 1/2 if equal, 0 otherwise.
template <typename T>
RTP_HD T dmin_da(T a, T b) {
  return a < b ? T(1) : (a == b ? T(0.5) : T(0));
}
template <typename T>
RTP_HD T dmax_da(T a, T b) {
  return a > b ? T(1) : (a == b ? T(0.5) : T(0));
}

// Area of an xyxy box, no +1 (inverted boxes give negative areas), as reference.box_area.
template <typename T>
RTP_HD T box_area(T x0, T y0, T x1, T y1) {
  return (x1 - x0) * (y1 - y0);
}

// IoU of boxes a and b given their areas, as torchvision.ops.box_iou / reference.box_iou:
// I / ((area_a + area_b) - I); 0/0 (two zero-area boxes) gives NaN, NaN coordinates give NaN.
template <typename T>
RTP_HD T pair_iou(T a0, T a1, T a2, T a3, T area_a, T b0, T b1, T b2, T b3, T area_b) {
  T w = nan_min(a2, b2) - nan_max(a0, b0);
  T h = nan_min(a3, b3) - nan_max(a1, b1);
  w = w < T(0) ? T(0) : w;
  h = h < T(0) ? T(0) : h;
  const T inter = w * h;
  return inter / ((area_a + area_b) - inter);
}

// Score of box d against box q (both xyxy), as reference.pairwise_box_score.
template <typename T>
RTP_HD T box_score(T d0, T d1, T d2, T d3, T q0, T q1, T q2, T q3, Score score) {
  const T iw_raw = nan_min(d2, q2) - nan_max(d0, q0);
  const T ih_raw = nan_min(d3, q3) - nan_max(d1, q1);
  const T iw = iw_raw != iw_raw ? iw_raw : rtp_max(iw_raw, T(0));
  const T ih = ih_raw != ih_raw ? ih_raw : rtp_max(ih_raw, T(0));
  const T inter = iw * ih;
  const T area_d = (d2 - d0) * (d3 - d1);
  const T area_q = (q2 - q0) * (q3 - q1);
  const T uni = (area_d + area_q) - inter;
  if (score == Score::kIoU) {
    return uni != T(0) ? inter / uni : T(0);
  }
  const T cw = nan_max(d2, q2) - nan_min(d0, q0);
  const T ch = nan_max(d3, q3) - nan_min(d1, q1);
  const T enclosing = cw * ch + T(kTriEps);
  return (inter + T(1)) / (uni + T(1)) - (enclosing - uni) / enclosing;
}

// Gradient of g * score(d, q) w.r.t. the 4 coordinates of d and of q (accumulated into gd, gq).
template <typename T>
RTP_HD void box_score_backward(T g, T d0, T d1, T d2, T d3, T q0, T q1, T q2, T q3, Score score, T* gd,
                               T* gq) {
  const T iw_raw = nan_min(d2, q2) - nan_max(d0, q0);
  const T ih_raw = nan_min(d3, q3) - nan_max(d1, q1);
  const bool iw_pos = iw_raw > T(0);
  const bool ih_pos = ih_raw > T(0);
  const T iw = iw_pos ? iw_raw : (iw_raw != iw_raw ? iw_raw : T(0));
  const T ih = ih_pos ? ih_raw : (ih_raw != ih_raw ? ih_raw : T(0));
  const T inter = iw * ih;
  const T area_d = (d2 - d0) * (d3 - d1);
  const T area_q = (q2 - q0) * (q3 - q1);
  const T uni = (area_d + area_q) - inter;
  T g_inter, g_uni;
  T g_cw = T(0), g_ch = T(0);
  if (score == Score::kIoU) {
    if (!(uni != T(0))) return;  // where(union != 0, ., 0): no gradient at all
    g_inter = g / uni;
    g_uni = -g * inter / (uni * uni);
  } else {
    const T cw = nan_max(d2, q2) - nan_min(d0, q0);
    const T ch = nan_max(d3, q3) - nan_min(d1, q1);
    const T enclosing = cw * ch + T(kTriEps);
    const T u1 = uni + T(1);
    g_inter = g / u1;
    // -(E - U)/E: d/dU = 1/E, d/dE = -1/E + (E - U)/E^2
    g_uni = -g * (inter + T(1)) / (u1 * u1) + g / enclosing;
    const T g_enc = -g / enclosing + g * (enclosing - uni) / (enclosing * enclosing);
    g_cw = g_enc * ch;
    g_ch = g_enc * cw;
  }
  // union = area_d + area_q - inter
  const T g_int_total = g_inter - g_uni;
  const T g_iw = iw_pos ? g_int_total * ih : T(0);
  const T g_ih = ih_pos ? g_int_total * iw : T(0);
  // area_d = (d2 - d0) * (d3 - d1)
  const T wd = d2 - d0, hd = d3 - d1, wq = q2 - q0, hq = q3 - q1;
  gd[0] += -g_uni * hd;
  gd[2] += g_uni * hd;
  gd[1] += -g_uni * wd;
  gd[3] += g_uni * wd;
  gq[0] += -g_uni * hq;
  gq[2] += g_uni * hq;
  gq[1] += -g_uni * wq;
  gq[3] += g_uni * wq;
  // The gradient g_e of an extent along one axis, e = hi(d_b, q_b) - lo(d_a, q_a) between coordinates
  // a < b: (hi, lo) = (min, max) for the intersection, (max, min) for the enclosing box.
  const auto extent_backward = [&](T g_e, bool inter, int a, int b, T d_a, T q_a, T d_b, T q_b) {
    gd[b] += g_e * (inter ? dmin_da(d_b, q_b) : dmax_da(d_b, q_b));
    gq[b] += g_e * (inter ? dmin_da(q_b, d_b) : dmax_da(q_b, d_b));
    gd[a] -= g_e * (inter ? dmax_da(d_a, q_a) : dmin_da(d_a, q_a));
    gq[a] -= g_e * (inter ? dmax_da(q_a, d_a) : dmin_da(q_a, d_a));
  };
  extent_backward(g_iw, true, 0, 2, d0, q0, d2, q2);  // iw = min(d2, q2) - max(d0, q0)
  extent_backward(g_ih, true, 1, 3, d1, q1, d3, q3);
  if (score == Score::kTri) {
    extent_backward(g_cw, false, 0, 2, d0, q0, d2, q2);  // cw = max(d2, q2) - min(d0, q0)
    extent_backward(g_ch, false, 1, 3, d1, q1, d3, q3);
  }
}

// Bilinear source index and weights of F.interpolate(align_corners=False) along one axis.
template <typename T>
RTP_HD void bilinear_coeffs(int64_t out_index, int64_t in_size, T scale, int64_t* i0, int64_t* i1, T* w0, T* w1) {
  T src = scale * (static_cast<T>(out_index) + T(0.5)) - T(0.5);
  if (src < T(0)) src = T(0);
  int64_t lo = static_cast<int64_t>(src);
  if (lo > in_size - 1) lo = in_size - 1;
  const int64_t step = lo < in_size - 1 ? 1 : 0;
  const T l1 = src - static_cast<T>(lo);
  *i0 = lo;
  *i1 = lo + step;
  *w1 = l1;
  *w0 = T(1) - l1;
}

// One bilinear sample from its four taps v<row><column> and the row / column weights.
template <typename T>
RTP_HD T bilinear(T v00, T v01, T v10, T v11, T wy0, T wy1, T wx0, T wx1) {
  return wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11);
}

// The first output index o in [0, out_size) whose taps reach input index i (i1(o) >= i).  Both
// taps are nondecreasing in o, so the outputs reaching i run from there until i0(o) > i.
template <typename T>
RTP_HD int64_t first_output_reaching(int64_t i, int64_t in_size, int64_t out_size, T scale) {
  int64_t lo = 0, hi = out_size;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    int64_t i0, i1;
    T w0, w1;
    bilinear_coeffs<T>(mid, in_size, scale, &i0, &i1, &w0, &w1);
    if (i1 >= i) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// The taps of one axis of bilinear sampling from in_size to out_size, computed on the fly: the
// first output reaching input index i, and the taps of output index o (the CPU kernel uses a
// table with the same two methods).
template <typename T>
struct BilinearAxis {
  int64_t in_size, out_size;
  T scale;  // in_size / out_size
  RTP_HD int64_t first(int64_t i) const { return first_output_reaching<T>(i, in_size, out_size, scale); }
  RTP_HD void at(int64_t o, int64_t* i0, int64_t* i1, T* w0, T* w1) const {
    bilinear_coeffs<T>(o, in_size, scale, i0, i1, w0, w1);
  }
};

// Weight with which output index o (taps i0, i1 with weights w0, w1) samples input index i.
template <typename T>
RTP_HD T tap_weight(int64_t i, int64_t i0, int64_t i1, T w0, T w1) {
  return (i0 == i ? w0 : T(0)) + (i1 == i ? w1 : T(0));
}

// Adjoint of bilinear sampling, gathered at one input pixel: the gradient that the outputs
// which chose `level` send to pixel (yi, xi) of that level's grid, for the 4 planes of `grad`
// ([4, plane], entries of type G, rows of w_out) -- the sum over the outputs whose taps reach
// it of grad * row weight * column weight, in a fixed order (no atomics: deterministic).
// `chosen`: the level of every output pixel; ys, xs: the axes' taps (BilinearAxis or a table).
template <typename T, typename G, typename AxisY, typename AxisX>
RTP_HD void bilinear_adjoint_at(const G* grad, int64_t plane, int64_t w_out, const int32_t* chosen, int32_t level,
                                int64_t yi, int64_t xi, const AxisY& ys, const AxisX& xs, T* out) {
  const int64_t ox_first = xs.first(xi);
  for (int64_t oy = ys.first(yi); oy < ys.out_size; ++oy) {
    int64_t y0, y1;
    T wy0, wy1;
    ys.at(oy, &y0, &y1, &wy0, &wy1);
    if (y0 > yi) break;
    const T wy = tap_weight(yi, y0, y1, wy0, wy1);
    for (int64_t ox = ox_first; ox < xs.out_size; ++ox) {
      int64_t x0, x1;
      T wx0, wx1;
      xs.at(ox, &x0, &x1, &wx0, &wx1);
      if (x0 > xi) break;
      const int64_t p = oy * w_out + ox;
      if (chosen[p] != level) continue;
      const T w = wy * tap_weight(xi, x0, x1, wx0, wx1);
      for (int c = 0; c < 4; ++c) out[c] += static_cast<T>(grad[c * plane + p]) * w;
    }
  }
}

// torch.argmax semantics: first maximum, NaN counts as the maximum (first NaN wins).
template <typename T>
RTP_HD bool argmax_better(T v, T best) {
  return (v > best) || (v != v && best == best);
}

// torch.argmax over the n_c classes of pixel p of a [n_c, n_p] probability map (the semantic
// class of panoptic_from_dense's stuff stage), compared in A.
template <typename A, typename T>
RTP_HD int32_t class_argmax(const T* sem, int64_t n_c, int64_t n_p, int64_t p) {
  A best = static_cast<A>(sem[p]);
  int32_t best_c = 0;
  for (int64_t c = 1; c < n_c; ++c) {
    const A v = static_cast<A>(sem[c * n_p + p]);
    if (argmax_better(v, best)) {
      best = v;
      best_c = static_cast<int32_t>(c);
    }
  }
  return best_c;
}

// Whether a stuff class whose argmax covers `area` free pixels becomes a segment.
RTP_HD bool keeps_stuff(int64_t area, int64_t stuff_area_limit) { return area > 0 && area >= stuff_area_limit; }

// The mask loss's error at a pixel whose IoU with the query box is s: 1 - s inside the mask (a
// false negative), s outside (a false positive).
template <typename T>
RTP_HD T mask_error(T s, bool inside) {
  return inside ? T(1) - s : s;
}

// The mask loss 1/Q * sum_j beta_j * E_j / N_j (reference.mask_loss) from its per-query partial sums:
// err (the errors E, float64) and count (the mask pixels N), `chunks` of each per query; a query with
// N_j = 0 contributes 0.  Summed in A in query order.
template <typename A, typename B>
RTP_HD A mask_loss_mean(const double* err, const int64_t* count, const B* beta, int64_t n_q, int64_t chunks) {
  A total = A(0);
  for (int64_t j = 0; j < n_q; ++j) {
    double e = 0.0;
    int64_t n = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      e += err[j * chunks + k];
      n += count[j * chunks + k];
    }
    if (n == 0) continue;
    total += static_cast<A>(beta[j]) * static_cast<A>(e) / static_cast<A>(n);
  }
  return total / static_cast<A>(n_q);
}

}  // namespace rtpanoptic
