// select_queries on the CPU: class-aware NMS, optional class-agnostic NMS and the top N in one
// sweep in score order that stops as soon as N queries are kept.
//
// The specification (ops/reference.py select_queries) is three passes over the boxes in score
// order (stable: ties keep input order; NaN scores first, as torch.sort):
//   1. C = batched_nms(nms_thresh): box i is kept iff no earlier kept box of its class has
//      IoU > nms_thresh with it;
//   2. G = nms(global_nms_thresh) over C, visiting C in the same order (a stable sort of a
//      subsequence of a stably sorted sequence keeps its order): i in C is kept iff no earlier
//      member of G has IoU > global_nms_thresh with it;
//   3. the first top_n members of G.
// Why one sweep equals it: whether i is in C depends only on the members of C before i, and
// whether i is in G only on i being in C and on the members of G before i.  So visiting the boxes
// once in score order, keeping both sets so far, decides each box exactly as the passes do, in
// the same order:
//   - a box that a class-mate in C suppresses is in neither set;
//   - otherwise it joins C, also when G then rejects it: a box that the class-agnostic pass
//     suppresses still suppresses later boxes of its class in pass 1, so C (not G) is what later
//     boxes are checked against for their class;
//   - it joins G (is output) when no member of G suppresses it.
// Boxes after the top_n-th member of G cannot change the first top_n members, so the sweep stops
// there.  The boxes are ordered lazily (nth_element + sort of a growing chunk, with the total order
// of the stable sort), so an early stop also skips most of the sorting.
//
// IoU: nms_kernel.cpp's formula (torchvision's), the candidate's box first; the AVX2 path compares
// 8 kept boxes at a time with simd.h's nms_iou8, bit-identical to the scalar formula.  IoU is
// symmetric except for the sign of an exact zero and for which NaN propagates, neither of which
// can pass a threshold >= 0, so the outcomes equal the reference's box_iou(kept, candidate) > thr.
// float16/bfloat16 compare the float32 IoU with simd::threshold_after_rounding, as nms does.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>
#include <vector>

#include "op_checks.h"
#include "simd.h"

namespace rtpanoptic {
namespace {

constexpr int kLanes = 8;

// A set of kept boxes, structure of arrays, padded to a multiple of kLanes with NaN boxes
// (whose IoU is NaN, which never exceeds a threshold), so the AVX2 scan needs no tail.
template <typename T>
struct KeptBoxes {
  std::vector<T> x1, y1, x2, y2, area;
  int64_t size = 0;

  void push(const T* box, T box_area) {
    if (size % kLanes == 0) {
      const T nan = std::numeric_limits<T>::quiet_NaN();
      for (auto* v : {&x1, &y1, &x2, &y2, &area}) v->resize(size + kLanes, nan);
    }
    x1[size] = box[0];
    y1[size] = box[1];
    x2[size] = box[2];
    y2[size] = box[3];
    area[size] = box_area;
    ++size;
  }
};

// nms_kernel.cpp's nms_iou, candidate first (the order of simd::avx2::nms_iou8).
template <typename T>
inline T pair_iou(T ax1, T ay1, T ax2, T ay2, T aarea, T x1, T y1, T x2, T y2, T area) {
  const T w = std::max(T(0), std::min(ax2, x2) - std::max(ax1, x1));
  const T h = std::max(T(0), std::min(ay2, y2) - std::max(ay1, y1));
  const T inter = w * h;
  return inter / (aarea + area - inter);
}

// Whether a kept box has IoU > thr with the candidate `box`.
template <typename T>
bool any_over_scalar(const KeptBoxes<T>& kept, const T* box, T box_area, T thr) {
  for (int64_t r = 0; r < kept.size; ++r) {
    if (pair_iou(box[0], box[1], box[2], box[3], box_area, kept.x1[r], kept.y1[r], kept.x2[r], kept.y2[r],
                 kept.area[r]) > thr) {
      return true;
    }
  }
  return false;
}

#if RTP_HAVE_AVX2_PATH
RTP_AVX2 bool any_over_avx2(const KeptBoxes<float>& kept, const float* box, float box_area, float thr) {
  using namespace simd::avx2;
  const __m256 bx1 = _mm256_set1_ps(box[0]), by1 = _mm256_set1_ps(box[1]);
  const __m256 bx2 = _mm256_set1_ps(box[2]), by2 = _mm256_set1_ps(box[3]);
  const __m256 barea = _mm256_set1_ps(box_area), vthr = _mm256_set1_ps(thr);
  for (int64_t r = 0; r < kept.size; r += kWidth) {
    const __m256 iou = nms_iou8(bx1, by1, bx2, by2, barea, _mm256_loadu_ps(kept.x1.data() + r),
                                _mm256_loadu_ps(kept.y1.data() + r), _mm256_loadu_ps(kept.x2.data() + r),
                                _mm256_loadu_ps(kept.y2.data() + r), _mm256_loadu_ps(kept.area.data() + r));
    if (gt_bits(iou, vthr) != 0) return true;
  }
  return false;
}
#endif

template <typename T>
using AnyOverFn = bool (*)(const KeptBoxes<T>&, const T*, T, T);

template <typename T>
AnyOverFn<T> any_over_fn() {
#if RTP_HAVE_AVX2_PATH
  if constexpr (std::is_same_v<T, float>) {
    if (simd::cpu_isa() == simd::Isa::kAvx2) return any_over_avx2;
  }
#endif
  return any_over_scalar<T>;
}

// The order of torch.sort(scores, descending=True, stable=True) as a strict total order:
// NaN first, then decreasing score, ties (and NaNs among themselves) by index.
template <typename T>
struct ScoreOrder {
  const T* s;
  bool operator()(int64_t a, int64_t b) const {
    const T sa = s[a], sb = s[b];
    const bool na = std::isnan(sa), nb = std::isnan(sb);
    if (na || nb) return na && (!nb || a < b);
    return sa > sb || (sa == sb && a < b);
  }
};

// `box` / `score`: float32 (float16/bfloat16/float32 inputs) or float64 copies; thresholds in
// T's terms; global_thr < 0: no class-agnostic pass.  Writes the kept indices to out[0 .. count).
template <typename T>
int64_t select_impl(const T* box, const T* score, const int64_t* labels, int64_t n, T thr, T global_thr,
                    bool global, int64_t top_n, int64_t* out) {
  const AnyOverFn<T> any_over = any_over_fn<T>();
  const ScoreOrder<T> before{score};
  std::vector<int64_t> order(n);
  for (int64_t k = 0; k < n; ++k) order[k] = k;
  std::unordered_map<int64_t, KeptBoxes<T>> class_kept;  // C, per class
  KeptBoxes<T> global_kept;                               // G
  int64_t count = 0, sorted = 0;
  int64_t chunk = std::max<int64_t>(256, 4 * top_n);
  for (int64_t k = 0; k < n && count < top_n; ++k) {
    if (k == sorted) {  // order the next chunk of boxes (all of them are after the sorted ones)
      const int64_t end = std::min(n, sorted + chunk);
      if (end < n) std::nth_element(order.begin() + sorted, order.begin() + end, order.end(), before);
      std::sort(order.begin() + sorted, order.begin() + end, before);
      sorted = end;
      chunk *= 2;
    }
    const int64_t i = order[k];
    const T* b = box + i * 4;
    const T area = (b[2] - b[0]) * (b[3] - b[1]);
    KeptBoxes<T>& mine = class_kept[labels[i]];
    if (any_over(mine, b, area, thr)) continue;  // not in C
    mine.push(b, area);
    if (global) {
      if (any_over(global_kept, b, area, global_thr)) continue;  // in C, not in G
      global_kept.push(b, area);
    }
    out[count++] = i;
  }
  return count;
}

std::tuple<at::Tensor, at::Tensor> select_queries_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                      const at::Tensor& labels, double nms_thresh,
                                                      double global_nms_thresh, int64_t top_n) {
  const char* op = "select_queries";
  check_select_queries_args(op, boxes, scores, labels, top_n, c10::kCPU);
  const int64_t n = boxes.size(0);
  auto keep = at::full({std::min(top_n, n)}, -1, boxes.options().dtype(at::kLong));
  const auto lab = labels.contiguous();
  const bool global = global_nms_thresh >= 0;
  int64_t count = 0;
  if (boxes.scalar_type() == at::kDouble) {
    const auto b = boxes.contiguous(), s = scores.contiguous();
    count = select_impl<double>(b.data_ptr<double>(), s.data_ptr<double>(), lab.data_ptr<int64_t>(), n, nms_thresh,
                                global_nms_thresh, global, top_n, keep.data_ptr<int64_t>());
  } else {
    float thr = static_cast<float>(nms_thresh), global_thr = static_cast<float>(global_nms_thresh);
    if (boxes.scalar_type() == at::kHalf) {
      thr = simd::threshold_after_rounding<c10::Half>(nms_thresh);
      if (global) global_thr = simd::threshold_after_rounding<c10::Half>(global_nms_thresh);
    } else if (boxes.scalar_type() == at::kBFloat16) {
      thr = simd::threshold_after_rounding<c10::BFloat16>(nms_thresh);
      if (global) global_thr = simd::threshold_after_rounding<c10::BFloat16>(global_nms_thresh);
    }
    const auto b = boxes.to(at::kFloat).contiguous(), s = scores.to(at::kFloat).contiguous();
    count = select_impl<float>(b.data_ptr<float>(), s.data_ptr<float>(), lab.data_ptr<int64_t>(), n, thr, global_thr,
                               global, top_n, keep.data_ptr<int64_t>());
  }
  return {keep, at::scalar_tensor(count, boxes.options().dtype(at::kLong))};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CPU, m) { m.impl("select_queries", TORCH_FN(select_queries_cpu)); }

}  // namespace rtpanoptic
