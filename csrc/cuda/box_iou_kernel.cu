// Pairwise IoU [N, M] on the GPU (torchvision.ops.box_iou semantics; float16/bfloat16
// computed in float32 and rounded back).  One thread per pair.
#include <torch/library.h>

#include "cuda_common.cuh"

namespace rtpanoptic {
namespace {

template <typename scalar_t>
__global__ void box_iou_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t n, int64_t m,
                               scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n * m) return;
  const int64_t i = t / m, j = t % m;
  const acc_t a0 = a[4 * i], a1 = a[4 * i + 1], a2 = a[4 * i + 2], a3 = a[4 * i + 3];
  const acc_t b0 = b[4 * j], b1 = b[4 * j + 1], b2 = b[4 * j + 2], b3 = b[4 * j + 3];
  out[t] = static_cast<scalar_t>(pair_iou(a0, a1, a2, a3, box_area(a0, a1, a2, a3), b0, b1, b2, b3,
                                          box_area(b0, b1, b2, b3)));
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  const char* op = "box_iou";
  check_boxes(op, "boxes1", boxes1);
  check_boxes(op, "boxes2", boxes2);
  cuda::check_cuda(op, "boxes1", boxes1);
  check_same_device(op, "boxes2", boxes2, boxes1);
  check_same_dtype(op, "boxes2", boxes2, "boxes1", boxes1);
  c10::cuda::CUDAGuard guard(boxes1.device());
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  auto out = at::empty({n, m}, boxes1.options());
  if (n * m == 0) return out;
  auto a = boxes1.contiguous();
  auto b = boxes2.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "box_iou_cuda", [&] {
    box_iou_kernel<scalar_t><<<cuda::blocks_for(n * m), cuda::kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), n, m, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CUDA, m) {
  m.impl("box_iou", TORCH_FN(box_iou_cuda));
}

}  // namespace rtpanoptic
