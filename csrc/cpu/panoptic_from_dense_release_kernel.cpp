// Release-exact masks fused with panoptic fusion, on the CPU (panoptic_from_dense_release).
//
// Output rows are grouped by their pair of grid rows (r0, r1) (the bilinear taps, upsample_math.h):
// a group's rows share which grid cells they sample.  Per query, in fusion order (decreasing
// score, stable, NaN first; skipped below score_threshold), one parallel pass over the groups
// (each thread a contiguous run of them, carrying the soft rows it computed into the next group);
// a group whose two grid rows are quiet (provably below sigma from the row's largest probability
// of the query's class, see regular_box) is empty without computing anything.  Otherwise:
// 1. the soft mask S = score(B, B_j) * P_sem(c_j) of grid rows r0 and r1 (8 cells at a time on
//    the AVX2 path, simd.h: bit-identical to box_score), and per cell a label, bit-packed along
//    the row: clearly above / below sigma, or undecided (cell_label, upsample_math.h).  The margin
//    comes from the largest finite |S| of the two rows, which bounds the 4 values every output
//    pixel of the group interpolates: the proof of cell_label holds with it, so a decided pixel's
//    bit equals the interpolated value's decision whatever valid margin is used;
// 2. per pair of grid columns (k, k + 1) (one word operation for 64 pairs): all 4 cells above,
//    or not all below; expanded to the output columns that sample that pair (runs of set bits),
//    the mask words of the group's output rows: 1 where all 4 are above, and where some but not
//    all are, the bilinear value >= sigma, computed with the float operations of F.interpolate
//    (bilinear_value: same decision as the reference, fma or not as ATen rounds it);
// 3. the area and the free area (outside the pixels taken so far) of the mask, popcounts of its
//    words, summed over the groups.
// Then, sequentially, the fusion of panoptic_from_dense: skip an empty mask, one with
// (area - free) / area > overlap_threshold or free == 0; otherwise paint its free pixels (runs
// of set bits of mask & ~taken).
// Stuff: argmax_c sem_probs on the grid (torch.argmax: first max, NaN wins), nearest-upsampled;
// per output row the runs of free pixels, cell by cell (stuff regions of distinct classes are
// disjoint, so their areas come from one pass); a second pass writes their ids (or 0).
// Memory: O(h w + height width / 8), independent of the number of queries (the masks' words of
// one query, the taken bitmap, the grid's semantic argmax, per row and class the largest probability).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <mutex>
#include <numeric>
#include <type_traits>
#include <vector>

#include "box_math.h"
#include "checks.h"
#include "op_checks.h"
#include "simd.h"
#include "upsample_math.h"

#if RTP_HAVE_AVX2_PATH
#define RTP_AVX2_FMA __attribute__((target("avx2,fma"))) inline
#endif

namespace rtpanoptic {
namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

constexpr int64_t kWordBits = 64;

int64_t words_for(int64_t bits) { return (bits + kWordBits - 1) / kWordBits; }

// Sets bits [a, b) of words.
inline void set_bits(uint64_t* words, int64_t a, int64_t b) {
  if (a >= b) return;
  const int64_t wa = a / kWordBits, wb = (b - 1) / kWordBits;
  const uint64_t first = ~uint64_t(0) << (a % kWordBits);
  const uint64_t last = ~uint64_t(0) >> (kWordBits - 1 - (b - 1) % kWordBits);
  if (wa == wb) {
    words[wa] |= first & last;
    return;
  }
  words[wa] |= first;
  for (int64_t i = wa + 1; i < wb; ++i) words[i] = ~uint64_t(0);
  words[wb] |= last;
}

// Calls fn(begin, end) for every maximal run [begin, end) of set bits of word(0 .. n_words),
// in increasing order, clipped to [0, limit) (runs past limit are left out).
template <typename Word, typename Fn>
inline void for_each_run(int64_t n_words, int64_t limit, const Word& word, const Fn& fn) {
  auto emit = [&](int64_t begin, int64_t end) {
    end = std::min(end, limit);
    if (begin < end) fn(begin, end);
  };
  int64_t start = -1;  // >= 0: inside a run that began there
  for (int64_t wd = 0; wd < n_words; ++wd) {
    uint64_t v = word(wd);
    const int64_t base = wd * kWordBits;
    if (start >= 0) {
      if (v == ~uint64_t(0)) continue;
      const int e = __builtin_ctzll(~v);
      emit(start, base + e);
      start = -1;
      v &= ~uint64_t(0) << e;  // e < 64: the run's bits of this word are its lowest e
    }
    while (v != 0) {
      const int s = __builtin_ctzll(v);
      const uint64_t rest = ~v & (~uint64_t(0) << s);  // the zeros at or above s
      if (rest == 0) {
        start = base + s;
        break;
      }
      const int e = __builtin_ctzll(rest);
      emit(base + s, base + e);
      v &= ~uint64_t(0) << e;
    }
  }
  if (start >= 0) emit(start, n_words * kWordBits);
}

// Per query constants of the soft mask.
template <typename T>
struct Query {
  T q0, q1, q2, q3;
  const T* prob;  // [h, w] probabilities of the query's class
};

// ------------------------------------------------------------------------ scalar path
// soft[i] = box_score(dense[:, p0 + i], q) * prob[p0 + i] for i < n; returns max |soft| over the
// finite ones, and in *top max soft, +inf if some is not finite (*top + margin < sigma: all below).
template <typename T, Score S>
T soft_row_scalar(const T* dense, int64_t n_p, const Query<T>& q, int64_t p0, int64_t n, T* soft, T* top) {
  const T inf = std::numeric_limits<T>::infinity();
  T max_abs = T(0), hi = -inf;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = p0 + i;
    const T v = box_score<T>(dense[p], dense[n_p + p], dense[2 * n_p + p], dense[3 * n_p + p], q.q0, q.q1, q.q2,
                             q.q3, S) *
                q.prob[p];
    soft[i] = v;
    if (std::isfinite(v)) {
      max_abs = std::max(max_abs, std::abs(v));
      hi = std::max(hi, v);
    } else {
      hi = inf;
    }
  }
  *top = hi;
  return max_abs;
}

// Bits i < n of above / not_below (zeroed first, `words` words): cell_label(soft[i]) == kAbove / != kBelow.
template <typename T>
void label_row_scalar(const T* soft, int64_t n, T sigma, T margin, uint64_t* above, uint64_t* not_below,
                      int64_t words) {
  std::fill(above, above + words, uint64_t(0));
  std::fill(not_below, not_below + words, uint64_t(0));
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t l = cell_label(soft[i], sigma, margin);
    above[i / kWordBits] |= static_cast<uint64_t>(l == kAbove) << (i % kWordBits);
    not_below[i / kWordBits] |= static_cast<uint64_t>(l != kBelow) << (i % kWordBits);
  }
}

template <typename T>
void semantic_argmax_scalar(const T* sem, int64_t n_c, int64_t n_p, int64_t begin, int64_t end, int32_t* out) {
  for (int64_t p = begin; p < end; ++p) out[p] = class_argmax<T>(sem, n_c, n_p, p);
}

// The undecided pixels of one output row: bit x of out (x in the set bits of und, one word wd at
// a time) = bilinear value at (y, x) >= sigma, s0 / s1 the soft rows of the row's two taps.
template <typename T>
RTP_ALWAYS_INLINE void decide_word(uint64_t und, int64_t wd, const T* s0, const T* s1, const Tap<T>& ty,
                                   const Tap<T>* tx, T sigma, bool fma, uint64_t* out) {
  while (und != 0) {
    const int bit = __builtin_ctzll(und);
    und &= und - 1;
    const Tap<T>& b = tx[wd * kWordBits + bit];
    const T v = bilinear_value(s0[b.i0], s0[b.i1], s1[b.i0], s1[b.i1], ty, b, fma);
    *out |= static_cast<uint64_t>(v >= sigma) << bit;
  }
}

template <typename T>
void decide_row_scalar(const uint64_t* above, const uint64_t* not_below, int64_t wa, int64_t wb, const T* s0,
                       const T* s1, const Tap<T>& ty, const Tap<T>* tx, T sigma, bool fma, uint64_t* out) {
  for (int64_t wd = wa; wd < wb; ++wd) {
    out[wd] = above[wd];
    decide_word(not_below[wd] & ~above[wd], wd, s0, s1, ty, tx, sigma, fma, out + wd);
  }
}

// -------------------------------------------------------------- AVX2 path (float32)
// Each function computes what its scalar twin above computes, bit for bit (simd.h).
#if RTP_HAVE_AVX2_PATH
template <Score S>
RTP_AVX2 float soft_row_avx2(const float* dense, int64_t n_p, const Query<float>& q, int64_t p0, int64_t n,
                             float* soft, float* top) {
  using namespace simd::avx2;
  const __m256 q0 = _mm256_set1_ps(q.q0), q1 = _mm256_set1_ps(q.q1), q2 = _mm256_set1_ps(q.q2);
  const __m256 q3 = _mm256_set1_ps(q.q3);
  const __m256 area_q = _mm256_set1_ps((q.q2 - q.q0) * (q.q3 - q.q1));  // as box_score computes it
  const __m256 sign = _mm256_set1_ps(-0.0f), inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256 max_abs = _mm256_setzero_ps(), hi = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    const int64_t p = p0 + i;
    const __m256 d0 = _mm256_loadu_ps(dense + p), d1 = _mm256_loadu_ps(dense + n_p + p);
    const __m256 d2 = _mm256_loadu_ps(dense + 2 * n_p + p), d3 = _mm256_loadu_ps(dense + 3 * n_p + p);
    const __m256 area_d = _mm256_mul_ps(_mm256_sub_ps(d2, d0), _mm256_sub_ps(d3, d1));
    const __m256 v = _mm256_mul_ps(box_score8<S>(d0, d1, d2, d3, area_d, q0, q1, q2, q3, area_q),
                                   _mm256_loadu_ps(q.prob + p));
    _mm256_storeu_ps(soft + i, v);
    const __m256 a = _mm256_andnot_ps(sign, v);  // |v|; finite: |v| < inf (false on NaN)
    const __m256 finite = _mm256_cmp_ps(a, inf, _CMP_LT_OQ);
    max_abs = _mm256_max_ps(max_abs, _mm256_and_ps(finite, a));
    hi = _mm256_max_ps(hi, _mm256_blendv_ps(inf, v, finite));
  }
  alignas(32) float lanes[kWidth], his[kWidth];
  _mm256_store_ps(lanes, max_abs);
  _mm256_store_ps(his, hi);
  const float tail = soft_row_scalar<float, S>(dense, n_p, q, p0 + i, n - i, soft + i, top);
  *top = std::max(*top, *std::max_element(his, his + kWidth));
  return std::max(tail, *std::max_element(lanes, lanes + kWidth));
}

RTP_AVX2 void label_row_avx2(const float* soft, int64_t n, float sigma, float margin, uint64_t* above,
                             uint64_t* not_below, int64_t words) {
  using namespace simd::avx2;
  std::fill(above, above + words, uint64_t(0));
  std::fill(not_below, not_below + words, uint64_t(0));
  const __m256 vs = _mm256_set1_ps(sigma), vm = _mm256_set1_ps(margin), sign = _mm256_set1_ps(-0.0f);
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + kWordBits <= n; i += kWordBits) {  // whole words, built in registers
    uint64_t up_bits = 0, down_bits = 0;
    for (int k = 0; k < kWordBits; k += kWidth) {
      const __m256 v = _mm256_loadu_ps(soft + i + k);
      const __m256 finite = _mm256_cmp_ps(_mm256_andnot_ps(sign, v), inf, _CMP_LT_OQ);
      // cell_label: v - margin >= sigma: above; v + margin < sigma: below (finite v only)
      const __m256 up = _mm256_and_ps(finite, _mm256_cmp_ps(_mm256_sub_ps(v, vm), vs, _CMP_GE_OQ));
      const __m256 down = _mm256_and_ps(finite, _mm256_cmp_ps(_mm256_add_ps(v, vm), vs, _CMP_LT_OQ));
      up_bits |= static_cast<uint64_t>(_mm256_movemask_ps(up)) << k;
      down_bits |= static_cast<uint64_t>(_mm256_movemask_ps(down)) << k;
    }
    above[i / kWordBits] = up_bits;
    not_below[i / kWordBits] = ~down_bits;
  }
  for (; i < n; ++i) {
    const uint8_t l = cell_label(soft[i], sigma, margin);
    above[i / kWordBits] |= static_cast<uint64_t>(l == kAbove) << (i % kWordBits);
    not_below[i / kWordBits] |= static_cast<uint64_t>(l != kBelow) << (i % kWordBits);
  }
}

// decide_row_scalar with std::fma compiled to the instruction (the CPU has it).
template <typename T>
RTP_AVX2_FMA void decide_row_fma(const uint64_t* above, const uint64_t* not_below, int64_t wa, int64_t wb,
                                 const T* s0, const T* s1, const Tap<T>& ty, const Tap<T>* tx, T sigma, bool fma,
                                 uint64_t* out) {
  for (int64_t wd = wa; wd < wb; ++wd) {
    out[wd] = above[wd];
    decide_word(not_below[wd] & ~above[wd], wd, s0, s1, ty, tx, sigma, fma, out + wd);
  }
}
#endif

// ------------------------------------------------------------------- path selection
template <typename T>
struct Path {
  T (*soft_row)(const T* dense, int64_t n_p, const Query<T>& q, int64_t p0, int64_t n, T* soft, T* top);
  void (*label_row)(const T* soft, int64_t n, T sigma, T margin, uint64_t* above, uint64_t* not_below,
                    int64_t words);
  void (*semantic_argmax)(const T* sem, int64_t n_c, int64_t n_p, int64_t begin, int64_t end, int32_t* out);
  void (*decide_row)(const uint64_t* above, const uint64_t* not_below, int64_t wa, int64_t wb, const T* s0,
                     const T* s1, const Tap<T>& ty, const Tap<T>* tx, T sigma, bool fma, uint64_t* out);
};

template <typename T>
Path<T> select_path(Score score) {
  Path<T> path{score == Score::kIoU ? soft_row_scalar<T, Score::kIoU> : soft_row_scalar<T, Score::kTri>,
               label_row_scalar<T>, semantic_argmax_scalar<T>, decide_row_scalar<T>};
#if RTP_HAVE_AVX2_PATH
  if (simd::cpu_isa() == simd::Isa::kAvx2) {
    static const bool fma_cpu = __builtin_cpu_supports("fma");
    if (fma_cpu) path.decide_row = decide_row_fma<T>;
    if constexpr (std::is_same_v<T, float>) {
      path.soft_row = score == Score::kIoU ? soft_row_avx2<Score::kIoU> : soft_row_avx2<Score::kTri>;
      path.label_row = label_row_avx2;
      path.semantic_argmax = simd::avx2::class_argmax_range;
    }
  }
#endif
  return path;
}

// Quiet rows: a grid row whose soft mask is certainly below sigma for query j, found without
// computing it.  Where the dense boxes of the row and the query box are regular (every coordinate
// finite with |x| <= 2^40, x0 <= x2, y0 <= y2), the computed score lies in [-1, 1 + 18u] (u the
// unit roundoff): every rounding is monotone, so iw <= fl(d2 - d0) and the like give
// 0 <= inter <= min(area_d, area_q) <= union, hence (inter + 1) / (union + 1) in [0, 1]; the
// enclosing area is at least the union for exact widths, the computed ones are within 2u of
// them and the union's terms are at most 3 unions, so fl(enclosing) >= union (1 - 16u) and
// (enclosing - union) / enclosing lies in [-17u, 1]; IoU: inter / union in [0, 1].  No overflow
// (areas <= 2^84).  So |S| <= P (1 + 19u), P the row's largest |probability| of class c_j, and
// with cell_label's margin <= 2^-16 max|S| + the smallest normal, S + margin < sigma for every
// cell when P (1 + 2^-10) + 4 * the smallest normal < sigma (computed in double: P's rounding is
// covered by the slack between 2^-10 and 19u + 2^-16).  A group of two quiet rows is all below.
template <typename T>
bool regular_box(T x0, T y0, T x1, T y1) {
  const T lim = T(1099511627776.0);  // 2^40; NaN fails every comparison
  return x0 <= x1 && y0 <= y1 && std::abs(x0) <= lim && std::abs(y0) <= lim && std::abs(x1) <= lim &&
         std::abs(y1) <= lim;
}

// Output rows [y0, y1) that sample grid rows r0 and r1.
struct Group {
  int64_t y0, y1, r0, r1;
};

template <typename T>
Result release_impl(const at::Tensor& dense, const at::Tensor& sem, const at::Tensor& query,
                    const std::vector<int64_t>& qcls, const at::Tensor& qscore, const std::vector<uint8_t>& thing,
                    int64_t stride, int64_t height, int64_t width, double sigma_d, Score score,
                    double score_threshold, double overlap_threshold, int64_t stuff_area_limit, bool fma) {
  const int64_t h = dense.size(1), w = dense.size(2), n_p = h * w, n_q = query.size(0), n_c = sem.size(0);
  const T* dp = dense.data_ptr<T>();
  const T* sp = sem.data_ptr<T>();
  const T* qb = query.data_ptr<T>();
  const T* qs = qscore.data_ptr<T>();
  const T sigma = static_cast<T>(sigma_d);
  const Path<T> path = select_path<T>(score);

  std::vector<Tap<T>> ty(height), tx(words_for(width) * kWordBits);  // tx padded to whole words
  for (int64_t y = 0; y < height; ++y) ty[y] = bilinear_tap<T>(y, h, stride);
  for (int64_t x = 0; x < width; ++x) tx[x] = bilinear_tap<T>(x, w, stride);
  std::vector<Group> groups;
  for (int64_t y = 0; y < height; ++y) {
    if (groups.empty() || groups.back().r0 != ty[y].i0) {
      groups.push_back({y, y + 1, ty[y].i0, ty[y].i1});
    } else {
      groups.back().y1 = y + 1;
    }
  }
  // Grid column k is the first tap of output columns [x_start[k], x_start[k + 1]) (empty past
  // the output); the second tap is k + 1, or k at the last column and with stride 1.
  std::vector<int64_t> x_start(w + 1, width);
  for (int64_t x = width - 1; x >= 0; --x) x_start[tx[x].i0] = x;
  const bool pairs = stride > 1;  // second tap k + 1 (k < w - 1)

  const int64_t cw = words_for(w + 1);  // grid row bitmaps, with one spare bit (bit w)
  const int64_t ow = words_for(width);  // output row bitmaps
  std::vector<uint64_t> mask(height * ow), taken(height * ow, 0);
  std::vector<int64_t> word_lo(height, 0), word_hi(height, 0);  // the mask's nonzero words per row

  auto segment_map = at::empty({height, width}, dense.options().dtype(at::kInt));
  int32_t* seg = segment_map.data_ptr<int32_t>();
  std::vector<int64_t> classes, queries, areas;
  std::vector<float> scores;

  // quiet rows: regular dense boxes per row, and the largest |probability| per row of the classes
  // the queries have (+inf where one is NaN)
  std::vector<uint8_t> row_regular(h);
  std::vector<double> row_prob(n_c * h, std::numeric_limits<double>::infinity());
  std::vector<int64_t> used(qcls.begin(), qcls.end());
  std::sort(used.begin(), used.end());
  used.erase(std::unique(used.begin(), used.end()), used.end());
  at::parallel_for(0, h, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      bool regular = true;
      for (int64_t p = r * w; p < (r + 1) * w; ++p) {
        regular &= regular_box(dp[p], dp[n_p + p], dp[2 * n_p + p], dp[3 * n_p + p]);
      }
      row_regular[r] = regular;
      for (int64_t c : used) {
        const T* prob = sp + c * n_p + r * w;
        T m = T(0);
        bool nan = false;
        for (int64_t x = 0; x < w; ++x) {
          const T a = std::abs(prob[x]);
          m = a > m ? a : m;
          nan |= a != a;
        }
        row_prob[c * h + r] = nan ? std::numeric_limits<double>::infinity() : static_cast<double>(m);
      }
    }
  });
  const double quiet_below = static_cast<double>(sigma) - 4.0 * static_cast<double>(std::numeric_limits<T>::min());

  std::vector<int64_t> order(n_q);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return argmax_better(qs[a], qs[b]); });
  const int64_t n_groups = static_cast<int64_t>(groups.size());
  for (int64_t j : order) {
    if (static_cast<double>(qs[j]) < score_threshold) continue;
    const Query<T> q{qb[4 * j], qb[4 * j + 1], qb[4 * j + 2], qb[4 * j + 3], sp + qcls[j] * n_p};
    const bool q_regular = regular_box(q.q0, q.q1, q.q2, q.q3);
    const double* q_prob = row_prob.data() + qcls[j] * h;
    auto quiet = [&](int64_t r) { return q_regular && row_regular[r] && q_prob[r] * (1.0 + 0x1p-10) < quiet_below; };
    std::atomic<int64_t> area_sum{0}, free_sum{0};
    at::parallel_for(0, n_groups, 8, [&](int64_t g_begin, int64_t g_end) {
      // soft rows [2, w] with their row index and max |S|; label bitmaps; expanded output words
      std::vector<T> soft(2 * w);
      int64_t soft_row[2] = {-1, -1};
      T soft_max[2] = {T(0), T(0)}, soft_top[2];
      std::vector<uint64_t> bits(6 * cw + 2 * ow);
      uint64_t *above0 = bits.data(), *below0 = above0 + cw, *above1 = below0 + cw, *below1 = above1 + cw;
      uint64_t *all_above = below1 + cw, *some = all_above + cw;  // per column pair
      uint64_t *out_above = some + cw, *out_some = out_above + ow;
      int64_t area = 0, free_area = 0;
      auto soft_of = [&](int64_t r) -> int {  // slot of grid row r, computed if needed
        for (int s = 0; s < 2; ++s) {
          if (soft_row[s] == r) return s;
        }
        const int s = soft_row[0] == r - 1 ? 1 : 0;  // keep the row above (the next group's r0)
        soft_max[s] = path.soft_row(dp, n_p, q, r * w, w, soft.data() + s * w, &soft_top[s]);
        soft_row[s] = r;
        return s;
      };
      for (int64_t g = g_begin; g < g_end; ++g) {
        const Group& gr = groups[g];
        if (quiet(gr.r0) && quiet(gr.r1)) {
          for (int64_t y = gr.y0; y < gr.y1; ++y) word_lo[y] = word_hi[y] = 0;
          continue;
        }
        const int s0 = soft_of(gr.r0), s1 = soft_of(gr.r1);
        const T* row0 = soft.data() + s0 * w;
        const T* row1 = soft.data() + s1 * w;
        const T margin = label_margin(std::max(soft_max[s0], soft_max[s1]));
        bool any = !(std::max(soft_top[s0], soft_top[s1]) + margin < sigma);  // else every cell is below
        if (any) {
          path.label_row(row0, w, sigma, margin, above0, below0, cw);
          path.label_row(row1, w, sigma, margin, above1, below1, cw);
          any = false;
          for (int64_t i = 0; i < cw; ++i) {
            all_above[i] = above0[i] & above1[i];
            some[i] = below0[i] | below1[i];  // not all below
            any |= some[i] != 0;
          }
        }
        if (!any) {
          for (int64_t y = gr.y0; y < gr.y1; ++y) word_lo[y] = word_hi[y] = 0;
          continue;
        }
        if (pairs) {  // column pair (k, k + 1), and (w - 1, w - 1): bit w repeats bit w - 1
          const uint64_t last_above = (all_above[(w - 1) / kWordBits] >> ((w - 1) % kWordBits)) & 1;
          const uint64_t last_some = (some[(w - 1) / kWordBits] >> ((w - 1) % kWordBits)) & 1;
          all_above[w / kWordBits] |= last_above << (w % kWordBits);
          some[w / kWordBits] |= last_some << (w % kWordBits);
          for (int64_t i = 0; i < cw; ++i) {
            const uint64_t next_above = i + 1 < cw ? all_above[i + 1] << 63 : 0;
            const uint64_t next_some = i + 1 < cw ? some[i + 1] << 63 : 0;
            all_above[i] &= (all_above[i] >> 1) | next_above;
            some[i] |= (some[i] >> 1) | next_some;
          }
        }
        std::fill(out_above, out_above + ow, uint64_t(0));
        std::fill(out_some, out_some + ow, uint64_t(0));
        for_each_run(cw, w, [&](int64_t i) { return some[i]; },
                     [&](int64_t k0, int64_t k1) { set_bits(out_some, x_start[k0], x_start[k1]); });
        for_each_run(cw, w, [&](int64_t i) { return all_above[i]; },
                     [&](int64_t k0, int64_t k1) { set_bits(out_above, x_start[k0], x_start[k1]); });
        int64_t wa = 0, wb = ow;
        while (wa < wb && out_some[wa] == 0) ++wa;
        while (wb > wa && out_some[wb - 1] == 0) --wb;
        for (int64_t y = gr.y0; y < gr.y1; ++y) {
          uint64_t* out = mask.data() + y * ow;
          const uint64_t* tk = taken.data() + y * ow;
          path.decide_row(out_above, out_some, wa, wb, row0, row1, ty[y], tx.data(), sigma, fma, out);
          word_lo[y] = wa;
          word_hi[y] = wb;
          for (int64_t wd = wa; wd < wb; ++wd) {
            area += __builtin_popcountll(out[wd]);
            free_area += __builtin_popcountll(out[wd] & ~tk[wd]);
          }
        }
      }
      area_sum += area;
      free_sum += free_area;
    });
    const int64_t area = area_sum, free_area = free_sum;
    if (area == 0) continue;
    if (static_cast<double>(area - free_area) / static_cast<double>(area) > overlap_threshold || free_area == 0)
      continue;
    const int32_t id = static_cast<int32_t>(classes.size()) + 1;
    for (int64_t y = 0; y < height; ++y) {
      const uint64_t* m = mask.data() + y * ow;
      uint64_t* tk = taken.data() + y * ow;
      int32_t* row = seg + y * width;
      for (int64_t wd = word_lo[y]; wd < word_hi[y]; ++wd) {
        const uint64_t f = m[wd] & ~tk[wd];
        tk[wd] |= f;
        for_each_run(1, kWordBits, [&](int64_t) { return f; },
                     [&](int64_t a, int64_t b) { std::fill(row + wd * kWordBits + a, row + wd * kWordBits + b, id); });
      }
    }
    classes.push_back(qcls[j]);
    queries.push_back(j);
    scores.push_back(static_cast<float>(static_cast<double>(qs[j])));
    areas.push_back(free_area);
  }

  // stuff: the grid's argmax, nearest-upsampled, over the free pixels
  std::vector<int32_t> semantic(n_p);
  at::parallel_for(0, n_p, 4096, [&](int64_t begin, int64_t end) {
    path.semantic_argmax(sp, n_c, n_p, begin, end, semantic.data());
  });
  // fn(a, b, class) for the free pixels [a, b) of output row y, cell by cell.
  auto free_cells = [&](int64_t y, const auto& fn) {
    const int32_t* cls = semantic.data() + (y / stride) * w;
    const uint64_t* tk = taken.data() + y * ow;
    for_each_run(ow, width, [&](int64_t i) { return ~tk[i]; }, [&](int64_t a, int64_t b) {
      for (int64_t k = a / stride; a < b; ++k) {
        const int64_t e = std::min(b, (k + 1) * stride);
        fn(a, e, cls[k]);
        a = e;
      }
    });
  };
  std::vector<int64_t> stuff_area(n_c, 0);
  std::mutex merge;
  at::parallel_for(0, height, 64, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> local(n_c, 0);
    for (int64_t y = begin; y < end; ++y) {
      free_cells(y, [&](int64_t a, int64_t b, int32_t c) { local[c] += b - a; });
    }
    std::lock_guard<std::mutex> lock(merge);
    for (int64_t c = 0; c < n_c; ++c) stuff_area[c] += local[c];
  });
  std::vector<int32_t> stuff_id(n_c, 0);
  for (int64_t c = 0; c < n_c; ++c) {
    if (thing[c] || !keeps_stuff(stuff_area[c], stuff_area_limit)) continue;
    stuff_id[c] = static_cast<int32_t>(classes.size()) + 1;
    classes.push_back(c);
    queries.push_back(-1);
    scores.push_back(1.0f);
    areas.push_back(stuff_area[c]);
  }
  at::parallel_for(0, height, 64, [&](int64_t begin, int64_t end) {
    for (int64_t y = begin; y < end; ++y) {
      int32_t* row = seg + y * width;
      free_cells(y, [&](int64_t a, int64_t b, int32_t c) { std::fill(row + a, row + b, stuff_id[c]); });
    }
  });

  const int64_t n_s = static_cast<int64_t>(classes.size());
  auto opts = dense.options();
  auto to_tensor = [&](const std::vector<int64_t>& v) {
    auto t = at::empty({n_s}, opts.dtype(at::kLong));
    std::copy(v.begin(), v.end(), t.data_ptr<int64_t>());
    return t;
  };
  auto score_t = at::empty({n_s}, opts.dtype(at::kFloat));
  std::copy(scores.begin(), scores.end(), score_t.data_ptr<float>());
  return {segment_map, to_tensor(classes), to_tensor(queries), score_t, to_tensor(areas)};
}

Result panoptic_from_dense_release_cpu(const at::Tensor& dense_boxes, const at::Tensor& sem_probs,
                                       const at::Tensor& query_boxes, const at::Tensor& query_classes,
                                       const at::Tensor& query_scores, const at::Tensor& is_thing, int64_t stride,
                                       int64_t height, int64_t width, double sigma, c10::string_view score_sv,
                                       double score_threshold, double overlap_threshold, int64_t stuff_area_limit,
                                       bool fma) {
  const char* op = "panoptic_from_dense_release";
  const std::string score(score_sv);
  check_panoptic_from_dense_release_args(op, dense_boxes, sem_probs, query_boxes, query_classes, query_scores,
                                         is_thing, stride, height, width, score, overlap_threshold, stuff_area_limit,
                                         c10::kCPU);
  const int64_t n_c = sem_probs.size(0);
  const std::vector<int64_t> qcls = checked_indices(op, "query_classes", query_classes, n_c);
  auto it = is_thing.contiguous();
  std::vector<uint8_t> thing(it.data_ptr<bool>(), it.data_ptr<bool>() + n_c);

  const auto acc = dense_boxes.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto d = dense_boxes.to(acc).contiguous();
  auto s = sem_probs.to(acc).contiguous();
  auto q = query_boxes.to(acc).contiguous();
  auto qs = query_scores.to(acc).contiguous();
  Result out;
  AT_DISPATCH_FLOATING_TYPES(acc, "panoptic_from_dense_release_cpu", [&] {
    out = release_impl<scalar_t>(d, s, q, qcls, qs, thing, stride, height, width, sigma,
                                 score == "iou" ? Score::kIoU : Score::kTri, score_threshold, overlap_threshold,
                                 stuff_area_limit, fma);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CPU, m) {
  m.impl("panoptic_from_dense_release", TORCH_FN(panoptic_from_dense_release_cpu));
}

}  // namespace rtpanoptic
