// Greedy NMS on the GPU (torchvision semantics, see csrc/cpu/nms_kernel.cpp): the stable sort by
// decreasing score, then suppression_mask.cuh's parallel form (IoU bitmask by many blocks, greedy
// scan over the words by one warp), then the kept indices are cut to their count (the only host
// read: the output size).
#include <torch/library.h>

#include "op_checks.h"
#include "suppression_mask.cuh"

namespace rtpanoptic {
namespace {

at::Tensor nms_common(const char* op, const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                      double iou_threshold) {
  check_nms_args(op, boxes, scores, idxs);
  cuda::check_cuda(op, "boxes", boxes);
  check_same_device(op, "scores", scores, boxes);
  if (idxs != nullptr) check_same_device(op, "idxs", *idxs, boxes);
  c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  TORCH_CHECK(n <= cuda::kMaxMaskBoxes, op, ": the cuda backend takes at most ", cuda::kMaxMaskBoxes,
              " boxes (its suppression mask takes N * ceil(N / 64) * 8 bytes, 8 GiB at that size), got ", n);
  auto order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor labels = idxs != nullptr ? idxs->to(at::kLong).contiguous() : at::Tensor();
  auto keep = at::empty({n}, boxes.options().dtype(at::kLong));
  auto count = at::empty({}, boxes.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cuda", [&] {
    cuda::greedy_suppression<scalar_t>(boxes, labels, order, iou_threshold, -1.0, n, keep, count);
  });
  return keep.narrow(0, 0, count.item<int64_t>());
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_common("nms", boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  return nms_common("batched_nms", boxes, scores, &idxs, iou_threshold);
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CUDA, m) {
  m.impl("nms", TORCH_FN(nms_cuda));
  m.impl("batched_nms", TORCH_FN(batched_nms_cuda));
}

}  // namespace rtpanoptic
