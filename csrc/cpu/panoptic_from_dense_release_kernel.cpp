// Release-exact masks fused with panoptic fusion, on the CPU (panoptic_from_dense_release).
//
// Per query, in fusion order (decreasing score, stable, NaN first; skipped below score_threshold):
// 1. the soft mask S = score(B, B_j) * P_sem(c_j) on the [h, w] grid (one [h, w] buffer, reused),
//    and a label per cell (upsample_math.h: clearly above / below sigma, or undecided);
// 2. over the output pixels whose grid neighbours are not all below sigma (a rectangle), the mask
//    bit: 1 if the 4 neighbours are all above, 0 if all below, else the bilinear value >= sigma,
//    computed with the float operations of F.interpolate (same decision as the reference);
// 3. fusion as panoptic_from_dense on the [height, width] output.
// Stuff: argmax_c sem_probs on the grid (torch.argmax: first max, NaN wins), nearest-upsampled.
// Memory: O(h w + height width), independent of the number of queries.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "box_math.h"
#include "checks.h"
#include "op_checks.h"
#include "upsample_math.h"

namespace rtpanoptic {
namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

template <typename T>
std::vector<Tap<T>> taps(int64_t n_out, int64_t n_in, int64_t stride) {
  std::vector<Tap<T>> out(n_out);
  for (int64_t d = 0; d < n_out; ++d) out[d] = bilinear_tap<T>(d, n_in, stride);
  return out;
}

// [first, last) of the output indices whose taps touch a grid index in [lo, hi] (taps are sorted).
template <typename T>
std::pair<int64_t, int64_t> touching(const std::vector<Tap<T>>& t, int64_t lo, int64_t hi) {
  int64_t first = 0, last = static_cast<int64_t>(t.size());
  while (first < last && t[first].i1 < lo) ++first;
  while (last > first && t[last - 1].i0 > hi) --last;
  return {first, last};
}

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
  const std::vector<Tap<T>> ty = taps<T>(height, h, stride), tx = taps<T>(width, w, stride);

  auto segment_map = at::zeros({height, width}, dense.options().dtype(at::kInt));
  int32_t* seg = segment_map.data_ptr<int32_t>();
  std::vector<int64_t> classes, queries, areas;
  std::vector<float> scores;

  std::vector<int64_t> order(n_q);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return argmax_better(qs[a], qs[b]); });
  std::vector<T> soft(n_p);
  std::vector<uint8_t> label(n_p), bits;
  for (int64_t j : order) {
    if (static_cast<double>(qs[j]) < score_threshold) continue;
    // 1. soft mask and labels
    const T q0 = qb[4 * j], q1 = qb[4 * j + 1], q2 = qb[4 * j + 2], q3 = qb[4 * j + 3];
    const T* prob = sp + qcls[j] * n_p;
    at::parallel_for(0, n_p, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        soft[p] = box_score<T>(dp[p], dp[n_p + p], dp[2 * n_p + p], dp[3 * n_p + p], q0, q1, q2, q3, score) * prob[p];
      }
    });
    T max_abs = T(0);
    for (int64_t p = 0; p < n_p; ++p) {
      if (std::isfinite(soft[p])) max_abs = std::max(max_abs, std::abs(soft[p]));
    }
    const T margin = label_margin(max_abs);
    int64_t r0 = h, r1 = -1, c0 = w, c1 = -1;  // rows / columns holding a cell not below sigma
    for (int64_t y = 0; y < h; ++y) {
      for (int64_t x = 0; x < w; ++x) {
        const uint8_t l = cell_label(soft[y * w + x], sigma, margin);
        label[y * w + x] = l;
        if (l != kBelow) {
          r0 = std::min(r0, y), r1 = std::max(r1, y), c0 = std::min(c0, x), c1 = std::max(c1, x);
        }
      }
    }
    if (r1 < 0) continue;  // empty mask
    // 2. mask bits over the output rectangle that can hold any
    const auto [ya, yb] = touching(ty, r0, r1);
    const auto [xa, xb] = touching(tx, c0, c1);
    if (ya >= yb || xa >= xb) continue;
    const int64_t bw = xb - xa;
    bits.assign((yb - ya) * bw, 0);
    at::parallel_for(ya, yb, 16, [&](int64_t begin, int64_t end) {
      for (int64_t y = begin; y < end; ++y) {
        const Tap<T>& a = ty[y];
        const uint8_t* l0 = label.data() + a.i0 * w;
        const uint8_t* l1 = label.data() + a.i1 * w;
        const T* s0 = soft.data() + a.i0 * w;
        const T* s1 = soft.data() + a.i1 * w;
        uint8_t* out = bits.data() + (y - ya) * bw - xa;
        for (int64_t x = xa; x < xb; ++x) {
          const Tap<T>& b = tx[x];
          const int k = l0[b.i0] | l0[b.i1] | l1[b.i0] | l1[b.i1];  // 0: all below
          const int all = l0[b.i0] & l0[b.i1] & l1[b.i0] & l1[b.i1];  // 1: all above
          if (k == kBelow) continue;
          if (all == kAbove) {
            out[x] = 1;
            continue;
          }
          out[x] = bilinear_value(s0[b.i0], s0[b.i1], s1[b.i0], s1[b.i1], a, b, fma) >= sigma;
        }
      }
    });
    // 3. fusion
    int64_t area = 0, free_area = 0;
    for (int64_t y = ya; y < yb; ++y) {
      const uint8_t* m = bits.data() + (y - ya) * bw;
      const int32_t* row = seg + y * width + xa;
      for (int64_t x = 0; x < bw; ++x) {
        area += m[x];
        free_area += m[x] & (row[x] == 0);
      }
    }
    if (area == 0) continue;
    if (static_cast<double>(area - free_area) / static_cast<double>(area) > overlap_threshold || free_area == 0)
      continue;
    const int32_t id = static_cast<int32_t>(classes.size()) + 1;
    for (int64_t y = ya; y < yb; ++y) {
      const uint8_t* m = bits.data() + (y - ya) * bw;
      int32_t* row = seg + y * width + xa;
      for (int64_t x = 0; x < bw; ++x) {
        if (m[x] && row[x] == 0) row[x] = id;
      }
    }
    classes.push_back(qcls[j]);
    queries.push_back(j);
    scores.push_back(static_cast<float>(static_cast<double>(qs[j])));
    areas.push_back(free_area);
  }

  // stuff: the grid's argmax, nearest-upsampled; regions of distinct classes are disjoint
  std::vector<int32_t> semantic(n_p);
  for (int64_t p = 0; p < n_p; ++p) {
    T best = sp[p];
    int32_t bi = 0;
    for (int64_t c = 1; c < n_c; ++c) {
      if (argmax_better(sp[c * n_p + p], best)) best = sp[c * n_p + p], bi = static_cast<int32_t>(c);
    }
    semantic[p] = bi;
  }
  auto cell_class = [&](int64_t y, int64_t x) { return semantic[(y / stride) * w + x / stride]; };
  std::vector<int64_t> stuff_area(n_c, 0);
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) {
      const int32_t c = cell_class(y, x);
      if (seg[y * width + x] == 0 && !thing[c]) ++stuff_area[c];
    }
  }
  std::vector<int32_t> stuff_id(n_c, 0);
  for (int64_t c = 0; c < n_c; ++c) {
    if (thing[c] || stuff_area[c] == 0 || stuff_area[c] < stuff_area_limit) continue;
    stuff_id[c] = static_cast<int32_t>(classes.size()) + 1;
    classes.push_back(c);
    queries.push_back(-1);
    scores.push_back(1.0f);
    areas.push_back(stuff_area[c]);
  }
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) {
      int32_t& s = seg[y * width + x];
      if (s == 0) s = stuff_id[cell_class(y, x)];
    }
  }

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
