// _bilinear_softmax (internal, CPU only): F.interpolate(logits, size, mode="bilinear",
// align_corners=False), then with softmax = true .softmax(dim=1), bit for bit, in one pass over
// the output without the resized tensor's extra round trip through memory.  Called by
// rtpanoptic/ops/upsample.py (semantic_probs) only where ATen takes the arithmetic reproduced here.
//
// Resize: bilinear_rows.h (ATen's generic kernel; fma: how this process's ATen build rounds,
// ops/panoptic_release.py _fused_multiply_add).  Horizontal values are computed once per input row
// and class and reused by the output rows that sample that row (the same expression, in the same
// order).  Parallel over (image, output row), each computing all the classes of its row.
//
// Softmax over the classes (ATen's SoftMaxKernel.cpp, _vec_softmax for float along a dim that is
// not the last): per pixel, m = max over the classes, e_c = exp(x_c - m), s = ((0 + e_0) + e_1) +
// ..., out_c = e_c / s.  ATen vectorizes it over V consecutive pixels of the flattened (image,
// pixel) range, V = Vectorized<float>::size() (16 under ATEN_CPU_CAPABILITY avx512, else 8):
//   max: vec::maximum (NaN if either operand is NaN: all ones under AVX2/AVX-512, the first NaN
//        operand in the DEFAULT build), exp: Vectorized<float>::exp = Sleef_expf16_u10 (avx512),
//        Sleef_expf8_u10 (avx2), std::exp lane by lane (default);
// and takes a scalar path (std::max, std::exp) for the pixels that do not fill a vector: those
// past the last multiple of V of each image and those at the end of each thread's chunk of
// at::parallel_for (grain 0: at::get_num_threads() chunks of ceil(N / T) pixels).  Both paths
// are reproduced pixel by pixel (scalar_pixels).  The Sleef functions are called through their
// exported symbols in libtorch_cpu (the ones ATen calls), found at run time; the caller checks
// once per process that the result equals ATen's (ops/upsample.py, the probe).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "bilinear_rows.h"
#include "simd.h"

namespace rtpanoptic {
namespace {

// How this process's ATen softmax evaluates exp and max (see above).
enum class SoftmaxIsa { kDefault, kAvx2, kAvx512 };

struct SoftmaxArith {
  SoftmaxIsa isa = SoftmaxIsa::kDefault;
  int64_t lanes = 8;          // Vectorized<float>::size()
  void* sleef_exp = nullptr;  // Sleef_expf8_u10 / Sleef_expf16_u10
};

void* libtorch_symbol(const char* name) {
  void* handle = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
  void* sym = handle != nullptr ? dlsym(handle, name) : nullptr;
  if (sym == nullptr) sym = dlsym(RTLD_DEFAULT, name);
  return sym;
}

const SoftmaxArith& softmax_arith() {
  static const SoftmaxArith arith = [] {
    SoftmaxArith a;
#if RTP_HAVE_AVX2_PATH
    const std::string cap = at::get_cpu_capability();
    if (cap == "AVX512" && __builtin_cpu_supports("avx512f")) {
      a = {SoftmaxIsa::kAvx512, 16, libtorch_symbol("Sleef_expf16_u10")};
    } else if (cap == "AVX2" && __builtin_cpu_supports("avx2")) {
      a = {SoftmaxIsa::kAvx2, 8, libtorch_symbol("Sleef_expf8_u10")};
    }
#endif
    return a;
  }();
  return arith;
}

// out[i] = exp(v[i] - m[i]) as Vectorized<float>'s operator- and exp compute it, i < n.
void exp_libm(const float* v, const float* m, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::exp(v[i] - m[i]);
}

#if RTP_HAVE_AVX2_PATH
__attribute__((target("avx2"))) void exp_sleef8(void* fn, const float* v, const float* m, float* out, int64_t n) {
  auto f = reinterpret_cast<__m256 (*)(__m256)>(fn);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, f(_mm256_sub_ps(_mm256_loadu_ps(v + i), _mm256_loadu_ps(m + i))));
  if (i < n) {  // lanes are independent: the last ones padded with zeros
    alignas(32) float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t j = i; j < n; ++j) buf[j - i] = v[j] - m[j];
    _mm256_store_ps(buf, f(_mm256_load_ps(buf)));
    std::memcpy(out + i, buf, (n - i) * sizeof(float));
  }
}

__attribute__((target("avx512f"))) void exp_sleef16(void* fn, const float* v, const float* m, float* out,
                                                    int64_t n) {
  auto f = reinterpret_cast<__m512 (*)(__m512)>(fn);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(out + i, f(_mm512_sub_ps(_mm512_loadu_ps(v + i), _mm512_loadu_ps(m + i))));
  }
  if (i < n) {
    alignas(64) float buf[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t j = i; j < n; ++j) buf[j - i] = v[j] - m[j];
    _mm512_store_ps(buf, f(_mm512_load_ps(buf)));
    std::memcpy(out + i, buf, (n - i) * sizeof(float));
  }
}
#endif

void vector_exp(const SoftmaxArith& a, const float* v, const float* m, float* out, int64_t n) {
#if RTP_HAVE_AVX2_PATH
  if (a.isa == SoftmaxIsa::kAvx512) return exp_sleef16(a.sleef_exp, v, m, out, n);
  if (a.isa == SoftmaxIsa::kAvx2) return exp_sleef8(a.sleef_exp, v, m, out, n);
#endif
  exp_libm(v, m, out, n);
}

// vec::maximum(a, b) lane by lane: AVX2/AVX-512 (max_ps(a, b), all ones where unordered) or the
// DEFAULT build's (a > b ? a : b, a where a is NaN).
RTP_ALWAYS_INLINE float vec_maximum(float a, float b, bool all_ones_nan) {
  if (all_ones_nan) {
    if (a != a || b != b) {
      const uint32_t ones = 0xFFFFFFFFu;
      float nan;
      std::memcpy(&nan, &ones, sizeof nan);
      return nan;
    }
    return a > b ? a : b;
  }
  return a != a ? a : (a > b ? a : b);
}

// flags[i] = 1 where ATen's _vec_softmax takes its scalar path for flattened pixel i of
// outer x inner pixels (at::parallel_for with grain 0, as invoke_parallel splits it).
std::vector<uint8_t> scalar_pixels(int64_t outer, int64_t inner, int64_t lanes) {
  const int64_t n = outer * inner;
  std::vector<uint8_t> flags(n, 0);
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t chunk = (n > 1 && threads > 1) ? (n + threads - 1) / threads : n;
  for (int64_t begin = 0; begin < n; begin += chunk) {
    const int64_t end = std::min(n, begin + chunk);
    int64_t idx = begin;
    while (idx < end) {
      const int64_t inner_idx = idx % inner;
      if (inner_idx + lanes <= inner && idx + lanes <= end) {
        idx += lanes;
        continue;
      }
      const int64_t tail = idx + lanes > end ? end - idx : inner - inner_idx;
      std::fill(flags.begin() + idx, flags.begin() + idx + tail, uint8_t(1));
      idx += tail;
    }
  }
  return flags;
}

struct TapBlocks;

struct Plan {
  int64_t classes, h, w, out_h, out_w;
  const TapBlocks* blocks;  // of the columns (the AVX2 path)
};

// The softmax of one output row: v [classes, n] resized values -> out rows (class c at out + c *
// plane), scalar: ATen's scalar-path flags of the row's pixels; m, s: n scratch values.
RTP_ALWAYS_INLINE void softmax_row(const float* v, float* out, int64_t plane, int64_t classes, int64_t n,
                                   const uint8_t* scalar, const SoftmaxArith& a, float* m, float* s) {
  const bool ones = a.isa != SoftmaxIsa::kDefault;
  for (int64_t x = 0; x < n; ++x) m[x] = v[x];
  for (int64_t c = 1; c < classes; ++c) {
    for (int64_t x = 0; x < n; ++x) m[x] = vec_maximum(m[x], v[c * n + x], ones);
  }
  for (int64_t c = 0; c < classes; ++c) vector_exp(a, v + c * n, m, out + c * plane, n);
  for (int64_t x = 0; x < n; ++x) {
    if (!scalar[x]) continue;
    float mx = v[x];  // std::max(max_input, x_c): (max_input < x_c) ? x_c : max_input
    for (int64_t c = 1; c < classes; ++c) mx = mx < v[c * n + x] ? v[c * n + x] : mx;
    for (int64_t c = 0; c < classes; ++c) out[c * plane + x] = std::exp(v[c * n + x] - mx);
  }
  for (int64_t x = 0; x < n; ++x) s[x] = 0.0f;
  for (int64_t c = 0; c < classes; ++c) {
    for (int64_t x = 0; x < n; ++x) s[x] = s[x] + out[c * plane + x];
  }
  for (int64_t c = 0; c < classes; ++c) {
    for (int64_t x = 0; x < n; ++x) out[c * plane + x] = out[c * plane + x] / s[x];
  }
}

// Blocks of 8 output columns whose taps lie in 8 consecutive input columns [base, base + 8) (any
// upsampling): one masked load and two lane permutations give their 16 taps, no gathers.
struct TapBlocks {
  std::vector<int64_t> base;   // per block
  std::vector<int32_t> lanes;  // per block: i0 - base (8), i1 - base (8), load mask (8: -1 where base + j < w)
  std::vector<uint8_t> fits;   // per block: whether the taps lie in [base, base + 8)
};

TapBlocks tap_blocks(const Axis<float>& ax, int64_t n, int64_t w) {
  TapBlocks t;
  for (int64_t x = 0; x + 8 <= n; x += 8) {
    const int64_t base = ax.i0[x];
    bool fits = true;
    for (int64_t j = 0; j < 8; ++j) {
      fits = fits && ax.i0[x + j] >= base && ax.i1[x + j] < base + 8;
    }
    t.base.push_back(base);
    t.fits.push_back(fits);
    for (int64_t j = 0; j < 8; ++j) t.lanes.push_back(fits ? static_cast<int32_t>(ax.i0[x + j] - base) : 0);
    for (int64_t j = 0; j < 8; ++j) t.lanes.push_back(fits ? static_cast<int32_t>(ax.i1[x + j] - base) : 0);
    for (int64_t j = 0; j < 8; ++j) t.lanes.push_back(base + j < w ? -1 : 0);
  }
  return t;
}

#if RTP_HAVE_AVX2_PATH
// horizontal_values<float, true> on 8 columns at a time (tap_blocks; the same fmadd of one product).
// next: the offset of the row to prefetch meanwhile (the next input row of this class plane).
__attribute__((target("avx2,fma"))) inline void horizontal_values_avx2(const float* src, const Axis<float>& ax,
                                                                       const TapBlocks& t, int64_t n, float* out,
                                                                       int64_t next) {
  int64_t x = 0;
  for (int64_t k = 0; x + 8 <= n; ++k, x += 8) {
    if (!t.fits[k]) {
      horizontal_values<float, true>(src, ax, nullptr, x + 8, out, x);
      continue;
    }
    const __m256i* lanes = reinterpret_cast<const __m256i*>(t.lanes.data() + 24 * k);
    _mm_prefetch(reinterpret_cast<const char*>(src + next + t.base[k]), _MM_HINT_T0);
    const __m256 v = _mm256_maskload_ps(src + t.base[k], _mm256_loadu_si256(lanes + 2));
    const __m256 p = _mm256_permutevar8x32_ps(v, _mm256_loadu_si256(lanes));
    const __m256 q = _mm256_permutevar8x32_ps(v, _mm256_loadu_si256(lanes + 1));
    _mm256_storeu_ps(out + x, _mm256_fmadd_ps(p, _mm256_loadu_ps(ax.w0.data() + x),
                                              _mm256_mul_ps(q, _mm256_loadu_ps(ax.w1.data() + x))));
  }
  horizontal_values<float, true>(src, ax, nullptr, n, out, x);  // the last columns
}
#endif

// Output rows [begin, end) of the flattened (image, row) range.
template <bool kFma, bool kAvx2>
RTP_ALWAYS_INLINE void rows_impl(const float* in, float* out, const Plan& p, const Axis<float>& ay,
                                 const Axis<float>& ax, const uint8_t* scalar, const SoftmaxArith* arith,
                                 int64_t begin, int64_t end) {
  const int64_t n = p.out_w, row_len = p.classes * n, plane = p.out_h * p.out_w;
  RowPairCache<float> rows(row_len);
  std::vector<float> buf(row_len + 2 * n);
  float* values = buf.data();
  float* m = buf.data() + row_len;
  float* s = m + n;
  auto hrow = [&](const float* plane0, int64_t r, float* dst) {
    for (int64_t c = 0; c < p.classes; ++c) {
      const float* src = plane0 + (c * p.h + r) * p.w;
#if RTP_HAVE_AVX2_PATH
      if constexpr (kAvx2 && kFma) {
        horizontal_values_avx2(src, ax, *p.blocks, n, dst + c * n, r + 1 < p.h ? p.w : 0);
        continue;
      }
#endif
      horizontal_values<float, kFma>(src, ax, nullptr, n, dst + c * n);
    }
  };
  for (int64_t flat = begin; flat < end; ++flat) {
    const int64_t b = flat / p.out_h, y = flat % p.out_h;
    const float* plane0 = in + b * p.classes * p.h * p.w;
    const int64_t k0 = b * p.h + ay.i0[y], k1 = b * p.h + ay.i1[y];
    const float* h0 = rows.get(k0, k1, [&](float* dst) { hrow(plane0, ay.i0[y], dst); });
    const float* h1 = rows.get(k1, k0, [&](float* dst) { hrow(plane0, ay.i1[y], dst); });
    float* dst = out + b * p.classes * plane + y * n;
    float* vrow = arith != nullptr ? values : nullptr;
    const float l0 = ay.w0[y], l1 = ay.w1[y];
    for (int64_t c = 0; c < p.classes; ++c) {
      float* o = vrow != nullptr ? vrow + c * n : dst + c * plane;
      const float* a = h0 + c * n;
      const float* e = h1 + c * n;
      for (int64_t x = 0; x < n; ++x) o[x] = weighted_pair(a[x], l0, e[x], l1, kFma);
    }
    if (arith != nullptr) softmax_row(values, dst, plane, p.classes, n, scalar + flat * n, *arith, m, s);
  }
}

template <bool kFma>
void rows_portable(const float* in, float* out, const Plan& p, const Axis<float>& ay, const Axis<float>& ax,
                   const uint8_t* scalar, const SoftmaxArith* arith, int64_t begin, int64_t end) {
  rows_impl<kFma, false>(in, out, p, ay, ax, scalar, arith, begin, end);
}

#if RTP_HAVE_AVX2_PATH
__attribute__((target("avx2,fma"))) void rows_avx2(const float* in, float* out, const Plan& p,
                                                   const Axis<float>& ay, const Axis<float>& ax,
                                                   const uint8_t* scalar, const SoftmaxArith* arith, int64_t begin,
                                                   int64_t end) {
  rows_impl<true, true>(in, out, p, ay, ax, scalar, arith, begin, end);
}
#endif

at::Tensor bilinear_softmax_cpu(const at::Tensor& logits, at::IntArrayRef size, bool fma, bool softmax) {
  const char* op = "_bilinear_softmax";
  TORCH_CHECK_TYPE(logits.scalar_type() == at::kFloat, op, ": logits must be float32, got ", logits.scalar_type());
  TORCH_CHECK_VALUE(logits.dim() == 4 && logits.is_contiguous() && logits.device().is_cpu(), op,
                    ": logits must be a contiguous 4-D CPU tensor, got ", logits.sizes());
  TORCH_CHECK_VALUE(size.size() == 2 && size[0] > 0 && size[1] > 0, op, ": size must be two positive ints, got ",
                    size);
  const int64_t batch = logits.size(0);
  Plan p{logits.size(1), logits.size(2), logits.size(3), size[0], size[1], nullptr};
  TORCH_CHECK_VALUE(p.classes > 0 && p.h > 0 && p.w > 0, op, ": logits must have a class and a pixel, got ",
                    logits.sizes());
  auto out = at::empty({batch, p.classes, p.out_h, p.out_w}, logits.options());
  if (batch == 0) return out;
  const SoftmaxArith* arith = nullptr;
  std::vector<uint8_t> scalar;
  if (softmax) {
    arith = &softmax_arith();
    TORCH_CHECK(arith->isa == SoftmaxIsa::kDefault || arith->sleef_exp != nullptr, op,
                ": libtorch_cpu exports no Sleef exp for this CPU capability");
    scalar = scalar_pixels(batch, p.out_h * p.out_w, arith->lanes);
  }
  const Axis<float> ay = axis_weights<float>(p.h, p.out_h, p.out_h, fma);
  const Axis<float> ax = axis_weights<float>(p.w, p.out_w, p.out_w, fma);
  const TapBlocks blocks = tap_blocks(ax, p.out_w, p.w);
  p.blocks = &blocks;
  auto rows = fma ? rows_portable<true> : rows_portable<false>;
#if RTP_HAVE_AVX2_PATH
  static const bool fma_cpu = __builtin_cpu_supports("fma");
  if (fma && simd::cpu_isa() == simd::Isa::kAvx2 && fma_cpu) rows = rows_avx2;
#endif
  const float* x = logits.data_ptr<float>();
  float* y = out.data_ptr<float>();
  const uint8_t* flags = scalar.empty() ? nullptr : scalar.data();
  // >= 4 output rows a chunk, so that each horizontal row serves the output rows that sample it.
  const int64_t grain = std::max<int64_t>(4, 16384 / std::max<int64_t>(p.out_w * p.classes, 1));
  at::parallel_for(0, batch * p.out_h, grain,
                   [&](int64_t begin, int64_t end) { rows(x, y, p, ay, ax, flags, arith, begin, end); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CPU, m) {
  m.impl("_bilinear_softmax", TORCH_FN(bilinear_softmax_cpu));
}

}  // namespace rtpanoptic
