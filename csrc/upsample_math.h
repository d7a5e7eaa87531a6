// Bilinear x stride upsampling (F.interpolate, mode="bilinear", align_corners=False) of a
// [h, w] grid, sampled at one output pixel, for the release-exact masks of
// panoptic_from_dense_release (CPU and CUDA kernels); and the corner shortcut of
// upsample_argmax's CPU kernel (argmax_margin, at the end).
//
// Source coordinate of output index d: max(0, (d + 0.5) / stride - 0.5) (ATen's
// area_pixel_compute_source_index); with a power-of-two stride every step is exact, so the
// indices and weights equal ATen's.  Stride 1 (input size == output size) takes ATen's CPU rule
// for that case, both taps on d with weights (1, 0) (so a +-inf cell becomes inf * 1 + inf * 0 =
// NaN, and a NaN neighbour does not spread); ATen's CUDA kernel copies the input instead, which
// the CUDA kernel handles itself.  The value follows ATen's association order,
// (v00 w0x + v01 w1x) w0y + (v10 w0x + v11 w1x) w1y, either with each a * b + c * d rounded
// once as fma(a, b, c * d) or with every operation rounded (fma = false).  fma(a, b, c * d) is
// what ATen's AVX2/AVX512 CPU kernels compute (the compiler having contracted them) and what its
// CUDA kernel upsample_bilinear2d_out_frame computes: in the sm_90 machine code of torch 2.14.1's
// libtorch_cuda.so, t0 = FFMA(w0x, v00, FMUL(w1x, v01)), t1 likewise, value = FFMA(w0y, t0,
// FMUL(w1y, t1)) (float32 and float64 alike, DFMA/DMUL).
#pragma once

#include <cmath>
#include <cstdint>

#include "box_math.h"

namespace rtpanoptic {

template <typename T>
struct Tap {
  int64_t i0, i1;  // the two grid indices (i1 == i0 at the last one)
  T w0, w1;        // their weights, w0 + w1 == 1
};

template <typename T>
RTP_HD Tap<T> bilinear_tap(int64_t d, int64_t n_in, int64_t stride) {
  if (stride == 1) return {d, d, T(1), T(0)};
  T src = (static_cast<T>(d) + T(0.5)) * (T(1) / static_cast<T>(stride)) - T(0.5);
  if (src < T(0)) src = T(0);
  const int64_t i0 = static_cast<int64_t>(src);
  const T lambda = src - static_cast<T>(i0);
  return {i0, i0 + (i0 < n_in - 1 ? 1 : 0), T(1) - lambda, lambda};
}

// [*first, *last) of the output indices d in [0, n_out) whose taps touch a grid index in [lo, hi],
// by bisection (both taps are nondecreasing in d); for the GPU kernels, which hold no tap table.
template <typename T>
RTP_HD void touching_outputs(int64_t lo, int64_t hi, int64_t n_out, int64_t n_in, int64_t stride, int64_t* first,
                             int64_t* last) {
  int64_t a = 0, b = n_out;  // first d with i1(d) >= lo
  while (a < b) {
    const int64_t mid = a + (b - a) / 2;
    if (bilinear_tap<T>(mid, n_in, stride).i1 >= lo) {
      b = mid;
    } else {
      a = mid + 1;
    }
  }
  *first = a;
  b = n_out;  // first d with i0(d) > hi
  while (a < b) {
    const int64_t mid = a + (b - a) / 2;
    if (bilinear_tap<T>(mid, n_in, stride).i0 > hi) {
      b = mid;
    } else {
      a = mid + 1;
    }
  }
  *last = a;
}

#if defined(__CUDACC__) || defined(__HIPCC__)
template <typename T>
__device__ __forceinline__ T rtp_fma(T a, T b, T c) {
  return fma(a, b, c);
}
#else
template <typename T>
inline T rtp_fma(T a, T b, T c) {
  return std::fma(a, b, c);
}
#endif

// a * b + c * d as the upsampling kernel rounds it.
template <typename T>
RTP_HD T weighted_pair(T a, T b, T c, T d, bool fma) {
  return fma ? rtp_fma(a, b, c * d) : a * b + c * d;
}

template <typename T>
RTP_HD T bilinear_value(T v00, T v01, T v10, T v11, const Tap<T>& y, const Tap<T>& x, bool fma) {
  const T t0 = weighted_pair(v00, x.w0, v01, x.w1, fma);
  const T t1 = weighted_pair(v10, x.w0, v11, x.w1, fma);
  return weighted_pair(t0, y.w0, t1, y.w1, fma);
}

// Cell labels: a finite value v with |v| <= m_max whose grid neighbours all satisfy
// v >= sigma + margin (v < sigma - margin) upsamples to a value >= sigma (< sigma): the
// upsampled value is a convex combination computed with at most 3 roundings in sequence, off
// by far less than margin = m_max * 2^-16 + the smallest normal.  Others are undecided.
enum Label : uint8_t { kBelow = 0, kAbove = 1, kUndecided = 2 };

template <typename T>
RTP_HD T label_margin(T max_abs) {
  return max_abs * T(1.52587890625e-05) + (sizeof(T) == 4 ? T(1.1754943508222875e-38) : T(2.2250738585072014e-308));
}

template <typename T>
RTP_HD uint8_t cell_label(T v, T sigma, T margin) {
  if (!(std::isfinite(v))) return kUndecided;
  if (v - margin >= sigma) return kAbove;
  if (v + margin < sigma) return kBelow;
  return kUndecided;
}


// The corner shortcut of upsample_argmax: when the four grid cells a bilinear output pixel
// samples (two where an axis is not resized) have the same *safe* first argmax c, that pixel's
// argmax is c, without the per-class arithmetic.  A cell's first argmax c is safe when every
// logit l of the cell is finite with |l| <= argmax_limit (a quarter of the largest finite value)
// and l_c - max_{j<c} l_j >= argmax_margin(m), m = max_j |l_j| over all the cell's classes (c = 0
// is always safe then).  Proof, for the arithmetic of the fused kernels (v = fma(fma(x00, ww0,
// x01 * ww1), wh0, fma(x10, ww0, x11 * ww1) * wh1), each operation rounded once, the weights
// w >= 0 and the same for every class), with u = 2^-24 (float) or 2^-53 (double):
//  (a) Order.  Each operation is a correctly rounded fma or product with a non-negative factor,
//      nondecreasing in each of its other arguments, so v is nondecreasing in each corner logit:
//      l_c >= l_j at every corner gives v_c >= v_j for every class j; a tie with j > c goes to c,
//      the first maximum.  Bounded logits give no inf and no NaN: every intermediate is at most
//      (1 + u)^5 * 4 * max|l| < the largest finite value (the weights of an axis sum to <= 1 + u).
//  (b) Strictness for j < c.  Along its path each corner's term is rounded at most 3 times, so
//      v = sum_k W_k l_k (1 + t_k) + e with W_k >= 0 the weight products, |t_k| <= 3.01 u, and e
//      the underflow of the 5 roundings, |e| < 6 * the smallest normal even with flush-to-zero.
//      Hence v_c - v_j >= sum_k W_k (l_c,k - l_j,k - 3.01 u (|l_c,k| + |l_j,k|)) - 12 min_normal
//                      >= sum_k W_k (argmax_margin(m_k) - 6.02 u m_k) - 12 min_normal
//                      >= sum_k W_k * 64 min_normal - 12 min_normal > 0,
//      since 6.02 u < 2^-15 and sum_k W_k >= (1 - u)^2 (w0 = fl(1 - w1) of an axis).  The margin
//      is computed with one more rounding (of l_c - max_{j<c} l_j), covered by the factor > 8
//      between 2^-15 and 6.02 u.  So v_c > v_j for j < c, v_c >= v_j for j > c: argmax = c, bit for
//      bit what the per-class arithmetic gives.  Cells with NaN/inf, huge logits or near ties
//      (relative gap < 2^-15) are unsafe, and the pixels touching them take the arithmetic.
template <typename T>
RTP_HD T argmax_limit() {
  return sizeof(T) == 4 ? T(8.5070586659632215e+37) : T(4.4942328371557893e+307);  // largest finite / 4
}

// argmax_margin(m) = m * kArgmaxMarginRelative + argmax_margin_floor<T>(), the product and the sum
// each rounded (the vectorized CPU code computes it from these two constants).
constexpr double kArgmaxMarginRelative = 3.0517578125e-05;  // 2^-15

template <typename T>
RTP_HD T argmax_margin_floor() {
  return T(64) * (sizeof(T) == 4 ? T(1.1754943508222875e-38) : T(2.2250738585072014e-308));  // 64 min_normal
}

template <typename T>
RTP_HD T argmax_margin(T max_abs) {
  return max_abs * T(kArgmaxMarginRelative) + argmax_margin_floor<T>();
}

}  // namespace rtpanoptic
