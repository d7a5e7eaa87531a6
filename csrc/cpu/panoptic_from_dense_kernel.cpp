// Mask construction (eqs. 5, 7) fused with panoptic fusion, on the CPU.
//
// 1. One parallel pass over 64-pixel words computes, for every query j, the bit
//    M_j(p) = score(dense[:, p], query[j]) * sem_probs[c_j, p] > sigma  (in the input dtype),
//    stored bit-packed ([Q, ceil(HW/64)] uint64: Q*HW/8 bytes, no [Q, H, W] float tensor).
//    A word is evaluated in chunks of 8 pixels, 8 at a time on the AVX2 path (float32 on a
//    CPU that has it, see simd.h; bit-identical to the scalar box_score).  With score "iou" and
//    sigma >= 0, chunks whose bits are certainly 0 are skipped (see chunks_to_evaluate).
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
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

#include "box_math.h"
#include "checks.h"
#include "op_checks.h"
#include "simd.h"

namespace rtpanoptic {
namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

constexpr int64_t kWordBits = 64;
constexpr int kChunk = 8;  // pixels per chunk (the AVX2 float width); 8 chunks per word

// One 64-pixel word of the grid, copied out: pixels past the end of the grid are NaN boxes,
// whose score is NaN, so their bits stay 0.
template <typename T>
struct Word {
  alignas(32) T d[4][kWordBits];
  alignas(32) T area[kWordBits];  // (d2 - d0) * (d3 - d1), as box_score computes it
  // min d0, min d1, max d2, max d3 over the word's non-NaN values (+inf / -inf when none)
  T lo0, lo1, hi2, hi3;
  const T* prob;  // class c's 64 probabilities: prob + c * prob_stride
  int64_t prob_stride;
  const uint8_t* class_chunks;  // [C]: bit k set when some pixel of chunk k has sem_probs[c] > sigma
};

template <typename T>
struct Queries {
  std::vector<T> q0, q1, q2, q3, area;  // area = (q2 - q0) * (q3 - q1)
  const int64_t* cls;
};

// Which chunks of the word may hold a bit of query j; the others are certainly 0.  Only
// with score "iou" and sigma >= 0 (`cull`), where two facts make the skips exact:
//  * the score lies in [0, 1] or is NaN: an inverted or empty box has inter = +-0; otherwise
//    inter <= each area and union >= inter, all in floating point (rounding is monotone).  So
//    score * prob > sigma >= 0 needs prob > sigma: chunks without such a pixel are skipped;
//  * a query that misses the word's bounding box (min(hi2, q2) <= max(lo0, q0), or the same in
//    y) gives every pixel inter = +-0 or NaN, hence score * prob = +-0 or NaN, never > sigma.
template <typename T>
inline uint32_t chunks_to_evaluate(const Word<T>& w, const Queries<T>& q, int64_t j, bool cull) {
  if (!cull) return 0xffu;
  if (nan_min(w.hi2, q.q2[j]) <= nan_max(w.lo0, q.q0[j]) || nan_min(w.hi3, q.q3[j]) <= nan_max(w.lo1, q.q1[j]))
    return 0;
  return w.class_chunks[q.cls[j]];
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
// Copies grid pixels [p0, p0 + n) (n <= 64) of dense [4, n_p] into w, with areas and bounds.
template <typename T>
void load_word_scalar(Word<T>& w, const T* dense, int64_t n_p, int64_t p0, int64_t n) {
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  T lo0 = inf, lo1 = inf, hi2 = -inf, hi3 = -inf;
  for (int64_t i = 0; i < kWordBits; ++i) {
    T c[4];
    for (int k = 0; k < 4; ++k) c[k] = i < n ? dense[k * n_p + p0 + i] : nan;
    for (int k = 0; k < 4; ++k) w.d[k][i] = c[k];
    w.area[i] = (c[2] - c[0]) * (c[3] - c[1]);
    // NaN-ignoring: a comparison with NaN is false
    if (c[0] < lo0) lo0 = c[0];
    if (c[1] < lo1) lo1 = c[1];
    if (c[2] > hi2) hi2 = c[2];
    if (c[3] > hi3) hi3 = c[3];
  }
  w.lo0 = lo0;
  w.lo1 = lo1;
  w.hi2 = hi2;
  w.hi3 = hi3;
}

// Bit k: some prob[8k .. 8k + 8) > sig.
template <typename T>
uint32_t class_chunks_scalar(const T* prob, T sig) {
  uint32_t chunks = 0;
  for (int p = 0; p < kWordBits; ++p) chunks |= static_cast<uint32_t>(prob[p] > sig) << (p / kChunk);
  return chunks;
}

// Mask words of every query for one grid word: out[j * out_stride].
template <typename T, Score S>
void word_masks_scalar(const Word<T>& w, const Queries<T>& q, int64_t n_q, T sig, bool cull, uint64_t* out,
                       int64_t out_stride) {
  for (int64_t j = 0; j < n_q; ++j) {
    const T* prob = w.prob + q.cls[j] * w.prob_stride;
    uint64_t bits = 0;
    for (uint32_t chunks = chunks_to_evaluate(w, q, j, cull); chunks != 0; chunks &= chunks - 1) {
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
RTP_AVX2 void load_word_avx2(Word<float>& w, const float* dense, int64_t n_p, int64_t p0, int64_t n) {
  using namespace simd::avx2;
  if (n < kWordBits) return load_word_scalar(w, dense, n_p, p0, n);
  const float inf = std::numeric_limits<float>::infinity();
  __m256 lo0 = _mm256_set1_ps(inf), lo1 = lo0, hi2 = _mm256_set1_ps(-inf), hi3 = hi2;
  for (int i = 0; i < kWordBits; i += kWidth) {
    __m256 c[4];
    for (int k = 0; k < 4; ++k) {
      c[k] = _mm256_loadu_ps(dense + k * n_p + p0 + i);
      _mm256_store_ps(w.d[k] + i, c[k]);
    }
    _mm256_store_ps(w.area + i, _mm256_mul_ps(_mm256_sub_ps(c[2], c[0]), _mm256_sub_ps(c[3], c[1])));
    // NaN-ignoring: minps / maxps return the accumulator (second operand) on NaN
    lo0 = _mm256_min_ps(c[0], lo0);
    lo1 = _mm256_min_ps(c[1], lo1);
    hi2 = _mm256_max_ps(c[2], hi2);
    hi3 = _mm256_max_ps(c[3], hi3);
  }
  alignas(32) float l0[kWidth], l1[kWidth], h2[kWidth], h3[kWidth];
  _mm256_store_ps(l0, lo0);
  _mm256_store_ps(l1, lo1);
  _mm256_store_ps(h2, hi2);
  _mm256_store_ps(h3, hi3);
  w.lo0 = *std::min_element(l0, l0 + kWidth);
  w.lo1 = *std::min_element(l1, l1 + kWidth);
  w.hi2 = *std::max_element(h2, h2 + kWidth);
  w.hi3 = *std::max_element(h3, h3 + kWidth);
}

RTP_AVX2 uint32_t class_chunks_avx2(const float* prob, float sig) {
  using namespace simd::avx2;
  const __m256 vsig = _mm256_set1_ps(sig);
  uint32_t chunks = 0;
  for (int k = 0; k < kWordBits / kWidth; ++k)
    chunks |= static_cast<uint32_t>(gt_bits(_mm256_loadu_ps(prob + k * kWidth), vsig) != 0) << k;
  return chunks;
}

template <Score S>
RTP_AVX2 void word_masks_avx2(const Word<float>& w, const Queries<float>& q, int64_t n_q, float sig, bool cull,
                              uint64_t* out, int64_t out_stride) {
  using namespace simd::avx2;
  const __m256 vsig = _mm256_set1_ps(sig);
  for (int64_t j = 0; j < n_q; ++j) {
    const float* prob = w.prob + q.cls[j] * w.prob_stride;
    const __m256 q0 = _mm256_set1_ps(q.q0[j]), q1 = _mm256_set1_ps(q.q1[j]), q2 = _mm256_set1_ps(q.q2[j]);
    const __m256 q3 = _mm256_set1_ps(q.q3[j]), area_q = _mm256_set1_ps(q.area[j]);
    uint64_t bits = 0;
    for (uint32_t chunks = chunks_to_evaluate(w, q, j, cull); chunks != 0; chunks &= chunks - 1) {
      const int p = __builtin_ctz(chunks) * kChunk;
      const __m256 score = box_score8<S>(_mm256_load_ps(w.d[0] + p), _mm256_load_ps(w.d[1] + p),
                                         _mm256_load_ps(w.d[2] + p), _mm256_load_ps(w.d[3] + p),
                                         _mm256_load_ps(w.area + p), q0, q1, q2, q3, area_q);
      bits |= static_cast<uint64_t>(gt_bits(_mm256_mul_ps(score, _mm256_loadu_ps(prob + p)), vsig)) << p;
    }
    out[j * out_stride] = bits;
  }
}

RTP_AVX2 void semantic_argmax_avx2(const float* sem, int64_t n_c, int64_t n_p, int64_t begin, int64_t end,
                                   int32_t* out) {
  using namespace simd::avx2;
  int64_t p = begin;
  for (; p + kWidth <= end; p += kWidth) {
    __m256 best = _mm256_loadu_ps(sem + p);
    __m256i index = _mm256_setzero_si256();
    for (int64_t c = 1; c < n_c; ++c) {
      argmax_step8(best, index, _mm256_loadu_ps(sem + c * n_p + p), static_cast<int32_t>(c));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + p), index);
  }
  semantic_argmax_scalar(sem, n_c, n_p, p, end, out);
}

RTP_AVX2 void count_free_bits_avx2(const uint64_t* mask, const uint64_t* taken, int64_t words, int64_t* area,
                                   int64_t* free_area) {
  count_free_bits(mask, taken, words, area, free_area);
}
#endif

// ------------------------------------------------------------------- path selection
template <typename T>
struct Path {
  void (*load_word)(Word<T>& w, const T* dense, int64_t n_p, int64_t p0, int64_t n);
  uint32_t (*class_chunks)(const T* prob, T sig);
  void (*word_masks)(const Word<T>& w, const Queries<T>& q, int64_t n_q, T sig, bool cull, uint64_t* out,
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
      return {load_word_avx2, class_chunks_avx2,
              score == Score::kIoU ? word_masks_avx2<Score::kIoU> : word_masks_avx2<Score::kTri>,
              semantic_argmax_avx2, count_free_bits_avx2};
    }
  }
#endif
  return {load_word_scalar<T>, class_chunks_scalar<T>,
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

// One parallel pass over the words: the bit-packed masks [n_q, words] of stage 1 (returned) and
// the per-pixel semantic argmax of stage 3 (into semantic[n_p]), which reads the same
// probabilities.
template <typename T>
std::unique_ptr<uint64_t[]> dense_pass(const Path<T>& path, const T* dense, const T* sem, int64_t n_p, int64_t n_c,
                                       const Queries<T>& q, int64_t n_q, T sig, Score score, int32_t* semantic) {
  const int64_t words = (n_p + kWordBits - 1) / kWordBits;
  std::unique_ptr<uint64_t[]> masks(new uint64_t[n_q * words]);  // every word is written below
  const bool cull = score == Score::kIoU && sig >= T(0);
  std::vector<int64_t> used(q.cls, q.cls + n_q);  // the classes some query needs
  std::sort(used.begin(), used.end());
  used.erase(std::unique(used.begin(), used.end()), used.end());
  struct Scratch {
    Word<T> w;
    std::vector<uint8_t> class_chunks;
    std::vector<T> tail_prob;  // the last word's probabilities, zero-padded to 64
  };
  auto make_scratch = [&] {
    auto scratch = std::make_unique<Scratch>();
    scratch->class_chunks.assign(n_c, 0);
    scratch->w.class_chunks = scratch->class_chunks.data();
    return scratch;
  };
  parallel_blocks(words, 8, make_scratch, [&](std::unique_ptr<Scratch>& scratch, int64_t begin, int64_t end) {
    Word<T>& w = scratch->w;
    for (int64_t wd = begin; wd < end; ++wd) {
      const int64_t p0 = wd * kWordBits, n = std::min(kWordBits, n_p - p0);
      path.semantic_argmax(sem, n_c, n_p, p0, p0 + n, semantic);
      if (n_q == 0) continue;
      path.load_word(w, dense, n_p, p0, n);
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
      if (cull) {
        for (int64_t c : used) {
          scratch->class_chunks[c] = static_cast<uint8_t>(path.class_chunks(w.prob + c * w.prob_stride, sig));
        }
      }
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
  for (int64_t j = 0; j < n_q; ++j) {
    const T q0 = qb[4 * j], q1 = qb[4 * j + 1], q2 = qb[4 * j + 2], q3 = qb[4 * j + 3];
    q.q0.push_back(q0);
    q.q1.push_back(q1);
    q.q2.push_back(q2);
    q.q3.push_back(q3);
    q.area.push_back((q2 - q0) * (q3 - q1));
  }
  const Path<T> path = select_path<T>(score);
  std::vector<int32_t> semantic(n_p);  // argmax_c sem_probs, for stage 3
  const std::unique_ptr<uint64_t[]> masks = dense_pass<T>(path, dense.data_ptr<T>(), sp, n_p, n_c, q, n_q,
                                                          static_cast<T>(sigma), score, semantic.data());

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
