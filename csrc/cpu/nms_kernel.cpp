// Greedy NMS on the CPU, torchvision semantics: boxes sorted by decreasing score
// (stable, so ties keep their input order), a box is suppressed by an earlier kept
// box when IoU > iou_threshold; areas without +1.  A box with a NaN coordinate has
// NaN IoU with everything, so it neither suppresses nor is suppressed.
//
// The scan keeps the candidates that are still alive in score order, packed in
// structure-of-arrays form: the first one is kept, the others are compared with it and
// the survivors are compacted in place, so every later kept box scans only survivors.
// float32 (and float16/bfloat16, computed in float32) takes an AVX2 path when the CPU
// has it (simd.h): 8 IoUs per instruction, bit-identical to the scalar formula.
// float16/bfloat16: the reference rounds each IoU to the input dtype and compares it
// with the threshold rounded to that dtype; comparing the float32 IoU with
// simd::threshold_after_rounding is the same test.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "box_math.h"
#include "op_checks.h"
#include "simd.h"

namespace rtpanoptic {
namespace {

// Boxes in score order, structure of arrays; rank = position in score order.  Padded so that
// an 8-lane store at any index < size stays inside.
template <typename T>
struct SortedBoxes {
  std::vector<T> x1, y1, x2, y2, area;
  std::vector<int32_t> rank;
  explicit SortedBoxes(int64_t n) : x1(n + 8), y1(n + 8), x2(n + 8), y2(n + 8), area(n + 8), rank(n + 8) {}
};

// Compacts the boxes of [begin, end) that box `head` does not suppress (IoU <= thr, or NaN)
// to the front of the range, in order; returns the new end.
template <typename T>
int64_t survivors_scalar(SortedBoxes<T>& b, int64_t head, int64_t begin, int64_t end, T thr) {
  const T ix1 = b.x1[head], iy1 = b.y1[head], ix2 = b.x2[head], iy2 = b.y2[head], iarea = b.area[head];
  int64_t out = begin;
  for (int64_t r = begin; r < end; ++r) {
    // box_math.h's pair_iou (torchvision's: no zero-union guard, 0 / 0 = NaN never passes)
    if (pair_iou(ix1, iy1, ix2, iy2, iarea, b.x1[r], b.y1[r], b.x2[r], b.y2[r], b.area[r]) > thr) continue;
    b.x1[out] = b.x1[r];
    b.y1[out] = b.y1[r];
    b.x2[out] = b.x2[r];
    b.y2[out] = b.y2[r];
    b.area[out] = b.area[r];
    b.rank[out] = b.rank[r];
    ++out;
  }
  return out;
}

#if RTP_HAVE_AVX2_PATH
// survivors_scalar, 8 candidates at a time.
RTP_AVX2 int64_t survivors_avx2(SortedBoxes<float>& b, int64_t head, int64_t begin, int64_t end, float thr) {
  using namespace simd::avx2;
  const __m256 ix1 = _mm256_set1_ps(b.x1[head]), iy1 = _mm256_set1_ps(b.y1[head]);
  const __m256 ix2 = _mm256_set1_ps(b.x2[head]), iy2 = _mm256_set1_ps(b.y2[head]);
  const __m256 iarea = _mm256_set1_ps(b.area[head]), vthr = _mm256_set1_ps(thr);
  float *x1 = b.x1.data(), *y1 = b.y1.data(), *x2 = b.x2.data(), *y2 = b.y2.data(), *area = b.area.data();
  int32_t* rank = b.rank.data();
  int64_t out = begin, r = begin;
  for (; r + kWidth <= end; r += kWidth) {
    const __m256 vx1 = _mm256_loadu_ps(x1 + r), vy1 = _mm256_loadu_ps(y1 + r);
    const __m256 vx2 = _mm256_loadu_ps(x2 + r), vy2 = _mm256_loadu_ps(y2 + r);
    const __m256 varea = _mm256_loadu_ps(area + r);
    const uint32_t keep = ~gt_bits(nms_iou8(ix1, iy1, ix2, iy2, iarea, vx1, vy1, vx2, vy2, varea), vthr) & 0xffu;
    if (keep == 0xffu && out == r) {  // nothing suppressed and nothing to move
      out += kWidth;
      continue;
    }
    const __m256i perm = compress_permutation(keep);
    compress_store(x1 + out, vx1, perm);
    compress_store(y1 + out, vy1, perm);
    compress_store(x2 + out, vx2, perm);
    compress_store(y2 + out, vy2, perm);
    compress_store(area + out, varea, perm);
    compress_store(rank + out, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rank + r)), perm);
    out += __builtin_popcount(keep);
  }
  // the last < 8 candidates: the scalar formula, moved down behind the compacted ones
  const int64_t tail = survivors_scalar(b, head, r, end, thr);
  for (int64_t k = r; k < tail; ++k, ++out) {
    x1[out] = x1[k];
    y1[out] = y1[k];
    x2[out] = x2[k];
    y2[out] = y2[k];
    area[out] = area[k];
    rank[out] = rank[k];
  }
  return out;
}
#endif

template <typename T>
using SurvivorsFn = int64_t (*)(SortedBoxes<T>&, int64_t, int64_t, int64_t, T);

template <typename T>
SurvivorsFn<T> survivors_fn() {
#if RTP_HAVE_AVX2_PATH
  if constexpr (std::is_same_v<T, float>) {
    if (simd::cpu_isa() == simd::Isa::kAvx2) return survivors_avx2;
  }
#endif
  return survivors_scalar<T>;
}

// Greedy NMS of the boxes [begin, end) of b (one category): sets kept[rank] for the kept ones.
template <typename T>
void greedy_nms(SortedBoxes<T>& b, int64_t begin, int64_t end, T thr, SurvivorsFn<T> survivors, uint8_t* kept) {
  for (int64_t head = begin; head < end; ++head) {  // head: the best survivor, always kept
    kept[b.rank[head]] = 1;
    end = survivors(b, head, head + 1, end, thr);
  }
}

// `thr` is the threshold in T's terms (see the header comment for float16/bfloat16).
template <typename T, bool kBatched>
at::Tensor nms_impl(const at::Tensor& boxes, const at::Tensor& scores, const int64_t* idxs, T thr) {
  const int64_t n = boxes.size(0);
  auto order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  auto bt = boxes.contiguous();
  const T* bp = bt.data_ptr<T>();
  const int64_t* op = order.data_ptr<int64_t>();

  // Ranks in scan order: score order, or (batched) grouped by category, score order inside
  // a category (boxes of different categories never interact, so each group is scanned alone).
  std::vector<int32_t> ranks(n);
  for (int64_t k = 0; k < n; ++k) ranks[k] = static_cast<int32_t>(k);
  if (kBatched) {
    std::stable_sort(ranks.begin(), ranks.end(), [&](int32_t a, int32_t b) { return idxs[op[a]] < idxs[op[b]]; });
  }
  SortedBoxes<T> b(n);
  for (int64_t k = 0; k < n; ++k) {
    const T* p = bp + op[ranks[k]] * 4;
    b.x1[k] = p[0];
    b.y1[k] = p[1];
    b.x2[k] = p[2];
    b.y2[k] = p[3];
    b.area[k] = (p[2] - p[0]) * (p[3] - p[1]);
    b.rank[k] = ranks[k];
  }
  std::vector<uint8_t> kept(n, 0);
  const SurvivorsFn<T> survivors = survivors_fn<T>();
  int64_t start = 0;
  for (int64_t k = 1; k <= n; ++k) {
    if (k == n || (kBatched && idxs[op[ranks[k]]] != idxs[op[ranks[start]]])) {
      greedy_nms(b, start, k, thr, survivors, kept.data());
      start = k;
    }
  }
  std::vector<int64_t> keep;
  keep.reserve(n);
  for (int64_t k = 0; k < n; ++k) {
    if (kept[k]) keep.push_back(op[k]);
  }
  auto out = at::empty({static_cast<int64_t>(keep.size())}, boxes.options().dtype(at::kLong));
  std::copy(keep.begin(), keep.end(), out.data_ptr<int64_t>());
  return out;
}

void check_inputs(const char* op, const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs) {
  check_nms_args(op, boxes, scores, idxs);
  check_device(op, "boxes", boxes, c10::kCPU);
  check_same_device(op, "scores", scores, boxes);
  if (idxs != nullptr) check_same_device(op, "idxs", *idxs, boxes);
  TORCH_CHECK(boxes.size(0) <= std::numeric_limits<int32_t>::max(), op,
              ": the cpp backend takes at most 2^31 - 1 boxes, got ", boxes.size(0));
}

// Runs nms_impl in float32 (float16/bfloat16/float32) or float64, with the threshold those
// dtypes compare against.
template <bool kBatched>
at::Tensor nms_dispatch(const at::Tensor& boxes, const at::Tensor& scores, const int64_t* idxs,
                        double iou_threshold) {
  switch (boxes.scalar_type()) {
    case at::kDouble:
      return nms_impl<double, kBatched>(boxes, scores, idxs, iou_threshold);
    case at::kHalf:
      return nms_impl<float, kBatched>(boxes.to(at::kFloat), scores, idxs,
                                       simd::threshold_after_rounding<c10::Half>(iou_threshold));
    case at::kBFloat16:
      return nms_impl<float, kBatched>(boxes.to(at::kFloat), scores, idxs,
                                       simd::threshold_after_rounding<c10::BFloat16>(iou_threshold));
    default:
      return nms_impl<float, kBatched>(boxes.to(at::kFloat), scores, idxs, static_cast<float>(iou_threshold));
  }
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_inputs("nms", boxes, scores, nullptr);
  if (boxes.numel() == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  return nms_dispatch<false>(boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  check_inputs("batched_nms", boxes, scores, &idxs);
  if (boxes.numel() == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  auto idx64 = idxs.to(at::kLong).contiguous();
  return nms_dispatch<true>(boxes, scores, idx64.data_ptr<int64_t>(), iou_threshold);
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CPU, m) {
  m.impl("nms", TORCH_FN(nms_cpu));
  m.impl("batched_nms", TORCH_FN(batched_nms_cpu));
}

}  // namespace rtpanoptic
