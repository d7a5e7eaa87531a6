// Mask construction (eqs. 5, 7) fused with panoptic fusion, on the CPU.
//
// 1. One parallel pass over 64-pixel words computes, for every query j, the bit
//    M_j(p) = score(dense[:, p], query[j]) * sem_probs[c_j, p] > sigma  (in the input dtype),
//    stored bit-packed ([Q, ceil(HW/64)] uint64: Q*HW/8 bytes, no [Q, H, W] float tensor).
//    A word is evaluated in chunks of 8 pixels, 8 at a time on the AVX2 path (float32 on a
//    CPU that has it, see simd.h; bit-identical to the scalar box_score).  Chunks whose bits are
//    certainly 0 are skipped, with either score (chunks_to_evaluate; the bounds of "tri" and their
//    proofs: score_bounds.h).  RTPANOPTIC_PFD_NOCULL=1 in the environment evaluates every chunk.
// 2. Fusion, sequential over queries in decreasing score (stable; NaN first, as torch.sort):
//    skip score < score_threshold, empty masks, masks with (area - free)/area > overlap_threshold
//    or free == 0; paint the free bits (popcounts on words).
// 3. Stuff: argmax_c sem_probs (torch.argmax: first max, NaN wins) per pixel (computed in the
//    pass of 1., which reads the same probabilities); stuff classes in
//    increasing order take their still-free pixels when there are >= stuff_area_limit of them
//    (stuff regions are disjoint, so their areas are counted in one pass).
// NaN coordinates give NaN scores, which never pass "> sigma": such pixels join no mask.
// Output: the fixed-size form (Q + C segment slots, padded; the count as a 0-d tensor); queries at
// or beyond num_queries are left out before 1.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

#include "box_math.h"
#include "checks.h"
#include "op_checks.h"
#include "score_bounds.h"
#include "simd.h"

namespace rtpanoptic {
namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

constexpr int64_t kWordBits = 64;
constexpr int kChunk = 8;  // pixels per chunk (the AVX2 float width)
constexpr int kChunks = kWordBits / kChunk;
constexpr uint32_t kAllChunks = (1u << kChunks) - 1;

// One 64-pixel word of the grid, copied out: pixels past the end of the grid are NaN boxes,
// whose score is NaN, so their bits stay 0.
template <typename T>
struct Word {
  alignas(32) T d[4][kWordBits];
  alignas(32) T area[kWordBits];  // (d2 - d0) * (d3 - d1), as box_score computes it
  // chunk k's min d0, min d1, max d2, max d3 over its non-NaN values (+inf / -inf when none)
  alignas(32) T lo0[kChunks], lo1[kChunks], hi2[kChunks], hi3[kChunks];
  uint32_t bounded;  // bit k: each box of chunk k is bounded (score_bounds.h) or has a NaN area
  const T* prob;  // class c's 64 probabilities: prob + c * prob_stride
  int64_t prob_stride;
  const T* prob_max;  // [C, kChunks]: chunk_prob_max of the used classes (when some query tests chunks)
};

// What the kernel may skip: nothing (RTPANOPTIC_PFD_NOCULL=1), only queries with a NaN area
// (score "iou" with sigma < 0 or NaN), or chunks by the tests of score "iou" (sigma >= 0) or "tri".
enum class Cull { kOff, kNanQueries, kIoU, kTri };

// How the chunks of every word are chosen for one query.
enum class QueryPlan : uint8_t { kNoChunk, kEveryChunk, kTestChunks };

template <typename T>
struct Queries {
  std::vector<T> q0, q1, q2, q3, area;  // area = (q2 - q0) * (q3 - q1)
  std::vector<T> disjoint;              // disjoint_tri_bound(area) (score "tri")
  std::vector<QueryPlan> plan;
  const int64_t* cls;
};

bool nocull_requested() {
  const char* v = std::getenv("RTPANOPTIC_PFD_NOCULL");
  return v != nullptr && v[0] == '1' && v[1] == '\0';
}

template <typename T>
Cull cull_mode(Score score, T sig) {
  if (nocull_requested()) return Cull::kOff;
  if (score == Score::kTri) return Cull::kTri;
  return sig >= T(0) ? Cull::kIoU : Cull::kNanQueries;
}

// The plan of a query of area `area` ((q2 - q0) * (q3 - q1)).  A NaN area (a NaN coordinate, or
// inf * 0) makes the union with every dense box NaN, hence every score NaN (either score), which
// never passes "> sig": no chunk.  Score "tri" tests chunks only for a bounded query.
template <typename T>
QueryPlan query_plan(Cull cull, T q0, T q1, T q2, T q3, T area) {
  if (cull == Cull::kOff) return QueryPlan::kEveryChunk;
  if (area != area) return QueryPlan::kNoChunk;
  if (cull == Cull::kNanQueries || (cull == Cull::kTri && !bounded_box(q0, q1, q2, q3))) {
    return QueryPlan::kEveryChunk;
  }
  return QueryPlan::kTestChunks;
}

// Which chunks of the word may hold a bit of query j (plan kTestChunks); the others are certainly
// 0.  Per chunk k, with m = w.prob_max[c_j, k] (chunk_prob_max: >= every probability of the chunk
// whose product is not NaN, all >= 0; +inf if one is negative) and "miss" = the query misses the
// chunk's bounding box: min(hi2, q2) <= max(lo0, q0) or min(hi3, q3) <= max(lo1, q1) (no NaN here:
// the bounds ignore NaN, the query has none).  A box of the chunk without a NaN coordinate lies in
// the bounds, so on a miss min(d2, q2) <= min(hi2, q2) <= max(lo0, q0) <= max(d0, q0): its raw
// intersection width is <= 0 in floating point too (rounding keeps signs), iw = +-0, and
// inter = +-0 (or NaN, inf * 0); a box with a NaN coordinate has a NaN area, hence a NaN score.
//  * "iou" (sigma >= 0): the score lies in [0, 1] or is NaN (an inverted or empty box has
//    inter = +-0; otherwise inter <= each area and union >= inter, all in floating point: rounding
//    is monotone).  So fl(score * prob) <= prob <= m for prob >= 0, and <= 0 for prob < 0: the
//    chunk needs m > sigma.  On a miss every score is +-0 or NaN: products +-0 or NaN, never > sigma >= 0.
//  * "tri" (any sigma; bounded query): tri <= B on a chunk whose boxes are all bounded (or NaN-area),
//    with B = disjoint_tri_bound(area_q) on a miss (inter = +-0: score_bounds.h (c)) and
//    B = 1 + kSlack otherwise ((b)); the chunk is skipped when fl(B * m) <= sigma (the corollary
//    there).  Chunks with an unbounded box are evaluated.
template <typename T>
inline uint32_t chunks_to_evaluate(const Word<T>& w, const Queries<T>& q, int64_t j, Cull cull, T sig) {
  if (q.plan[j] != QueryPlan::kTestChunks) return q.plan[j] == QueryPlan::kNoChunk ? 0u : kAllChunks;
  const T* m = w.prob_max + q.cls[j] * kChunks;
  uint32_t chunks = 0;
  for (int k = 0; k < kChunks; ++k) {
    const bool miss = std::min(w.hi2[k], q.q2[j]) <= std::max(w.lo0[k], q.q0[j]) ||
                      std::min(w.hi3[k], q.q3[j]) <= std::max(w.lo1[k], q.q1[j]);
    const bool keep = cull == Cull::kIoU ? !miss && m[k] > sig
                                         : !((miss ? q.disjoint[j] : TriBounds<T>::kAny) * m[k] <= sig);
    chunks |= static_cast<uint32_t>(keep) << k;
  }
  return cull == Cull::kTri ? chunks | (~w.bounded & kAllChunks) : chunks;
}

// Bit counts of a mask (area) and of its part outside `taken` (free area), over `words` words.
// Plain code: the AVX2 table compiles it with the popcnt instruction.
RTP_ALWAYS_INLINE void count_free_bits(const uint64_t* mask, const uint64_t* taken, int64_t words, int64_t* area,
                                       int64_t* free_area) {
  int64_t a = 0, f = 0;
  for (int64_t wd = 0; wd < words; ++wd) {
    a += __builtin_popcountll(mask[wd]);
    f += __builtin_popcountll(mask[wd] & ~taken[wd]);
  }
  *area = a;
  *free_area = f;
}

// ------------------------------------------------------------------------ scalar path
// Copies grid pixels [p0, p0 + n) (n <= 64) of dense [4, n_p] into w, with areas, the chunks'
// bounds and, with `check_bounded` (score "tri"), which chunks are bounded.
template <typename T>
void load_word_scalar(Word<T>& w, const T* dense, int64_t n_p, int64_t p0, int64_t n, bool check_bounded) {
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  w.bounded = 0;
  for (int k = 0; k < kChunks; ++k) {
    T lo0 = inf, lo1 = inf, hi2 = -inf, hi3 = -inf;
    bool bounded = true;
    for (int64_t i = k * kChunk; i < (k + 1) * kChunk; ++i) {
      T c[4];
      for (int e = 0; e < 4; ++e) c[e] = i < n ? dense[e * n_p + p0 + i] : nan;
      for (int e = 0; e < 4; ++e) w.d[e][i] = c[e];
      const T area = (c[2] - c[0]) * (c[3] - c[1]);
      w.area[i] = area;
      bounded = bounded && check_bounded && (bounded_box(c[0], c[1], c[2], c[3]) || area != area);
      // NaN-ignoring: a comparison with NaN is false
      if (c[0] < lo0) lo0 = c[0];
      if (c[1] < lo1) lo1 = c[1];
      if (c[2] > hi2) hi2 = c[2];
      if (c[3] > hi3) hi3 = c[3];
    }
    w.lo0[k] = lo0;
    w.lo1[k] = lo1;
    w.hi2[k] = hi2;
    w.hi3[k] = hi3;
    w.bounded |= static_cast<uint32_t>(bounded) << k;
  }
}

// out[k]: the largest of prob[8k .. 8k + 8) ignoring NaN (-inf when all are NaN), or +inf when one
// of them is negative (-0 is not).
template <typename T>
void chunk_prob_max_scalar(const T* prob, T* out) {
  const T inf = std::numeric_limits<T>::infinity();
  for (int k = 0; k < kChunks; ++k) {
    T m = -inf;
    for (int i = k * kChunk; i < (k + 1) * kChunk; ++i) {
      if (prob[i] < T(0)) m = inf;
      if (prob[i] > m) m = prob[i];
    }
    out[k] = m;
  }
}

// Mask words of every query for one grid word: out[j * out_stride].
template <typename T, Score S>
void word_masks_scalar(const Word<T>& w, const Queries<T>& q, int64_t n_q, T sig, Cull cull, uint64_t* out,
                       int64_t out_stride) {
  for (int64_t j = 0; j < n_q; ++j) {
    const T* prob = w.prob + q.cls[j] * w.prob_stride;
    uint64_t bits = 0;
    for (uint32_t chunks = chunks_to_evaluate(w, q, j, cull, sig); chunks != 0; chunks &= chunks - 1) {
      const int p0 = __builtin_ctz(chunks) * kChunk;
      T v[kChunk];  // computed apart from the bit packing, so that the compiler can vectorise it
      for (int i = 0; i < kChunk; ++i) {
        const int p = p0 + i;
        v[i] = box_score<T>(w.d[0][p], w.d[1][p], w.d[2][p], w.d[3][p], q.q0[j], q.q1[j], q.q2[j], q.q3[j], S) *
               prob[p];
      }
      for (int i = 0; i < kChunk; ++i) bits |= static_cast<uint64_t>(v[i] > sig) << (p0 + i);
    }
    out[j * out_stride] = bits;
  }
}

// torch.argmax over the classes of sem [n_c, n_p], for pixels [begin, end).
template <typename T>
void semantic_argmax_scalar(const T* sem, int64_t n_c, int64_t n_p, int64_t begin, int64_t end, int32_t* out) {
  for (int64_t p = begin; p < end; ++p) out[p] = class_argmax<T>(sem, n_c, n_p, p);
}

void count_free_bits_scalar(const uint64_t* mask, const uint64_t* taken, int64_t words, int64_t* area,
                            int64_t* free_area) {
  count_free_bits(mask, taken, words, area, free_area);
}

// -------------------------------------------------------------- AVX2 path (float32)
// Each function computes what its scalar twin above computes, bit for bit (simd.h).
#if RTP_HAVE_AVX2_PATH
RTP_AVX2 void load_word_avx2(Word<float>& w, const float* dense, int64_t n_p, int64_t p0, int64_t n,
                             bool check_bounded) {
  using namespace simd::avx2;
  if (n < kWordBits) return load_word_scalar(w, dense, n_p, p0, n, check_bounded);
  const float inf = std::numeric_limits<float>::infinity();
  const __m256 pinf = _mm256_set1_ps(inf), minf = _mm256_set1_ps(-inf);
  const __m256 limit = _mm256_set1_ps(TriBounds<float>::kLimit);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 lo0[kChunks], lo1[kChunks], hi2[kChunks], hi3[kChunks];  // lane i of chunk k's pixels
  w.bounded = 0;
  for (int k = 0; k < kChunks; ++k) {
    const int i = k * kChunk;
    __m256 c[4];
    for (int e = 0; e < 4; ++e) {
      c[e] = _mm256_loadu_ps(dense + e * n_p + p0 + i);
      _mm256_store_ps(w.d[e] + i, c[e]);
    }
    const __m256 area = _mm256_mul_ps(_mm256_sub_ps(c[2], c[0]), _mm256_sub_ps(c[3], c[1]));
    _mm256_store_ps(w.area + i, area);
    if (check_bounded) {  // bounded_box (ordered comparisons: false on NaN) or a NaN area
      __m256 ok = _mm256_and_ps(_mm256_cmp_ps(c[2], c[0], _CMP_GE_OQ), _mm256_cmp_ps(c[3], c[1], _CMP_GE_OQ));
      for (int e = 0; e < 4; ++e) {
        ok = _mm256_and_ps(ok, _mm256_cmp_ps(_mm256_and_ps(c[e], abs_mask), limit, _CMP_LE_OQ));
      }
      ok = _mm256_or_ps(ok, _mm256_cmp_ps(area, area, _CMP_UNORD_Q));
      w.bounded |= static_cast<uint32_t>(_mm256_movemask_ps(ok) == 0xff) << k;
    }
    // NaN-ignoring: minps / maxps return their second operand on NaN
    lo0[k] = _mm256_min_ps(c[0], pinf);
    lo1[k] = _mm256_min_ps(c[1], pinf);
    hi2[k] = _mm256_max_ps(c[2], minf);
    hi3[k] = _mm256_max_ps(c[3], minf);
  }
  _mm256_store_ps(w.lo0, reduce_lanes8<false>(lo0));
  _mm256_store_ps(w.lo1, reduce_lanes8<false>(lo1));
  _mm256_store_ps(w.hi2, reduce_lanes8<true>(hi2));
  _mm256_store_ps(w.hi3, reduce_lanes8<true>(hi3));
}

RTP_AVX2 void chunk_prob_max_avx2(const float* prob, float* out) {
  using namespace simd::avx2;
  const float inf = std::numeric_limits<float>::infinity();
  const __m256 pinf = _mm256_set1_ps(inf), minf = _mm256_set1_ps(-inf), zero = _mm256_setzero_ps();
  __m256 v[kChunks];
  for (int k = 0; k < kChunks; ++k) {
    const __m256 p = _mm256_loadu_ps(prob + k * kChunk);
    // NaN -> -inf (maxps returns its second operand on NaN), negative -> +inf
    v[k] = _mm256_blendv_ps(_mm256_max_ps(p, minf), pinf, _mm256_cmp_ps(p, zero, _CMP_LT_OQ));
  }
  _mm256_storeu_ps(out, reduce_lanes8<true>(v));
}

// chunks_to_evaluate, the 8 chunks in the 8 lanes.  No NaN reaches minps / maxps (see there), so
// they agree with std::min / std::max; (B * m <= sig) is the ordered comparison, false on NaN.
RTP_AVX2 uint32_t chunks_to_evaluate_avx2(const Word<float>& w, const Queries<float>& q, int64_t j, Cull cull,
                                          __m256 vsig) {
  if (q.plan[j] != QueryPlan::kTestChunks) return q.plan[j] == QueryPlan::kNoChunk ? 0u : kAllChunks;
  // first the test without the bounding boxes, which settles most chunks of most queries
  const __m256 m = _mm256_loadu_ps(w.prob_max + q.cls[j] * kChunks);
  uint32_t by_prob;  // the chunks it leaves
  if (cull == Cull::kIoU) {
    by_prob = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(m, vsig, _CMP_GT_OQ)));
  } else {
    const __m256 any = _mm256_mul_ps(_mm256_set1_ps(TriBounds<float>::kAny), m);
    by_prob = (~static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(any, vsig, _CMP_LE_OQ))) | ~w.bounded) &
              kAllChunks;
  }
  if (by_prob == 0) return 0;
  const __m256 miss_x = _mm256_cmp_ps(_mm256_min_ps(_mm256_load_ps(w.hi2), _mm256_set1_ps(q.q2[j])),
                                      _mm256_max_ps(_mm256_load_ps(w.lo0), _mm256_set1_ps(q.q0[j])), _CMP_LE_OQ);
  const __m256 miss_y = _mm256_cmp_ps(_mm256_min_ps(_mm256_load_ps(w.hi3), _mm256_set1_ps(q.q3[j])),
                                      _mm256_max_ps(_mm256_load_ps(w.lo1), _mm256_set1_ps(q.q1[j])), _CMP_LE_OQ);
  const __m256 miss = _mm256_or_ps(miss_x, miss_y);
  if (cull == Cull::kIoU) return by_prob & ~static_cast<uint32_t>(_mm256_movemask_ps(miss));
  const __m256 bound =
      _mm256_blendv_ps(_mm256_set1_ps(TriBounds<float>::kAny), _mm256_set1_ps(q.disjoint[j]), miss);
  const auto culled =
      static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_mul_ps(bound, m), vsig, _CMP_LE_OQ)));
  return (~culled | ~w.bounded) & kAllChunks;
}

template <Score S>
RTP_AVX2 void word_masks_avx2(const Word<float>& w, const Queries<float>& q, int64_t n_q, float sig, Cull cull,
                              uint64_t* out, int64_t out_stride) {
  using namespace simd::avx2;
  const __m256 vsig = _mm256_set1_ps(sig);
  for (int64_t j = 0; j < n_q; ++j) {
    uint32_t chunks = chunks_to_evaluate_avx2(w, q, j, cull, vsig);
    if (chunks == 0) {
      out[j * out_stride] = 0;
      continue;
    }
    const float* prob = w.prob + q.cls[j] * w.prob_stride;
    const __m256 q0 = _mm256_set1_ps(q.q0[j]), q1 = _mm256_set1_ps(q.q1[j]), q2 = _mm256_set1_ps(q.q2[j]);
    const __m256 q3 = _mm256_set1_ps(q.q3[j]), area_q = _mm256_set1_ps(q.area[j]);
    uint64_t bits = 0;
    for (; chunks != 0; chunks &= chunks - 1) {
      const int p = __builtin_ctz(chunks) * kChunk;
      const __m256 score = box_score8<S>(_mm256_load_ps(w.d[0] + p), _mm256_load_ps(w.d[1] + p),
                                         _mm256_load_ps(w.d[2] + p), _mm256_load_ps(w.d[3] + p),
                                         _mm256_load_ps(w.area + p), q0, q1, q2, q3, area_q);
      bits |= static_cast<uint64_t>(gt_bits(_mm256_mul_ps(score, _mm256_loadu_ps(prob + p)), vsig)) << p;
    }
    out[j * out_stride] = bits;
  }
}

RTP_AVX2 void count_free_bits_avx2(const uint64_t* mask, const uint64_t* taken, int64_t words, int64_t* area,
                                   int64_t* free_area) {
  count_free_bits(mask, taken, words, area, free_area);
}
#endif

// ------------------------------------------------------------------- path selection
template <typename T>
struct Path {
  void (*load_word)(Word<T>& w, const T* dense, int64_t n_p, int64_t p0, int64_t n, bool check_bounded);
  void (*chunk_prob_max)(const T* prob, T* out);
  void (*word_masks)(const Word<T>& w, const Queries<T>& q, int64_t n_q, T sig, Cull cull, uint64_t* out,
                     int64_t out_stride);
  void (*semantic_argmax)(const T* sem, int64_t n_c, int64_t n_p, int64_t begin, int64_t end, int32_t* out);
  void (*count_free_bits)(const uint64_t* mask, const uint64_t* taken, int64_t words, int64_t* area,
                          int64_t* free_area);
};

template <typename T>
Path<T> select_path(Score score) {
#if RTP_HAVE_AVX2_PATH
  if constexpr (std::is_same_v<T, float>) {
    if (simd::cpu_isa() == simd::Isa::kAvx2) {
      return {load_word_avx2, chunk_prob_max_avx2,
              score == Score::kIoU ? word_masks_avx2<Score::kIoU> : word_masks_avx2<Score::kTri>,
              simd::avx2::class_argmax_range, count_free_bits_avx2};
    }
  }
#endif
  return {load_word_scalar<T>, chunk_prob_max_scalar<T>,
          score == Score::kIoU ? word_masks_scalar<T, Score::kIoU> : word_masks_scalar<T, Score::kTri>,
          semantic_argmax_scalar<T>, count_free_bits_scalar};
}

// Calls fn(state, begin, end) over [0, n) in blocks of `block` that the threads take in turn
// (state: made once per thread by make_state()).  The work per word varies a lot once chunks
// are skipped (objects vs background), and on a shared CPU one thread may be slowed down: a
// static split would wait for the slowest half.
template <typename MakeState, typename Fn>
void parallel_blocks(int64_t n, int64_t block, const MakeState& make_state, const Fn& fn) {
  std::atomic<int64_t> next{0};
  const int64_t n_threads = std::min<int64_t>(at::get_num_threads(), (n + block - 1) / block);
  at::parallel_for(0, n_threads, 1, [&](int64_t, int64_t) {
    auto state = make_state();
    for (int64_t begin = next.fetch_add(block); begin < n; begin = next.fetch_add(block)) {
      fn(state, begin, std::min(n, begin + block));
    }
  });
}

// The distinct classes of the queries whose plan satisfies keep, in increasing order.
template <typename T, typename Keep>
std::vector<int64_t> distinct_classes(const Queries<T>& q, int64_t n_q, const Keep& keep) {
  std::vector<int64_t> classes;
  for (int64_t j = 0; j < n_q; ++j) {
    if (keep(q.plan[j])) classes.push_back(q.cls[j]);
  }
  std::sort(classes.begin(), classes.end());
  classes.erase(std::unique(classes.begin(), classes.end()), classes.end());
  return classes;
}

// One parallel pass over the words: the bit-packed masks [n_q, words] of stage 1 (returned) and
// the per-pixel semantic argmax of stage 3 (into semantic[n_p]), which reads the same
// probabilities.
template <typename T>
std::unique_ptr<uint64_t[]> dense_pass(const Path<T>& path, const T* dense, const T* sem, int64_t n_p, int64_t n_c,
                                       const Queries<T>& q, int64_t n_q, T sig, Cull cull, int32_t* semantic) {
  const int64_t words = (n_p + kWordBits - 1) / kWordBits;
  std::unique_ptr<uint64_t[]> masks(new uint64_t[n_q * words]);  // every word is written below
  // the classes some query needs; those of the queries that test chunks (chunks_to_evaluate reads
  // their chunk maxima)
  const std::vector<int64_t> used = distinct_classes(q, n_q, [](QueryPlan) { return true; });
  const std::vector<int64_t> tested =
      distinct_classes(q, n_q, [](QueryPlan plan) { return plan == QueryPlan::kTestChunks; });
  struct Scratch {
    Word<T> w;
    std::vector<T> prob_max;   // [C, kChunks]
    std::vector<T> tail_prob;  // the last word's probabilities, zero-padded to 64
  };
  auto make_scratch = [&] {
    auto scratch = std::make_unique<Scratch>();
    scratch->prob_max.assign(n_c * kChunks, T(0));
    scratch->w.prob_max = scratch->prob_max.data();
    return scratch;
  };
  parallel_blocks(words, 8, make_scratch, [&](std::unique_ptr<Scratch>& scratch, int64_t begin, int64_t end) {
    Word<T>& w = scratch->w;
    for (int64_t wd = begin; wd < end; ++wd) {
      const int64_t p0 = wd * kWordBits, n = std::min(kWordBits, n_p - p0);
      path.semantic_argmax(sem, n_c, n_p, p0, p0 + n, semantic);
      if (n_q == 0) continue;
      path.load_word(w, dense, n_p, p0, n, cull == Cull::kTri);
      if (n == kWordBits) {
        w.prob = sem + p0;
        w.prob_stride = n_p;
      } else {
        std::vector<T>& tail = scratch->tail_prob;
        tail.assign(n_c * kWordBits, T(0));
        for (int64_t c : used) std::copy(sem + c * n_p + p0, sem + c * n_p + p0 + n, tail.data() + c * kWordBits);
        w.prob = tail.data();
        w.prob_stride = kWordBits;
      }
      for (int64_t c : tested) path.chunk_prob_max(w.prob + c * w.prob_stride, scratch->prob_max.data() + c * kChunks);
      path.word_masks(w, q, n_q, sig, cull, masks.get() + wd, words);
    }
  });
  return masks;
}

template <typename T>
Result panoptic_impl(const at::Tensor& dense, const at::Tensor& sem, const at::Tensor& query,
                     const std::vector<int64_t>& qcls, const at::Tensor& qscore, const std::vector<uint8_t>& thing,
                     double sigma, Score score, double score_threshold, double overlap_threshold,
                     int64_t stuff_area_limit, int64_t n_slots) {
  const int64_t h = dense.size(1), w = dense.size(2), n_p = h * w, n_q = query.size(0), n_c = sem.size(0);
  const int64_t words = (n_p + 63) / 64;
  const T* sp = sem.data_ptr<T>();
  const T* qb = query.data_ptr<T>();

  // 1. bit-packed masks, and the semantic argmax of 3.
  Queries<T> q;
  q.cls = qcls.data();
  const T sig = static_cast<T>(sigma);
  const Cull cull = cull_mode(score, sig);
  for (int64_t j = 0; j < n_q; ++j) {
    const T q0 = qb[4 * j], q1 = qb[4 * j + 1], q2 = qb[4 * j + 2], q3 = qb[4 * j + 3];
    const T area = (q2 - q0) * (q3 - q1);
    q.q0.push_back(q0);
    q.q1.push_back(q1);
    q.q2.push_back(q2);
    q.q3.push_back(q3);
    q.area.push_back(area);
    q.disjoint.push_back(disjoint_tri_bound(area));
    q.plan.push_back(query_plan(cull, q0, q1, q2, q3, area));
  }
  const Path<T> path = select_path<T>(score);
  std::vector<int32_t> semantic(n_p);  // argmax_c sem_probs, for stage 3
  const std::unique_ptr<uint64_t[]> masks =
      dense_pass<T>(path, dense.data_ptr<T>(), sp, n_p, n_c, q, n_q, sig, cull, semantic.data());

  // 2. thing fusion
  auto segment_map = at::zeros({h, w}, dense.options().dtype(at::kInt));
  int32_t* seg = segment_map.data_ptr<int32_t>();
  std::vector<uint64_t> taken(words, 0);
  std::vector<int64_t> classes, queries, areas;
  std::vector<float> scores;
  const T* qs = qscore.data_ptr<T>();
  std::vector<int64_t> order(n_q);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return argmax_better(qs[a], qs[b]); });
  for (int64_t j : order) {
    if (static_cast<double>(qs[j]) < score_threshold) continue;
    const uint64_t* mj = masks.get() + j * words;
    int64_t area, free_area;
    path.count_free_bits(mj, taken.data(), words, &area, &free_area);
    if (area == 0) continue;
    if (static_cast<double>(area - free_area) / static_cast<double>(area) > overlap_threshold || free_area == 0)
      continue;
    const int32_t id = static_cast<int32_t>(classes.size()) + 1;
    for (int64_t wd = 0; wd < words; ++wd) {
      uint64_t f = mj[wd] & ~taken[wd];
      taken[wd] |= f;
      while (f) {
        const int bit = __builtin_ctzll(f);
        seg[wd * 64 + bit] = id;
        f &= f - 1;
      }
    }
    classes.push_back(qcls[j]);
    queries.push_back(j);
    scores.push_back(static_cast<float>(static_cast<double>(qs[j])));
    areas.push_back(free_area);
  }

  // 3. stuff
  std::vector<int64_t> stuff_area(n_c, 0);
  for (int64_t p = 0; p < n_p; ++p) {
    if (seg[p] == 0 && !thing[semantic[p]]) ++stuff_area[semantic[p]];
  }
  std::vector<int32_t> stuff_id(n_c, 0);
  for (int64_t c = 0; c < n_c; ++c) {
    if (thing[c]) continue;
    const int64_t area = stuff_area[c];
    if (!keeps_stuff(area, stuff_area_limit)) continue;
    stuff_id[c] = static_cast<int32_t>(classes.size()) + 1;
    classes.push_back(c);
    queries.push_back(-1);
    scores.push_back(1.0f);
    areas.push_back(area);
  }
  for (int64_t p = 0; p < n_p; ++p) {
    if (seg[p] == 0) seg[p] = stuff_id[semantic[p]];
  }

  // n_slots segment slots (Q + C), the unused ones padded: class -1, query -1, score 0, area 0
  const int64_t n_s = static_cast<int64_t>(classes.size());
  auto opts = dense.options();
  auto to_tensor = [&](const std::vector<int64_t>& v, int64_t fill) {
    auto t = at::full({n_slots}, fill, opts.dtype(at::kLong));
    std::copy(v.begin(), v.end(), t.data_ptr<int64_t>());
    return t;
  };
  auto score_t = at::zeros({n_slots}, opts.dtype(at::kFloat));
  std::copy(scores.begin(), scores.end(), score_t.data_ptr<float>());
  return {segment_map, to_tensor(classes, -1), to_tensor(queries, -1), score_t, to_tensor(areas, 0),
          at::scalar_tensor(n_s, opts.dtype(at::kLong))};
}

Result panoptic_from_dense_cpu(const at::Tensor& dense_boxes, const at::Tensor& sem_probs,
                               const at::Tensor& query_boxes, const at::Tensor& query_classes,
                               const at::Tensor& query_scores, const at::Tensor& is_thing, double sigma,
                               c10::string_view score_sv, double score_threshold, double overlap_threshold,
                               int64_t stuff_area_limit, const c10::optional<at::Tensor>& num_queries) {
  const char* op = "panoptic_from_dense";
  const std::string score(score_sv);
  check_panoptic_from_dense_args(op, dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing, score,
                                 overlap_threshold, stuff_area_limit, num_queries, c10::kCPU);
  const int64_t n_c = sem_probs.size(0), n_slots = query_boxes.size(0) + n_c;

  // queries at or beyond num_queries are absent: the op on the first n_q queries alone
  const int64_t n_q = num_queries.has_value()
                          ? std::clamp<int64_t>(num_queries->item<int64_t>(), 0, query_boxes.size(0))
                          : query_boxes.size(0);
  const std::vector<int64_t> qcls = checked_indices(op, "query_classes", query_classes.narrow(0, 0, n_q), n_c);
  auto it = is_thing.contiguous();
  std::vector<uint8_t> thing(it.data_ptr<bool>(), it.data_ptr<bool>() + n_c);

  const auto acc = acc_type(dense_boxes);
  auto d = dense_boxes.to(acc).contiguous();
  auto s = sem_probs.to(acc).contiguous();
  auto q = query_boxes.narrow(0, 0, n_q).to(acc).contiguous();
  auto qs = query_scores.narrow(0, 0, n_q).to(acc).contiguous();
  Result out;
  AT_DISPATCH_FLOATING_TYPES(acc, "panoptic_from_dense_cpu", [&] {
    out = panoptic_impl<scalar_t>(d, s, q, qcls, qs, thing, sigma, score == "iou" ? Score::kIoU : Score::kTri,
                                  score_threshold, overlap_threshold, stuff_area_limit, n_slots);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CPU, m) {
  m.impl("panoptic_from_dense", TORCH_FN(panoptic_from_dense_cpu));
}

}  // namespace rtpanoptic
