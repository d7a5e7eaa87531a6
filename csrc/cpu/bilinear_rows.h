// ATen's CPU bilinear resize (align_corners=False) as the CPU kernels evaluate it: the sampling
// positions of an axis and the horizontal pass of one input row.  Used by upsample_argmax
// (fused with the argmax) and _bilinear_softmax (the resize itself, optionally fused with the
// softmax over the classes).
//
// ATen's generic kernel (UpSampleKernel.cpp, upsample_non_separable_Nd_kernel_impl with
// HelperInterpLinear; the one NCHW float tensors take unless the output's H + W <= 128, the input
// is channels-last with C > 3, or C == 3 at one thread) computes
//   src = scale * (dst + 0.5) - 0.5 clamped at 0 (scale = float(in) / out), index0 = min(floor(src),
//   in - 1), index1 = index0 + 1 inside the input, lambda1 = clamp(src - index0, 0, 1), lambda0 =
//   1 - lambda1; in == out: both taps on dst with weights (1, 0);
//   v = (x00 * ww0 + x01 * ww1) * wh0 + (x10 * ww0 + x11 * ww1) * wh1.
// Its AVX2/AVX-512 builds contract every a * b + c * d into fma(a, b, c * d) (and the source index
// into fma(scale, dst + 0.5, -0.5)); its DEFAULT build rounds every operation (fma = false).  The
// formula of one a * b + c * d is upsample_math.h's weighted_pair.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "simd.h"
#include "upsample_math.h"

namespace rtpanoptic {

template <typename T>
struct Axis {
  std::vector<int64_t> i0, i1;
  std::vector<T> w0, w1;
};

// The first n of out sampling positions along an axis of in pixels (ATen's rule, see above).
template <typename T>
Axis<T> axis_weights(int64_t in, int64_t out, int64_t n, bool fma) {
  Axis<T> a{std::vector<int64_t>(n), std::vector<int64_t>(n), std::vector<T>(n), std::vector<T>(n)};
  const T scale = static_cast<T>(in) / static_cast<T>(out);
  for (int64_t d = 0; d < n; ++d) {
    if (in == out) {
      a.i0[d] = a.i1[d] = d;
      a.w0[d] = T(1);
      a.w1[d] = T(0);
      continue;
    }
    const T half = static_cast<T>(d) + T(0.5);
    T src = fma ? std::fma(scale, half, T(-0.5)) : scale * half - T(0.5);
    if (src < T(0)) src = T(0);
    const int64_t i = std::min<int64_t>(static_cast<int64_t>(std::floor(src)), in - 1);
    const T l1 = std::min(std::max(src - static_cast<T>(i), T(0)), T(1));
    a.i0[d] = i;
    a.i1[d] = i < in - 1 ? i + 1 : i;
    a.w1[d] = l1;
    a.w0[d] = T(1) - l1;
  }
  return a;
}

// out[m] = weighted_pair(src[i0[x]], w0[x], src[i1[x]], w1[x]) for one input row src and the
// columns x = cols[m] (cols == nullptr: x = m), first <= m < n.
template <typename T, bool kFma>
RTP_ALWAYS_INLINE void horizontal_values(const T* src, const Axis<T>& ax, const int32_t* cols, int64_t n, T* out,
                                         int64_t first = 0) {
  const int64_t* i0 = ax.i0.data();
  const int64_t* i1 = ax.i1.data();
  const T* w0 = ax.w0.data();
  const T* w1 = ax.w1.data();
  if (cols == nullptr) {
    for (int64_t x = first; x < n; ++x) out[x] = weighted_pair(src[i0[x]], w0[x], src[i1[x]], w1[x], kFma);
  } else {
    for (int64_t m = first; m < n; ++m) {
      const int64_t x = cols[m];
      out[m] = weighted_pair(src[i0[x]], w0[x], src[i1[x]], w1[x], kFma);
    }
  }
}

// The horizontal rows (every class of one input row, row_len values each) of the two input rows
// that an output row samples, kept in two slots for the next output rows of a chunk: consecutive
// output rows sample the same pair or move on by one row.  Keys are (image, input row) as
// image * h + row; -1: empty.
template <typename T>
class RowPairCache {
 public:
  explicit RowPairCache(int64_t row_len) : buf_(2 * row_len), slot_{buf_.data(), buf_.data() + row_len} {}

  // The slot holding `key`, else filled by fill(slot) into the slot that does not hold `keep` (the
  // other row of the pair being read).
  template <typename Fill>
  const T* get(int64_t key, int64_t keep, Fill&& fill) {
    if (tag_[0] == key) return slot_[0];
    if (tag_[1] == key) return slot_[1];
    const int k = tag_[0] == keep ? 1 : 0;
    fill(slot_[k]);
    tag_[k] = key;
    return slot_[k];
  }

  // Slot k for other use (its cached row forgotten).
  T* scratch(int k) {
    tag_[k] = -1;
    return slot_[k];
  }

 private:
  std::vector<T> buf_;
  T* slot_[2];
  int64_t tag_[2] = {-1, -1};
};

}  // namespace rtpanoptic
