// select_queries on the GPU: the stable sort by decreasing score (NaN scores first, as the
// reference's torch.sort), then suppression_mask.cuh's parallel form: one launch of many blocks
// writes the class mask (IoU > nms_thresh, same label) and the global mask (IoU >
// global_nms_thresh) from one IoU per pair, then one warp scans both masks' words with the two
// suppressed sets of csrc/cpu/select_queries_kernel.cpp's sweep (whose header says why one sweep
// equals the three-step definition), stopping once top_n queries are kept.
//
// Device-resident contract: the outputs are keep int64 [min(top_n, N)] (the kept indices, then
// -1) and count int64 0-d, both written by the scan kernel: nothing is copied to the host, so the
// op can be captured in a CUDA graph at a fixed N.  The masks take N * ceil(N / 64) * 8 bytes each.
#include <torch/library.h>

#include "op_checks.h"
#include "suppression_mask.cuh"

namespace rtpanoptic {
namespace {

std::tuple<at::Tensor, at::Tensor> select_queries_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                       const at::Tensor& labels, double nms_thresh,
                                                       double global_nms_thresh, int64_t top_n) {
  const char* op = "select_queries";
  check_select_queries_args(op, boxes, scores, labels, top_n, c10::kCUDA);
  const int64_t n = boxes.size(0);
  c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t kept_max = std::min(top_n, n);
  if (kept_max == 0) {
    return {at::empty({0}, boxes.options().dtype(at::kLong)), at::zeros({}, boxes.options().dtype(at::kLong))};
  }
  TORCH_CHECK(n <= cuda::kMaxMaskBoxes, op, ": the cuda backend takes at most ", cuda::kMaxMaskBoxes,
              " boxes (its suppression masks take N * ceil(N / 64) * 8 bytes each), got ", n);
  auto order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  auto keep = at::empty({kept_max}, boxes.options().dtype(at::kLong));
  auto count = at::empty({}, boxes.options().dtype(at::kLong));
  const auto lab = labels.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "select_queries_cuda", [&] {
    cuda::greedy_suppression<scalar_t>(boxes, lab, order, nms_thresh, global_nms_thresh, top_n, keep, count);
  });
  return {keep, count};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CUDA, m) { m.impl("select_queries", TORCH_FN(select_queries_cuda)); }

}  // namespace rtpanoptic
