// Fused bilinear upsampling (align_corners=False) + argmax over the classes on the CPU: the
// semantic map at input resolution without the [B, C, H, W] resized tensor.
//
// Sampling positions and weights follow ATen's upsample_bilinear2d (src = (dst + 0.5) * in/out
// - 0.5 clamped at 0, index0 = min(floor(src), in - 1), index1 = index0 + 1 inside the input,
// lambda1 = clamp(src - index0, 0, 1), lambda0 = 1 - lambda1; in == out copies).  Values are
//   v = fma(fma(x00, ww0, x01 * ww1), wh0, fma(x10, ww0, x11 * ww1) * wh1)
// with explicit fused multiply-adds (also in src = fma(scale, dst + 0.5, -0.5)): the arithmetic
// of ATen's CPU kernel as built for AVX2/AVX-512, whose compiler contracts a * b + c.  The inner
// term fma(x_r0, ww0, x_r1 * ww1) depends on the input row and the output column only, so it is
// computed once per input row and class (a "horizontal row") and reused by the output rows that
// sample it; the result is the same expression evaluated in the same order.
//
// Corner shortcut (csrc/upsample_math.h, argmax_margin: the proof): every input cell gets a code,
// its first argmax when that is safe (finite, bounded logits, a relative top-2 gap >= 2^-15), else
// -1.  An output pixel whose two or four corner cells share one code >= 0 takes it; only the other
// pixels (class boundaries, near ties, NaN/inf) take the per-class arithmetic, on their columns
// alone ("mixed" columns, the same for every output row between one pair of input rows).  Where
// more than half of a row's columns are mixed, the row takes the plain path (all columns, horizontal rows
// cached per input row).  RTPANOPTIC_UPSAMPLE_PLAIN=1 in the environment turns the shortcut off
// (the plain path everywhere; for benchmarks and tests, read at every call).
//
// Output dtype (out_dtype, None: int64): int64, int32, int16 or uint8 (the class index, C must fit),
// written directly by both paths.
//
// ISA: an AVX2+FMA path chosen at run time (simd::cpu_isa() and the CPU's fma flag; the vertical pass
// and argmax in intrinsics, 8 columns with the classes in registers; the corner codes likewise, 8
// cells at a time), else the portable path, whose std::fma rounds identically (one rounding), only
// slower.  The shortcut decides a run of output columns that sample the same two input columns at once.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <type_traits>
#include <vector>

#include "op_checks.h"
#include "bilinear_rows.h"
#include "simd.h"
#include "upsample_math.h"

#if RTP_HAVE_AVX2_PATH
#define RTP_AVX2_FMA __attribute__((target("avx2,fma"))) inline
#endif

namespace rtpanoptic {
namespace {

struct Shape {
  int64_t classes, h, w, rows, cols;  // input [C, h, w]; output rows x cols (the crop)
};

// A run of output columns [x0, x1) that sample the same two input columns (i0, i1): the corner
// shortcut decides a whole run from the four corner cells at once.
struct ColumnRun {
  int64_t x0, x1, i0, i1;
};

template <typename T>
std::vector<ColumnRun> column_runs(const Axis<T>& ax, int64_t n) {
  std::vector<ColumnRun> runs;
  for (int64_t x = 0; x < n; ++x) {
    if (runs.empty() || runs.back().i0 != ax.i0[x] || runs.back().i1 != ax.i1[x]) {
      runs.push_back({x, x + 1, ax.i0[x], ax.i1[x]});
    } else {
      runs.back().x1 = x + 1;
    }
  }
  return runs;
}

// dst[c * n + m] = fma(src[c, r, i0[x]], w0[x], src[c, r, i1[x]] * w1[x]) for input row r and the
// columns x = cols[m] (cols == nullptr: x = m), m < n.
template <typename T>
RTP_ALWAYS_INLINE void horizontal_row(const T* plane0, const Shape& s, int64_t r, const Axis<T>& ax,
                                      const int32_t* cols, int64_t n, T* dst) {
  for (int64_t c = 0; c < s.classes; ++c) {
    horizontal_values<T, true>(plane0 + (c * s.h + r) * s.w, ax, cols, n, dst + c * n);
  }
}

// idx[x] = first argmax over c < classes of fma(h0[c * n + x], l0, h1[c * n + x] * l1), x < n
// (NaN is the maximum).
template <typename T>
RTP_ALWAYS_INLINE void vertical_argmax(const T* h0, const T* h1, T l0, T l1, int64_t classes, int64_t n, T* best,
                                       int32_t* idx) {
  for (int64_t x = 0; x < n; ++x) {
    best[x] = std::fma(h0[x], l0, h1[x] * l1);
    idx[x] = 0;
  }
  for (int64_t c = 1; c < classes; ++c) {
    const T* a = h0 + c * n;
    const T* b = h1 + c * n;
    const int32_t ci = static_cast<int32_t>(c);
    for (int64_t x = 0; x < n; ++x) {
      const T v = std::fma(a[x], l0, b[x] * l1);
      const T cur = best[x];
      const bool take = (v > cur) | ((v != v) & (cur == cur));
      best[x] = take ? v : cur;
      idx[x] = take ? ci : idx[x];
    }
  }
}

#if RTP_HAVE_AVX2_PATH
// vertical_argmax<float> on 8 columns at a time, the classes in registers: the same operations
// (fmadd of one product, GT_OQ / UNORD_Q compares for the argmax order) as the scalar loop.
RTP_AVX2_FMA void vertical_argmax_avx2(const float* h0, const float* h1, float l0, float l1, int64_t classes,
                                       int64_t n, int32_t* idx_out) {
  const __m256 w0 = _mm256_set1_ps(l0), w1 = _mm256_set1_ps(l1);
  int64_t x = 0;
  for (; x + 8 <= n; x += 8) {
    __m256 best = _mm256_fmadd_ps(_mm256_loadu_ps(h0 + x), w0, _mm256_mul_ps(_mm256_loadu_ps(h1 + x), w1));
    __m256 idx = _mm256_castsi256_ps(_mm256_setzero_si256());
    for (int64_t c = 1; c < classes; ++c) {
      const __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(h0 + c * n + x), w0,
                                       _mm256_mul_ps(_mm256_loadu_ps(h1 + c * n + x), w1));
      const __m256 greater = _mm256_cmp_ps(v, best, _CMP_GT_OQ);
      const __m256 nan_over_number =
          _mm256_andnot_ps(_mm256_cmp_ps(best, best, _CMP_UNORD_Q), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      const __m256 take = _mm256_or_ps(greater, nan_over_number);
      best = _mm256_blendv_ps(best, v, take);
      idx = _mm256_blendv_ps(idx, _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int32_t>(c))), take);
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx_out + x), _mm256_castps_si256(idx));
  }
  for (; x < n; ++x) {  // the last columns: the scalar loop's operations, one column at a time
    float best = std::fma(h0[x], l0, h1[x] * l1);
    int32_t arg = 0;
    for (int64_t c = 1; c < classes; ++c) {
      const float v = std::fma(h0[c * n + x], l0, h1[c * n + x] * l1);
      if ((v > best) | ((v != v) & (best == best))) {
        best = v;
        arg = static_cast<int32_t>(c);
      }
    }
    idx_out[x] = arg;
  }
}
#endif

template <typename T, bool kAvx2>
RTP_ALWAYS_INLINE void vertical(const T* h0, const T* h1, T l0, T l1, int64_t classes, int64_t n, T* best,
                                int32_t* idx) {
#if RTP_HAVE_AVX2_PATH
  if constexpr (kAvx2 && std::is_same_v<T, float>) {
    vertical_argmax_avx2(h0, h1, l0, l1, classes, n, idx);
    return;
  }
#endif
  vertical_argmax<T>(h0, h1, l0, l1, classes, n, best, idx);
}

// code[p] for the cells p in [p0, w) of input row r of one image: the first argmax when it is safe
// for the corner shortcut (upsample_math.h, argmax_margin), else -1.
template <typename T>
void corner_codes(const T* plane0, const Shape& s, int64_t r, int64_t p0, int32_t* code) {
  const T limit = argmax_limit<T>();
  const T* v0 = plane0 + r * s.w;
  for (int64_t p = p0; p < s.w; ++p) {
    T best = v0[p], prev = -std::numeric_limits<T>::infinity(), top = std::fabs(v0[p]);
    bool bounded = top <= limit;  // false for NaN
    int32_t arg = 0;
    for (int64_t c = 1; c < s.classes; ++c) {
      const T v = v0[c * s.h * s.w + p];
      const T a = std::fabs(v);
      const bool take = v > best;  // the first maximum (NaN: not bounded, checked below)
      prev = take ? best : prev;
      best = take ? v : best;
      arg = take ? static_cast<int32_t>(c) : arg;
      bounded &= a <= limit;
      top = a > top ? a : top;
    }
    code[p] = bounded && best - prev >= argmax_margin(top) ? arg : -1;
  }
}

#if RTP_HAVE_AVX2_PATH
// corner_codes<float> on 8 cells at a time (the classes in registers), the same comparisons; the
// margin's product and sum rounded separately as in the scalar code (no contraction).
RTP_AVX2_FMA void corner_codes_avx2(const float* plane0, const Shape& s, int64_t r, int32_t* code) {
  const float* v0 = plane0 + r * s.w;
  const int64_t plane = s.h * s.w;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 limit = _mm256_set1_ps(argmax_limit<float>());
  const __m256 rel = _mm256_set1_ps(static_cast<float>(kArgmaxMarginRelative));
  const __m256 min_gap = _mm256_set1_ps(argmax_margin_floor<float>());
  int64_t p = 0;
  for (; p + 8 <= s.w; p += 8) {
    __m256 best = _mm256_loadu_ps(v0 + p);
    __m256 prev = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    __m256 top = _mm256_and_ps(best, abs_mask);
    __m256 bounded = _mm256_cmp_ps(top, limit, _CMP_LE_OQ);
    __m256i arg = _mm256_setzero_si256();
    for (int64_t c = 1; c < s.classes; ++c) {
      const __m256 v = _mm256_loadu_ps(v0 + c * plane + p);
      const __m256 a = _mm256_and_ps(v, abs_mask);
      const __m256 take = _mm256_cmp_ps(v, best, _CMP_GT_OQ);
      prev = _mm256_blendv_ps(prev, best, take);
      best = _mm256_blendv_ps(best, v, take);
      arg = _mm256_castps_si256(
          _mm256_blendv_ps(_mm256_castsi256_ps(arg), _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int32_t>(c))), take));
      bounded = _mm256_and_ps(bounded, _mm256_cmp_ps(a, limit, _CMP_LE_OQ));
      top = _mm256_blendv_ps(top, a, _mm256_cmp_ps(a, top, _CMP_GT_OQ));
    }
    const __m256 margin = _mm256_add_ps(_mm256_mul_ps(top, rel), min_gap);
    const __m256 safe = _mm256_and_ps(bounded, _mm256_cmp_ps(_mm256_sub_ps(best, prev), margin, _CMP_GE_OQ));
    const __m256i out = _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(_mm256_set1_epi32(-1)), _mm256_castsi256_ps(arg), safe));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(code + p), out);
  }
  corner_codes<float>(plane0, s, r, p, code);  // the last cells
}
#endif

// Output rows [begin, end) of the flattened (image, row) range; codes: the cells' corner codes
// (nullptr: the plain path).
template <typename T, typename OutT, bool kAvx2 = false>
RTP_ALWAYS_INLINE void rows_impl(const T* in, const int32_t* codes, OutT* out, const Shape& s, const Axis<T>& ay,
                                 const Axis<T>& ax, const std::vector<ColumnRun>& runs, int64_t begin, int64_t end) {
  const int64_t n = s.cols;
  RowPairCache<T> rows(s.classes * n);  // the plain path's horizontal rows; the mixed columns' (scratch)
  std::vector<T> best(n);
  std::vector<int32_t> idx(n), mixed(n);
  std::vector<OutT> shortcut(n);  // the pair's output row, its mixed columns still to fill
  T* mixed_rows[2] = {nullptr, nullptr};
  int64_t pair = -1, n_mixed = 0;  // the input row pair of `shortcut` and `mixed`, as (image * h + row0) * h + row1
  bool plain = codes == nullptr;
  for (int64_t flat = begin; flat < end; ++flat) {
    const int64_t b = flat / s.rows, y = flat % s.rows;
    const T* plane0 = in + b * s.classes * s.h * s.w;
    const int64_t r0 = ay.i0[y], r1 = ay.i1[y];
    OutT* dst = out + flat * s.cols;
    if (codes != nullptr && (b * s.h + r0) * s.h + r1 != pair) {
      pair = (b * s.h + r0) * s.h + r1;
      const int32_t* c0 = codes + (b * s.h + r0) * s.w;
      const int32_t* c1 = codes + (b * s.h + r1) * s.w;
      n_mixed = 0;
      for (const ColumnRun& run : runs) {
        const int32_t k = c0[run.i0];
        const bool same = (k >= 0) & (k == c0[run.i1]) & (k == c1[run.i0]) & (k == c1[run.i1]);
        std::fill(shortcut.begin() + run.x0, shortcut.begin() + run.x1, static_cast<OutT>(same ? k : 0));
        if (!same) {
          for (int64_t x = run.x0; x < run.x1; ++x) mixed[n_mixed++] = static_cast<int32_t>(x);
        }
      }
      plain = 2 * n_mixed > n;
      if (!plain && n_mixed > 0) {  // the mixed columns' horizontal values of both rows, in the slots
        for (int k = 0; k < 2; ++k) {
          mixed_rows[k] = rows.scratch(k);
          horizontal_row<T>(plane0, s, k == 0 ? r0 : r1, ax, mixed.data(), n_mixed, mixed_rows[k]);
        }
      }
    }
    if (!plain) {
      std::copy(shortcut.begin(), shortcut.end(), dst);
      if (n_mixed > 0) {
        vertical<T, kAvx2>(mixed_rows[0], mixed_rows[1], ay.w0[y], ay.w1[y], s.classes, n_mixed, best.data(),
                           idx.data());
        for (int64_t m = 0; m < n_mixed; ++m) dst[mixed[m]] = static_cast<OutT>(idx[m]);
      }
      continue;
    }
    const int64_t k0 = b * s.h + r0, k1 = b * s.h + r1;
    const T* h0 = rows.get(k0, k1, [&](T* dst) { horizontal_row<T>(plane0, s, r0, ax, nullptr, n, dst); });
    const T* h1 = rows.get(k1, k0, [&](T* dst) { horizontal_row<T>(plane0, s, r1, ax, nullptr, n, dst); });
    vertical<T, kAvx2>(h0, h1, ay.w0[y], ay.w1[y], s.classes, n, best.data(), idx.data());
    for (int64_t x = 0; x < n; ++x) dst[x] = static_cast<OutT>(idx[x]);
  }
}

template <typename T, typename OutT>
void rows_portable(const T* in, const int32_t* codes, OutT* out, const Shape& s, const Axis<T>& ay,
                   const Axis<T>& ax, const std::vector<ColumnRun>& runs, int64_t begin, int64_t end) {
  rows_impl<T, OutT>(in, codes, out, s, ay, ax, runs, begin, end);
}

#if RTP_HAVE_AVX2_PATH
template <typename T, typename OutT>
RTP_AVX2_FMA void rows_avx2(const T* in, const int32_t* codes, OutT* out, const Shape& s, const Axis<T>& ay,
                            const Axis<T>& ax, const std::vector<ColumnRun>& runs, int64_t begin, int64_t end) {
  rows_impl<T, OutT, true>(in, codes, out, s, ay, ax, runs, begin, end);
}
#endif

bool plain_requested() {
  const char* v = std::getenv("RTPANOPTIC_UPSAMPLE_PLAIN");
  return v != nullptr && v[0] == '1' && v[1] == '\0';
}

template <typename T, typename OutT>
void upsample_argmax_impl(const T* in, OutT* out, int64_t batch, const Shape& s, int64_t out_h, int64_t out_w) {
  const Axis<T> ay = axis_weights<T>(s.h, out_h, s.rows, true);
  const Axis<T> ax = axis_weights<T>(s.w, out_w, s.cols, true);
  auto rows = rows_portable<T, OutT>;
  bool avx2 = false;
#if RTP_HAVE_AVX2_PATH
  static const bool fma_cpu = __builtin_cpu_supports("fma");
  avx2 = simd::cpu_isa() == simd::Isa::kAvx2 && fma_cpu;
  if (avx2) rows = rows_avx2<T, OutT>;
#endif
  std::vector<int32_t> codes;
  if (!plain_requested()) {
    codes.resize(batch * s.h * s.w);
    at::parallel_for(0, batch * s.h, 16, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const T* plane0 = in + k / s.h * s.classes * s.h * s.w;
#if RTP_HAVE_AVX2_PATH
        if constexpr (std::is_same_v<T, float>) {
          if (avx2) {
            corner_codes_avx2(plane0, s, k % s.h, codes.data() + k * s.w);
            continue;
          }
        }
#endif
        corner_codes<T>(plane0, s, k % s.h, 0, codes.data() + k * s.w);
      }
    });
  }
  const int32_t* code_ptr = codes.empty() ? nullptr : codes.data();
  // A chunk of >= 8 output rows reuses each horizontal row for the rows that sample it.
  const int64_t grain = std::max<int64_t>(8, 32768 / std::max<int64_t>(s.cols * s.classes, 1));
  const std::vector<ColumnRun> runs = column_runs(ax, s.cols);
  at::parallel_for(0, batch * s.rows, grain, [&](int64_t begin, int64_t end) {
    rows(in, code_ptr, out, s, ay, ax, runs, begin, end);
  });
}

at::Tensor upsample_argmax_cpu(const at::Tensor& logits, at::IntArrayRef size, at::IntArrayRef crop,
                               c10::optional<at::ScalarType> out_dtype) {
  const char* op = "upsample_argmax";
  const at::ScalarType dtype = check_upsample_argmax_args(op, logits, size, crop, out_dtype, c10::kCPU);
  TORCH_CHECK(logits.size(1) <= INT32_MAX, op, ": at most 2^31 - 1 classes, got ", logits.size(1));
  const auto acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto in = logits.to(acc).contiguous();
  const int64_t batch = in.size(0);
  auto out = at::empty({batch, crop[0], crop[1]}, logits.options().dtype(dtype));
  if (batch == 0) return out;
  const Shape s{in.size(1), in.size(2), in.size(3), crop[0], crop[1]};
  AT_DISPATCH_FLOATING_TYPES(acc, "upsample_argmax_cpu", [&] {
    const scalar_t* x = in.data_ptr<scalar_t>();
    switch (dtype) {
      case at::kLong: upsample_argmax_impl(x, out.data_ptr<int64_t>(), batch, s, size[0], size[1]); break;
      case at::kInt: upsample_argmax_impl(x, out.data_ptr<int32_t>(), batch, s, size[0], size[1]); break;
      case at::kShort: upsample_argmax_impl(x, out.data_ptr<int16_t>(), batch, s, size[0], size[1]); break;
      default: upsample_argmax_impl(x, out.data_ptr<uint8_t>(), batch, s, size[0], size[1]); break;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CPU, m) {
  m.impl("upsample_argmax", TORCH_FN(upsample_argmax_cpu));
}

}  // namespace rtpanoptic
