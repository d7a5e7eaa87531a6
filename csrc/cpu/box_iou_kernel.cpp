// Pairwise IoU [N, M] on the CPU, torchvision.ops.box_iou semantics: areas without +1,
// 0/0 (two zero-area boxes) gives NaN, NaN coordinates give NaN.  float16/bfloat16 are
// computed in float32 and rounded back.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "box_math.h"
#include "checks.h"

namespace rtpanoptic {
namespace {

template <typename T>
void box_iou_impl(const T* a, const T* b, int64_t n, int64_t m, T* out) {
  std::vector<T> area_b(m);
  for (int64_t j = 0; j < m; ++j) area_b[j] = box_area(b[4 * j], b[4 * j + 1], b[4 * j + 2], b[4 * j + 3]);
  at::parallel_for(0, n, std::max<int64_t>(1, 4096 / std::max<int64_t>(m, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T a0 = a[4 * i], a1 = a[4 * i + 1], a2 = a[4 * i + 2], a3 = a[4 * i + 3];
      const T area_a = box_area(a0, a1, a2, a3);
      T* row = out + i * m;
      for (int64_t j = 0; j < m; ++j) {
        const T* q = b + 4 * j;
        row[j] = pair_iou(a0, a1, a2, a3, area_a, q[0], q[1], q[2], q[3], area_b[j]);
      }
    }
  });
}

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  const char* op = "box_iou";
  check_boxes(op, "boxes1", boxes1);
  check_boxes(op, "boxes2", boxes2);
  check_device(op, "boxes1", boxes1, c10::kCPU);
  check_device(op, "boxes2", boxes2, c10::kCPU);
  check_same_dtype(op, "boxes2", boxes2, "boxes1", boxes1);
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  const auto acc = acc_type(boxes1);
  auto a = boxes1.to(acc).contiguous();
  auto b = boxes2.to(acc).contiguous();
  auto out = at::empty({n, m}, a.options());
  if (n > 0 && m > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "box_iou_cpu", [&] {
      box_iou_impl<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), n, m, out.data_ptr<scalar_t>());
    });
  }
  return out.to(boxes1.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CPU, m) {
  m.impl("box_iou", TORCH_FN(box_iou_cpu));
}

}  // namespace rtpanoptic
