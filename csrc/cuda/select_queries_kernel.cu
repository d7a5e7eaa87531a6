// select_queries on the GPU: the one sweep of csrc/cpu/select_queries_kernel.cpp (whose header
// says why it equals the three-step definition), run by one block of kThreads threads.
//
// The boxes are sorted by decreasing score on the device (stable; NaN scores first, as the
// reference's torch.sort), then the block visits them in that order.  For each box the threads
// split the kept class-NMS survivors C of its class (IoU > nms_thresh?) and, if it survives, the
// kept queries G (IoU > global_nms_thresh?), combined with __syncthreads_or; thread 0 appends the
// box to C and to G.  The sweep stops once top_n queries are kept, so the work grows with the
// number of boxes visited, not with N^2 (no suppression mask; scratch is O(N)).
//
// Device-resident contract: the outputs are keep int64 [min(top_n, N)] (the kept indices, then
// -1) and count int64 0-d, both written by the kernel: nothing is copied to the host, so the op
// can be captured in a CUDA graph at a fixed N.
// IoUs are computed in float32 for float16/bfloat16 and rounded to the input dtype before the
// comparison with the threshold rounded to that dtype, as the reference (and nms_kernel.cu) does.
#include <torch/library.h>

#include "cuda_common.cuh"
#include "op_checks.h"

namespace rtpanoptic {
namespace {

using cuda::kThreads;

// Whether one of the `size` kept boxes (xyxy + area, 5 values each) whose label equals `label`
// (labels == nullptr: any label) has IoU > thr with box (x1, y1, x2, y2, area); block-wide.
template <typename scalar_t, typename acc_t>
__device__ bool any_over(const acc_t* kept, const int64_t* labels, int64_t size, int64_t label, acc_t x1, acc_t y1,
                         acc_t x2, acc_t y2, acc_t area, acc_t thr) {
  bool hit = false;
  for (int64_t r = threadIdx.x; r < size && !hit; r += blockDim.x) {
    if (labels != nullptr && labels[r] != label) continue;
    const acc_t* k = kept + r * 5;
    const acc_t iou = pair_iou(k[0], k[1], k[2], k[3], k[4], x1, y1, x2, y2, area);
    hit = static_cast<acc_t>(static_cast<scalar_t>(iou)) > thr;
  }
  return __syncthreads_or(hit) != 0;
}

template <typename scalar_t>
__global__ void select_queries_kernel(int64_t n, const scalar_t* __restrict__ boxes, const int64_t* __restrict__ labels,
                                      const int64_t* __restrict__ order, double nms_thresh, double global_nms_thresh,
                                      int64_t top_n, at::opmath_type<scalar_t>* __restrict__ class_kept,
                                      int64_t* __restrict__ class_labels, at::opmath_type<scalar_t>* __restrict__ kept,
                                      int64_t* __restrict__ keep, int64_t* __restrict__ count) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ int64_t n_class, n_kept;  // |C|, |G|
  if (threadIdx.x == 0) n_class = n_kept = 0;
  __syncthreads();
  const bool global = global_nms_thresh >= 0;
  const acc_t thr = static_cast<acc_t>(static_cast<scalar_t>(nms_thresh));
  const acc_t global_thr = static_cast<acc_t>(static_cast<scalar_t>(global_nms_thresh));
  for (int64_t s = 0; s < n && n_kept < top_n; ++s) {
    const int64_t i = order[s];
    const acc_t x1 = boxes[i * 4], y1 = boxes[i * 4 + 1], x2 = boxes[i * 4 + 2], y2 = boxes[i * 4 + 3];
    const acc_t area = box_area(x1, y1, x2, y2);
    const int64_t label = labels[i];
    const int64_t nc = n_class, ng = n_kept;
    if (any_over<scalar_t>(class_kept, class_labels, nc, label, x1, y1, x2, y2, area, thr)) continue;
    const bool joins_g = !global || !any_over<scalar_t>(kept, nullptr, ng, 0, x1, y1, x2, y2, area, global_thr);
    if (threadIdx.x == 0) {
      acc_t* c = class_kept + nc * 5;
      c[0] = x1, c[1] = y1, c[2] = x2, c[3] = y2, c[4] = area;
      class_labels[nc] = label;
      n_class = nc + 1;
      if (joins_g) {
        acc_t* g = kept + ng * 5;
        g[0] = x1, g[1] = y1, g[2] = x2, g[3] = y2, g[4] = area;
        keep[ng] = i;
        n_kept = ng + 1;
      }
    }
    __syncthreads();  // the appended boxes and sizes are visible to every thread
  }
  if (threadIdx.x == 0) *count = n_kept;
}

std::tuple<at::Tensor, at::Tensor> select_queries_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                       const at::Tensor& labels, double nms_thresh,
                                                       double global_nms_thresh, int64_t top_n) {
  const char* op = "select_queries";
  check_select_queries_args(op, boxes, scores, labels, top_n, c10::kCUDA);
  const int64_t n = boxes.size(0);
  c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t kept_max = std::min(top_n, n);
  auto keep = at::full({kept_max}, -1, boxes.options().dtype(at::kLong));
  auto count = at::zeros({}, boxes.options().dtype(at::kLong));
  if (kept_max == 0) return {keep, count};
  auto order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const auto b = boxes.contiguous();
  const auto lab = labels.contiguous();
  const auto acc = at::toOpMathType(boxes.scalar_type());
  auto class_kept = at::empty({n * 5}, boxes.options().dtype(acc));
  auto class_labels = at::empty({n}, boxes.options().dtype(at::kLong));
  auto kept = at::empty({kept_max * 5}, boxes.options().dtype(acc));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "select_queries_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    select_queries_kernel<scalar_t><<<1, kThreads, 0, stream>>>(
        n, b.data_ptr<scalar_t>(), lab.data_ptr<int64_t>(), order.data_ptr<int64_t>(), nms_thresh, global_nms_thresh,
        top_n, class_kept.data_ptr<acc_t>(), class_labels.data_ptr<int64_t>(), kept.data_ptr<acc_t>(),
        keep.data_ptr<int64_t>(), count.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {keep, count};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CUDA, m) { m.impl("select_queries", TORCH_FN(select_queries_cuda)); }

}  // namespace rtpanoptic
