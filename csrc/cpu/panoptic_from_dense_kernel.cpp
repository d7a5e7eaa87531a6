// Mask construction (eqs. 5, 7) fused with panoptic fusion, on the CPU.
//
// 1. One parallel pass over 64-pixel words computes, for every query j, the bit
//    M_j(p) = score(dense[:, p], query[j]) * sem_probs[c_j, p] > sigma  (in the input dtype),
//    stored bit-packed ([Q, ceil(HW/64)] uint64: Q*HW/8 bytes, no [Q, H, W] float tensor).
// 2. Fusion, sequential over queries in decreasing score (stable; NaN first, as torch.sort):
//    skip score < score_threshold, empty masks, masks with (area - free)/area > overlap_threshold
//    or free == 0; paint the free bits (popcounts on words).
// 3. Stuff: argmax_c sem_probs (torch.argmax: first max, NaN wins) per pixel; stuff classes in
//    increasing order take their still-free pixels when there are >= stuff_area_limit of them
//    (stuff regions are disjoint, so their areas are counted in one pass).
// NaN coordinates give NaN scores, which never pass "> sigma": such pixels join no mask.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bitset>
#include <numeric>
#include <vector>

#include "box_math.h"
#include "checks.h"
#include "op_checks.h"

namespace rtpanoptic {
namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline int popcount64(uint64_t v) { return __builtin_popcountll(v); }

template <typename T>
Result panoptic_impl(const at::Tensor& dense, const at::Tensor& sem, const at::Tensor& query,
                     const std::vector<int64_t>& qcls, const at::Tensor& qscore, const std::vector<uint8_t>& thing,
                     double sigma, Score score, double score_threshold, double overlap_threshold,
                     int64_t stuff_area_limit) {
  const int64_t h = dense.size(1), w = dense.size(2), n_p = h * w, n_q = query.size(0), n_c = sem.size(0);
  const int64_t words = (n_p + 63) / 64;
  const T* d = dense.data_ptr<T>();
  const T* sp = sem.data_ptr<T>();
  const T* qb = query.data_ptr<T>();
  const T sig = static_cast<T>(sigma);

  // 1. bit-packed masks
  std::vector<uint64_t> masks(n_q * words, 0);
  if (n_q > 0) {
    at::parallel_for(0, words, 16, [&](int64_t begin, int64_t end) {
      for (int64_t wd = begin; wd < end; ++wd) {
        const int64_t p0 = wd * 64, p1 = std::min(n_p, p0 + 64);
        for (int64_t j = 0; j < n_q; ++j) {
          const T q0 = qb[4 * j], q1 = qb[4 * j + 1], q2 = qb[4 * j + 2], q3 = qb[4 * j + 3];
          const T* prob = sp + qcls[j] * n_p;
          T val[64];
          // branch-free on the score kind, so that the compiler can vectorise the 64 evaluations
          if (score == Score::kIoU) {
            for (int64_t p = p0; p < p1; ++p)
              val[p - p0] = box_score<T>(d[p], d[n_p + p], d[2 * n_p + p], d[3 * n_p + p], q0, q1, q2, q3,
                                         Score::kIoU) * prob[p];
          } else {
            for (int64_t p = p0; p < p1; ++p)
              val[p - p0] = box_score<T>(d[p], d[n_p + p], d[2 * n_p + p], d[3 * n_p + p], q0, q1, q2, q3,
                                         Score::kTri) * prob[p];
          }
          uint64_t bits = 0;
          for (int64_t k = 0; k < p1 - p0; ++k) bits |= static_cast<uint64_t>(val[k] > sig) << k;
          masks[j * words + wd] = bits;
        }
      }
    });
  }

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
    const uint64_t* mj = masks.data() + j * words;
    int64_t area = 0, free_area = 0;
    for (int64_t wd = 0; wd < words; ++wd) {
      area += popcount64(mj[wd]);
      free_area += popcount64(mj[wd] & ~taken[wd]);
    }
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
  std::vector<int32_t> semantic(n_p);
  at::parallel_for(0, n_p, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      T best = sp[p];
      int32_t bi = 0;
      for (int64_t c = 1; c < n_c; ++c) {
        const T v = sp[c * n_p + p];
        if (argmax_better(v, best)) {
          best = v;
          bi = static_cast<int32_t>(c);
        }
      }
      semantic[p] = bi;
    }
  });
  std::vector<int64_t> stuff_area(n_c, 0);
  for (int64_t p = 0; p < n_p; ++p) {
    if (seg[p] == 0 && !thing[semantic[p]]) ++stuff_area[semantic[p]];
  }
  std::vector<int32_t> stuff_id(n_c, 0);
  for (int64_t c = 0; c < n_c; ++c) {
    if (thing[c]) continue;
    const int64_t area = stuff_area[c];
    if (area == 0 || area < stuff_area_limit) continue;
    stuff_id[c] = static_cast<int32_t>(classes.size()) + 1;
    classes.push_back(c);
    queries.push_back(-1);
    scores.push_back(1.0f);
    areas.push_back(area);
  }
  for (int64_t p = 0; p < n_p; ++p) {
    if (seg[p] == 0) seg[p] = stuff_id[semantic[p]];
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

Result panoptic_from_dense_cpu(const at::Tensor& dense_boxes, const at::Tensor& sem_probs,
                               const at::Tensor& query_boxes, const at::Tensor& query_classes,
                               const at::Tensor& query_scores, const at::Tensor& is_thing, double sigma,
                               c10::string_view score_sv, double score_threshold, double overlap_threshold,
                               int64_t stuff_area_limit) {
  const char* op = "panoptic_from_dense";
  const std::string score(score_sv);
  check_panoptic_from_dense_args(op, dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing,
                                 c10::kCPU);
  const int64_t n_q = query_boxes.size(0), n_c = sem_probs.size(0);
  for (const auto* t : {&sem_probs, &query_boxes, &query_classes, &query_scores, &is_thing}) {
    check_device(op, "every argument", *t, c10::kCPU);
  }
  check_panoptic_from_dense_scalars(op, score, overlap_threshold, stuff_area_limit);

  auto qc = query_classes.to(at::kLong).contiguous();
  std::vector<int64_t> qcls(qc.data_ptr<int64_t>(), qc.data_ptr<int64_t>() + n_q);
  for (int64_t c : qcls) TORCH_CHECK(c >= 0 && c < n_c, op, ": query_classes must lie in [0, ", n_c, "), got ", c);
  auto it = is_thing.contiguous();
  std::vector<uint8_t> thing(it.data_ptr<bool>(), it.data_ptr<bool>() + n_c);

  const auto acc = dense_boxes.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto d = dense_boxes.to(acc).contiguous();
  auto s = sem_probs.to(acc).contiguous();
  auto q = query_boxes.to(acc).contiguous();
  auto qs = query_scores.to(acc).contiguous();
  Result out;
  AT_DISPATCH_FLOATING_TYPES(acc, "panoptic_from_dense_cpu", [&] {
    out = panoptic_impl<scalar_t>(d, s, q, qcls, qs, thing, sigma, score == "iou" ? Score::kIoU : Score::kTri,
                                  score_threshold, overlap_threshold, stuff_area_limit);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CPU, m) {
  m.impl("panoptic_from_dense", TORCH_FN(panoptic_from_dense_cpu));
}

}  // namespace rtpanoptic
