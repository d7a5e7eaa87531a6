// Fused bilinear upsampling (align_corners=False) + argmax over the classes on the GPU, one thread
// per output pixel; nothing is written but the class map, in its output dtype (int64, int32, int16 or
// uint8: out_t).  Arithmetic as the C++ kernel
// (csrc/cpu/upsample_argmax_kernel.cpp): ATen's sampling positions with
// src = fma(in/out, dst + 0.5, -0.5) and fma(fma(x00, ww0, x01 * ww1), wh0, fma(x10, ww0, x11 * ww1) * wh1),
// every fused multiply-add explicit (__fma_rn), every other product and sum rounded on its own
// (__fmul_rn, __fdiv_rn: nvcc may not contract them).  float16/bfloat16 are computed in float32.
// The reference on a GPU is ATen's CUDA kernel (upsample_bilinear2d_out_frame): when both sizes are
// unchanged it copies the input; an axis that keeps its size while the other is resized takes the
// general rule (src = d exactly: taps d and d + 1 (d at the last index), weights 1 and 0), so an
// infinite neighbour gives inf * 0 = NaN as there.  (ATen's CPU kernel differs: taps (d, d) with
// weights (1, 0) on an unresized axis, also when both are unresized; the C++ kernel follows it.)
#include <torch/library.h>

#include "cuda_common.cuh"
#include "op_checks.h"

namespace rtpanoptic {
namespace {

template <typename acc_t>
__device__ __forceinline__ acc_t mul_rn(acc_t a, acc_t b) {
  return a * b;
}
template <>
__device__ __forceinline__ float mul_rn<float>(float a, float b) {
  return __fmul_rn(a, b);
}
template <>
__device__ __forceinline__ double mul_rn<double>(double a, double b) {
  return __dmul_rn(a, b);
}

template <typename acc_t>
struct Sample {
  int64_t i0, i1;
  acc_t w0, w1;
};

// ATen's (index0, index1, lambda0, lambda1) of output position d along an axis of in -> out pixels.
template <typename acc_t>
__device__ __forceinline__ Sample<acc_t> axis_sample(int64_t d, int64_t in, int64_t out) {
  const acc_t scale = static_cast<acc_t>(in) / static_cast<acc_t>(out);  // IEEE division (no fast-math)
  acc_t src = fma(scale, static_cast<acc_t>(d) + acc_t(0.5), acc_t(-0.5));
  if (src < acc_t(0)) src = acc_t(0);
  const int64_t i = min(static_cast<int64_t>(floor(src)), in - 1);
  const acc_t l1 = min(max(src - static_cast<acc_t>(i), acc_t(0)), acc_t(1));
  return {i, i < in - 1 ? i + 1 : i, acc_t(1) - l1, l1};
}

template <typename scalar_t, typename out_t>
__global__ void upsample_argmax_kernel(const scalar_t* __restrict__ in, out_t* __restrict__ out, int64_t batch,
                                       int64_t classes, int64_t h, int64_t w, int64_t out_h, int64_t out_w,
                                       int64_t rows, int64_t cols) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t pixels = rows * cols;
  if (t >= batch * pixels) return;
  const int64_t b = t / pixels, p = t % pixels;
  const Sample<acc_t> sy = axis_sample<acc_t>(p / cols, h, out_h);
  const Sample<acc_t> sx = axis_sample<acc_t>(p % cols, w, out_w);
  const int64_t plane = h * w;
  const scalar_t* src = in + b * classes * plane;
  const int64_t i00 = sy.i0 * w + sx.i0, i01 = sy.i0 * w + sx.i1, i10 = sy.i1 * w + sx.i0, i11 = sy.i1 * w + sx.i1;
  const bool copy = h == out_h && w == out_w;  // ATen's CUDA kernel copies: no inf * 0
  acc_t best = acc_t(0);
  int64_t arg = 0;
  for (int64_t c = 0; c < classes; ++c) {
    const scalar_t* ch = src + c * plane;
    acc_t v = static_cast<acc_t>(ch[i00]);
    if (!copy) {
      const acc_t top = fma(v, sx.w0, mul_rn(static_cast<acc_t>(ch[i01]), sx.w1));
      const acc_t bottom = fma(static_cast<acc_t>(ch[i10]), sx.w0, mul_rn(static_cast<acc_t>(ch[i11]), sx.w1));
      v = fma(top, sy.w0, mul_rn(bottom, sy.w1));
    }
    // torch.argmax's order: greater, or NaN over a number; the first of equals stays.
    if (c == 0 || v > best || (v != v && best == best)) {
      best = v;
      arg = c;
    }
  }
  out[t] = static_cast<out_t>(arg);  // arg < classes fits out_t (checked on the host)
}

template <typename scalar_t, typename out_t>
void launch_upsample_argmax(const at::Tensor& in, at::Tensor& out, at::IntArrayRef size, at::IntArrayRef crop) {
  upsample_argmax_kernel<scalar_t, out_t>
      <<<cuda::blocks_for(out.numel()), cuda::kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          in.data_ptr<scalar_t>(), out.data_ptr<out_t>(), in.size(0), in.size(1), in.size(2), in.size(3), size[0],
          size[1], crop[0], crop[1]);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor upsample_argmax_cuda(const at::Tensor& logits, at::IntArrayRef size, at::IntArrayRef crop,
                                c10::optional<at::ScalarType> out_dtype) {
  const char* op = "upsample_argmax";
  const at::ScalarType dtype = check_upsample_argmax_args(op, logits, size, crop, out_dtype, c10::kCUDA);
  c10::cuda::CUDAGuard guard(logits.device());
  auto in = logits.contiguous();
  auto out = at::empty({in.size(0), crop[0], crop[1]}, in.options().dtype(dtype));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "upsample_argmax_cuda", [&] {
    switch (dtype) {
      case at::kLong: launch_upsample_argmax<scalar_t, int64_t>(in, out, size, crop); break;
      case at::kInt: launch_upsample_argmax<scalar_t, int32_t>(in, out, size, crop); break;
      case at::kShort: launch_upsample_argmax<scalar_t, int16_t>(in, out, size, crop); break;
      default: launch_upsample_argmax<scalar_t, uint8_t>(in, out, size, crop); break;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CUDA, m) {
  m.impl("upsample_argmax", TORCH_FN(upsample_argmax_cuda));
}

}  // namespace rtpanoptic
