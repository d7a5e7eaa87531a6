// Greedy NMS on the CPU, torchvision semantics: boxes sorted by decreasing score
// (stable, so ties keep their input order), a box is suppressed by an earlier kept
// box when IoU > iou_threshold; areas without +1.  A box with a NaN coordinate has
// NaN IoU with everything, so it neither suppresses nor is suppressed.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace rtpanoptic {
namespace {

template <typename scalar_t, bool kBatched>
at::Tensor nms_impl(const at::Tensor& boxes, const at::Tensor& scores, const int64_t* idxs, double iou_threshold) {
  const int64_t n = boxes.size(0);
  auto order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  auto b = boxes.contiguous();
  const scalar_t* bp = b.data_ptr<scalar_t>();
  const int64_t* op = order.data_ptr<int64_t>();

  // Gather sorted coordinates into SoA arrays for a cache-friendly inner loop.
  std::vector<scalar_t> x1(n), y1(n), x2(n), y2(n), area(n);
  std::vector<int64_t> cls(kBatched ? n : 0);
  for (int64_t k = 0; k < n; ++k) {
    const scalar_t* p = bp + op[k] * 4;
    x1[k] = p[0];
    y1[k] = p[1];
    x2[k] = p[2];
    y2[k] = p[3];
    area[k] = (p[2] - p[0]) * (p[3] - p[1]);
    if (kBatched) cls[k] = idxs[op[k]];
  }
  std::vector<uint8_t> suppressed(n, 0);
  const scalar_t thr = static_cast<scalar_t>(iou_threshold);
  // Greedy suppression over the sorted positions in `group` (increasing = decreasing score).
  auto greedy = [&](const int64_t* group, int64_t size) {
    for (int64_t a = 0; a < size; ++a) {
      const int64_t i = group[a];
      if (suppressed[i]) continue;
      const scalar_t ix1 = x1[i], iy1 = y1[i], ix2 = x2[i], iy2 = y2[i], iarea = area[i];
      for (int64_t b = a + 1; b < size; ++b) {
        const int64_t j = group[b];
        if (suppressed[j]) continue;
        const scalar_t w = std::max(scalar_t(0), std::min(ix2, x2[j]) - std::max(ix1, x1[j]));
        const scalar_t h = std::max(scalar_t(0), std::min(iy2, y2[j]) - std::max(iy1, y1[j]));
        const scalar_t inter = w * h;
        const scalar_t iou = inter / (iarea + area[j] - inter);
        if (iou > thr) suppressed[j] = 1;
      }
    }
  };
  std::vector<int64_t> positions(n);
  for (int64_t k = 0; k < n; ++k) positions[k] = k;
  if (kBatched) {
    // Boxes of different categories never interact: run the greedy scan per category
    // (O(sum n_c^2) instead of O(n^2)); positions stay in score order inside a category.
    std::stable_sort(positions.begin(), positions.end(), [&](int64_t a, int64_t b) { return cls[a] < cls[b]; });
    int64_t start = 0;
    for (int64_t k = 1; k <= n; ++k) {
      if (k == n || cls[positions[k]] != cls[positions[start]]) {
        greedy(positions.data() + start, k - start);
        start = k;
      }
    }
  } else {
    greedy(positions.data(), n);
  }
  std::vector<int64_t> keep;
  keep.reserve(n);
  for (int64_t k = 0; k < n; ++k) {
    if (!suppressed[k]) keep.push_back(op[k]);
  }
  auto out = at::empty({static_cast<int64_t>(keep.size())}, boxes.options().dtype(at::kLong));
  std::copy(keep.begin(), keep.end(), out.data_ptr<int64_t>());
  return out;
}

void check_inputs(const at::Tensor& boxes, const at::Tensor& scores) {
  TORCH_CHECK(boxes.device().is_cpu(), "nms: boxes must be a CPU tensor, got ", boxes.device());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "nms: boxes must have shape [N, 4], got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0),
              "nms: scores must have shape [N] with N = boxes.size(0) = ", boxes.size(0), ", got ", scores.sizes());
  TORCH_CHECK(boxes.scalar_type() == scores.scalar_type(), "nms: boxes and scores must have the same dtype, got ",
              boxes.scalar_type(), " and ", scores.scalar_type());
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), "nms: boxes must be floating point, got ",
              boxes.scalar_type());
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_inputs(boxes, scores);
  if (boxes.numel() == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    out = nms_impl<acc_t, false>(boxes.to(c10::CppTypeToScalarType<acc_t>::value), scores, nullptr, iou_threshold);
  });
  return out;
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  check_inputs(boxes, scores);
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), "batched_nms: idxs must have shape [N] with N = ",
              boxes.size(0), ", got ", idxs.sizes());
  TORCH_CHECK(!at::isFloatingType(idxs.scalar_type()) && idxs.scalar_type() != at::kBool,
              "batched_nms: idxs must be an integer tensor, got ", idxs.scalar_type());
  if (boxes.numel() == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  auto idx64 = idxs.to(at::kLong).contiguous();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "batched_nms_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    out = nms_impl<acc_t, true>(boxes.to(c10::CppTypeToScalarType<acc_t>::value), scores,
                                idx64.data_ptr<int64_t>(), iou_threshold);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CPU, m) {
  m.impl("nms", TORCH_FN(nms_cpu));
  m.impl("batched_nms", TORCH_FN(batched_nms_cpu));
}

}  // namespace rtpanoptic
