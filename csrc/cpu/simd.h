// SIMD building blocks of the CPU kernels, with the ISA chosen at run time.
//
// A kernel keeps a portable scalar path and, on x86-64 built with GCC or Clang, adds an AVX2
// path: functions marked RTP_AVX2 are compiled for AVX2 by a function attribute (the build
// never uses -march=native), and simd::cpu_isa() says at run time whether they may be called.
//
// Exactness: every helper below performs the same IEEE-754 operations, in the same order, as
// the scalar formula it mirrors (named in its comment), so the two paths agree bit for bit.
// FMA cannot creep in: the AVX2 target does not enable it, and setup.py builds with
// -ffp-contract=off (which also keeps the scalar paths un-contracted on other targets).
// Where a mirror departs from its scalar twin, the comment says where and why it cannot
// change a result.
#pragma once

#include <ATen/Version.h>  // at::get_cpu_capability

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "box_math.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define RTP_HAVE_AVX2_PATH 1
#include <immintrin.h>
// popcnt comes with every AVX2 CPU; fma is deliberately absent (see above).
#define RTP_AVX2 __attribute__((target("avx2,popcnt"))) inline
#else
#define RTP_HAVE_AVX2_PATH 0
#endif

// Plain code marked RTP_ALWAYS_INLINE and called from an RTP_AVX2 function is compiled for AVX2
// there (e.g. __builtin_popcountll becomes popcnt).
#if defined(__GNUC__) || defined(__clang__)
#define RTP_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define RTP_ALWAYS_INLINE inline
#endif

namespace rtpanoptic {
namespace simd {

enum class Isa : int { kScalar = 0, kAvx2 = 1 };

// The widest path this process may take: AVX2 when the build has it, the CPU supports it and
// ATen's CPU capability allows it (ATEN_CPU_CAPABILITY=default selects the scalar path, as it
// does for ATen's own kernels).  Decided once per process.
inline Isa cpu_isa() {
  static const Isa isa = [] {
#if RTP_HAVE_AVX2_PATH
    const std::string cap = at::get_cpu_capability();
    if ((cap == "AVX2" || cap == "AVX512") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) {
      return Isa::kAvx2;
    }
#endif
    return Isa::kScalar;
  }();
  return isa;
}

// The float threshold t such that, for every float x (NaN included),
//   x > t   <=>   float(Low(x)) > float(Low(threshold)),
// i.e. comparing a float32 value with t is comparing it, rounded to the narrow type Low
// (c10::Half, c10::BFloat16), with the threshold rounded to Low, as a float16 tensor compared
// with a Python float does.  Rounding to nearest is monotone, so {x : Low(x) > Low(thr)} is an
// up-set of the floats; t is the float just below its least element, found by bisection over
// the floats in order (so ties-to-even, subnormals and overflow to inf need no case analysis).
template <typename Low>
float threshold_after_rounding(double threshold) {
  const float t_low = static_cast<float>(static_cast<Low>(static_cast<float>(threshold)));
  if (std::isnan(t_low)) return t_low;  // nothing is > NaN
  auto passes = [&](float x) { return static_cast<float>(static_cast<Low>(x)) > t_low; };
  // Floats in increasing order <-> int64 keys (-inf .. +inf; -0 sits just below +0).
  auto key = [](float x) -> int64_t {
    int32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    return bits >= 0 ? int64_t(bits) : -int64_t(bits & 0x7fffffff) - 1;
  };
  auto from_key = [](int64_t k) -> float {
    const int32_t bits = k >= 0 ? static_cast<int32_t>(k) : static_cast<int32_t>((-(k + 1)) | 0x80000000LL);
    float x;
    std::memcpy(&x, &bits, sizeof x);
    return x;
  };
  const float inf = std::numeric_limits<float>::infinity();
  if (!passes(inf)) return inf;  // t_low == +inf: nothing passes
  int64_t lo = key(-inf), hi = key(inf);  // passes(lo) is false (nothing rounds below -inf), passes(hi) true
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (passes(from_key(mid)) ? hi : lo) = mid;
  }
  return from_key(lo);
}

#if RTP_HAVE_AVX2_PATH
namespace avx2 {

constexpr int kWidth = 8;  // float lanes

// std::min(a, b) / std::max(a, b) (b < a ? b : a; rtp_max of box_math.h), lane by lane, NaN
// included: when a comparison is unordered both return a, as minps/maxps return their second
// operand.
RTP_AVX2 __m256 rtp_min8(__m256 a, __m256 b) { return _mm256_min_ps(b, a); }
RTP_AVX2 __m256 rtp_max8(__m256 a, __m256 b) { return _mm256_max_ps(b, a); }

// Bit k = (a[k] > b[k]) (false on NaN).
RTP_AVX2 uint32_t gt_bits(__m256 a, __m256 b) {
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)));
}

// pair_iou of box_math.h for box i (broadcast) and 8 boxes: w = min(x2_i, x2) - max(x1_i, x1)
// clamped below at 0 (a NaN or -0 w kept, as pair_iou's w < 0 ? 0 : w), likewise h,
// inter / ((area_i + area) - inter).  No zero-union guard: 0 / 0 is NaN, which never exceeds
// a threshold.  As in box_score8, rtp_min8 / rtp_max8 may return the non-NaN operand where
// nan_min / nan_max return the NaN one; the IoU is NaN either way (that box's area is NaN).
RTP_AVX2 __m256 nms_iou8(__m256 ix1, __m256 iy1, __m256 ix2, __m256 iy2, __m256 iarea, __m256 x1, __m256 y1,
                         __m256 x2, __m256 y2, __m256 area) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 w = rtp_max8(_mm256_sub_ps(rtp_min8(ix2, x2), rtp_max8(ix1, x1)), zero);
  const __m256 h = rtp_max8(_mm256_sub_ps(rtp_min8(iy2, y2), rtp_max8(iy1, y1)), zero);
  const __m256 inter = _mm256_mul_ps(w, h);
  return _mm256_div_ps(inter, _mm256_sub_ps(_mm256_add_ps(iarea, area), inter));
}

// box_score(d, q, S) of box_math.h for 8 dense boxes d against one query q (broadcast), given
// area_d = (d2 - d0) * (d3 - d1) and area_q = (q2 - q0) * (q3 - q1).  The one departure: where
// box_score's nan_min / nan_max return a NaN operand, rtp_min8 / rtp_max8 may return the other
// one.  It cannot change a score: a NaN coordinate makes that box's area NaN, hence the union
// NaN, hence the score NaN (iou: NaN != 0, so inter / union; tri: (inter + 1) / (union + 1)).
template <Score S>
RTP_AVX2 __m256 box_score8(__m256 d0, __m256 d1, __m256 d2, __m256 d3, __m256 area_d, __m256 q0, __m256 q1,
                           __m256 q2, __m256 q3, __m256 area_q) {
  const __m256 zero = _mm256_setzero_ps();
  // iw = rtp_max(iw_raw, 0): maxps(0, iw_raw) keeps a NaN iw_raw, as box_score does
  const __m256 iw = rtp_max8(_mm256_sub_ps(rtp_min8(d2, q2), rtp_max8(d0, q0)), zero);
  const __m256 ih = rtp_max8(_mm256_sub_ps(rtp_min8(d3, q3), rtp_max8(d1, q1)), zero);
  const __m256 inter = _mm256_mul_ps(iw, ih);
  const __m256 uni = _mm256_sub_ps(_mm256_add_ps(area_d, area_q), inter);
  if constexpr (S == Score::kIoU) {
    // union != 0 ? inter / union : +0
    return _mm256_and_ps(_mm256_cmp_ps(uni, zero, _CMP_NEQ_UQ), _mm256_div_ps(inter, uni));
  } else {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 cw = _mm256_sub_ps(rtp_max8(d2, q2), rtp_min8(d0, q0));
    const __m256 ch = _mm256_sub_ps(rtp_max8(d3, q3), rtp_min8(d1, q1));
    const __m256 enclosing = _mm256_add_ps(_mm256_mul_ps(cw, ch), _mm256_set1_ps(static_cast<float>(kTriEps)));
    return _mm256_sub_ps(_mm256_div_ps(_mm256_add_ps(inter, one), _mm256_add_ps(uni, one)),
                         _mm256_div_ps(_mm256_sub_ps(enclosing, uni), enclosing));
  }
}

// Lane k of the result: the min (Max = false) or max of the 8 lanes of v[k] (v without NaN, so
// that the order of the comparisons cannot matter but for the sign of a zero).  A transposing
// reduction: 21 instructions for 8 vectors.
template <bool Max>
RTP_AVX2 __m256 min_or_max8(__m256 a, __m256 b) {
  return Max ? _mm256_max_ps(a, b) : _mm256_min_ps(a, b);
}
template <bool Max>
RTP_AVX2 __m256 reduce_lanes8(const __m256 v[kWidth]) {
  __m256 pairs[4];  // per 128-bit half: [v_2i[0] o v_2i[2], v_2i+1[0] o v_2i+1[2], v_2i[1] o v_2i[3], v_2i+1[1] o ..]
  for (int i = 0; i < 4; ++i) {
    pairs[i] = min_or_max8<Max>(_mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  __m256 quads[2];  // per 128-bit half h: lane i = v_4q+i reduced over its half h
  for (int i = 0; i < 2; ++i) {
    quads[i] = min_or_max8<Max>(_mm256_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                _mm256_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  return min_or_max8<Max>(_mm256_permute2f128_ps(quads[0], quads[1], 0x20),
                          _mm256_permute2f128_ps(quads[0], quads[1], 0x31));
}

// One step of a lane-wise torch.argmax over classes (box_math.h argmax_better: first maximum,
// the first NaN wins): where v beats best, best = v and index = c.
RTP_AVX2 void argmax_step8(__m256& best, __m256i& index, __m256 v, int32_t c) {
  const __m256 v_nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  const __m256 best_nan = _mm256_cmp_ps(best, best, _CMP_UNORD_Q);
  const __m256 better = _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_andnot_ps(best_nan, v_nan));
  best = _mm256_blendv_ps(best, v, better);
  index = _mm256_castps_si256(
      _mm256_blendv_ps(_mm256_castsi256_ps(index), _mm256_castsi256_ps(_mm256_set1_epi32(c)), better));
}

// torch.argmax over the n_c classes of sem [n_c, n_p] for pixels [begin, end) into out[p]
// (class_argmax of box_math.h: first maximum, the first NaN wins), 8 pixels at a time.
RTP_AVX2 void class_argmax_range(const float* sem, int64_t n_c, int64_t n_p, int64_t begin, int64_t end,
                                 int32_t* out) {
  int64_t p = begin;
  for (; p + kWidth <= end; p += kWidth) {
    __m256 best = _mm256_loadu_ps(sem + p);
    __m256i index = _mm256_setzero_si256();
    for (int64_t c = 1; c < n_c; ++c) {
      argmax_step8(best, index, _mm256_loadu_ps(sem + c * n_p + p), static_cast<int32_t>(c));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + p), index);
  }
  for (; p < end; ++p) out[p] = class_argmax<float>(sem, n_c, n_p, p);
}

// Lane permutation that moves the lanes selected by the 8-bit `keep` to the front, in order;
// table entry `keep` holds the source lanes as 4-bit fields (field 0 = lowest).
struct CompressTable {
  uint32_t fields[256];
  constexpr CompressTable() : fields() {
    for (int keep = 0; keep < 256; ++keep) {
      uint32_t packed = 0;
      int out = 0;
      for (int lane = 0; lane < kWidth; ++lane) {
        if (keep & (1 << lane)) packed |= static_cast<uint32_t>(lane) << (4 * out++);
      }
      fields[keep] = packed;
    }
  }
};
inline constexpr CompressTable kCompress{};

RTP_AVX2 __m256i compress_permutation(uint32_t keep) {
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int32_t>(kCompress.fields[keep])), shifts),
                          _mm256_set1_epi32(0xf));
}

// Writes the kept lanes of v, in order, to dst[0 .. popcount(keep)); the store is 8 lanes wide,
// so dst[0 .. 8) must be writable (callers compact in place, never ahead of what they read).
RTP_AVX2 void compress_store(float* dst, __m256 v, __m256i permutation) {
  _mm256_storeu_ps(dst, _mm256_permutevar8x32_ps(v, permutation));
}
RTP_AVX2 void compress_store(int32_t* dst, __m256i v, __m256i permutation) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permutevar8x32_epi32(v, permutation));
}

}  // namespace avx2
#endif  // RTP_HAVE_AVX2_PATH

}  // namespace simd
}  // namespace rtpanoptic
