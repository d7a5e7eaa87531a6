// Dense box decoding (eq. 8) on the GPU, one thread per location.  The backward is a
// sign flip written in Python (rtpanoptic/ops/registry.py).
#include <torch/library.h>

#include "cuda_common.cuh"
#include "grid.h"
#include "op_checks.h"

namespace rtpanoptic {
namespace {

template <typename scalar_t>
__global__ void decode_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out, int64_t batch, int64_t h,
                              int64_t w, int64_t stride) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t plane = h * w;
  if (t >= batch * plane) return;
  const int64_t b = t / plane, p = t % plane, y = p / w, x = p % w;
  const acc_t cx = static_cast<acc_t>(cell_centre<int64_t>(x, stride));
  const acc_t cy = static_cast<acc_t>(cell_centre<int64_t>(y, stride));
  const scalar_t* src = in + b * 4 * plane + p;
  scalar_t* dst = out + b * 4 * plane + p;
  dst[0] = static_cast<scalar_t>(cx - static_cast<acc_t>(src[0]));
  dst[plane] = static_cast<scalar_t>(cy - static_cast<acc_t>(src[plane]));
  dst[2 * plane] = static_cast<scalar_t>(cx + static_cast<acc_t>(src[2 * plane]));
  dst[3 * plane] = static_cast<scalar_t>(cy + static_cast<acc_t>(src[3 * plane]));
}

at::Tensor decode_boxes_cuda(const at::Tensor& offsets, int64_t stride) {
  const char* op = "decode_boxes";
  check_decode_boxes_args(op, offsets, stride, c10::kCUDA);
  c10::cuda::CUDAGuard guard(offsets.device());
  auto in = offsets.contiguous();
  auto out = at::empty_like(in);
  const int64_t n = in.size(0) * in.size(2) * in.size(3);
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "decode_boxes_cuda", [&] {
    decode_kernel<scalar_t><<<cuda::blocks_for(n), cuda::kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        in.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), in.size(0), in.size(2), in.size(3), stride);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CUDA, m) {
  m.impl("decode_boxes", TORCH_FN(decode_boxes_cuda));
}

}  // namespace rtpanoptic
