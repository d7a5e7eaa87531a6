// Bilinear x stride upsampling (F.interpolate, mode="bilinear", align_corners=False) of a
// [h, w] grid, sampled at one output pixel, for the release-exact masks of
// panoptic_from_dense_release (CPU and CUDA kernels).
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

}  // namespace rtpanoptic
