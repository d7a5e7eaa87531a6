// Levelness gathering (eq. 14) on the GPU, fused: one thread per output location picks
// argmax(levelness[1:]) (torch.argmax: first maximum, NaN wins), samples only that level's
// offsets bilinearly (align_corners=False) and decodes them.  Backward: the chosen level of
// every location first, then one thread per pixel of every level gathers the sign-flipped box
// gradient of the locations that sample it (box_math.h's bilinear_adjoint_at, shared with the
// CPU kernel), accumulated in float32 for float16/bfloat16/float32, float64 for float64, in a
// fixed order: no atomics, deterministic.
#include <torch/library.h>

#include <vector>

#include "cuda_common.cuh"
#include "grid.h"
#include "op_checks.h"

namespace rtpanoptic {
namespace {

constexpr int kMaxLevels = 8;

template <typename scalar_t, typename ptr_t>
struct Levels {
  ptr_t ptr[kMaxLevels];
  int64_t h[kMaxLevels];
  int64_t w[kMaxLevels];
  int64_t start[kMaxLevels + 1];  // backward: first thread of each level's [batch, h, w] pixels
};

template <typename scalar_t>
__device__ __forceinline__ void pick_level(const scalar_t* lv, int64_t plane, int64_t nc, int* level, bool* fg) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t best = lv[plane];
  int best_i = 1;
  for (int64_t c = 2; c < nc; ++c) {
    const acc_t v = lv[c * plane];
    if (argmax_better(v, best)) {
      best = v;
      best_i = static_cast<int>(c);
    }
  }
  *level = best_i - 1;
  *fg = argmax_better(best, static_cast<acc_t>(lv[0]));
}

// Where output location t of the [batch, h, w] grid reads from: its chosen level (and the
// foreground flag) and the bilinear taps (align_corners=False) into that level's grid.
template <typename acc_t>
struct Tap {
  int64_t b, p, y, x;  // batch, flat pixel and its row/column in the output grid
  int level;
  bool fg;
  int64_t hi, wi, y0, y1, x0, x1;
  acc_t wy0, wy1, wx0, wx1;
};

template <typename acc_t, typename levels_t, typename scalar_t>
__device__ __forceinline__ Tap<acc_t> locate(const levels_t& levels, const scalar_t* lv, int64_t t, int64_t nc,
                                             int64_t h, int64_t w) {
  const int64_t plane = h * w;
  Tap<acc_t> k;
  k.b = t / plane;
  k.p = t % plane;
  k.y = k.p / w;
  k.x = k.p % w;
  pick_level(lv + k.b * nc * plane + k.p, plane, nc, &k.level, &k.fg);
  k.hi = levels.h[k.level];
  k.wi = levels.w[k.level];
  bilinear_coeffs<acc_t>(k.y, k.hi, static_cast<acc_t>(k.hi) / static_cast<acc_t>(h), &k.y0, &k.y1, &k.wy0, &k.wy1);
  bilinear_coeffs<acc_t>(k.x, k.wi, static_cast<acc_t>(k.wi) / static_cast<acc_t>(w), &k.x0, &k.x1, &k.wx0, &k.wx1);
  return k;
}

template <typename scalar_t>
__global__ void gather_forward_kernel(Levels<scalar_t, const scalar_t*> levels, const scalar_t* __restrict__ lv,
                                      int64_t batch, int64_t nc, int64_t h, int64_t w, int64_t out_stride,
                                      scalar_t* __restrict__ boxes, bool* __restrict__ fg) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t plane = h * w;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= batch * plane) return;
  const Tap<acc_t> k = locate<acc_t>(levels, lv, t, nc, h, w);
  fg[t] = k.fg;
  const int64_t wi = k.wi;
  const scalar_t* src = levels.ptr[k.level] + k.b * 4 * k.hi * wi;
  acc_t v[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const scalar_t* s = src + c * k.hi * wi;
    v[c] = bilinear<acc_t>(s[k.y0 * wi + k.x0], s[k.y0 * wi + k.x1], s[k.y1 * wi + k.x0], s[k.y1 * wi + k.x1], k.wy0,
                           k.wy1, k.wx0, k.wx1);
  }
  const acc_t cx = static_cast<acc_t>(cell_centre<int64_t>(k.x, out_stride));
  const acc_t cy = static_cast<acc_t>(cell_centre<int64_t>(k.y, out_stride));
  scalar_t* dst = boxes + k.b * 4 * plane + k.p;
  dst[0] = static_cast<scalar_t>(cx - v[0]);
  dst[plane] = static_cast<scalar_t>(cy - v[1]);
  dst[2 * plane] = static_cast<scalar_t>(cx + v[2]);
  dst[3 * plane] = static_cast<scalar_t>(cy + v[3]);
}

// The level (0-based) chosen at every location of the [batch, h, w] grid.
template <typename scalar_t>
__global__ void chosen_level_kernel(const scalar_t* __restrict__ lv, int64_t batch, int64_t nc, int64_t plane,
                                    int32_t* __restrict__ chosen) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= batch * plane) return;
  const int64_t b = t / plane, p = t % plane;
  int level;
  bool fg;
  pick_level(lv + b * nc * plane + p, plane, nc, &level, &fg);
  chosen[t] = level;
}

// One thread per pixel (b, yi, xi) of every level: the gradient of its 4 offsets.
template <typename scalar_t, typename acc_t>
__global__ void gather_backward_kernel(Levels<scalar_t, acc_t*> grads, int n_levels, const scalar_t* __restrict__ grad,
                                       const int32_t* __restrict__ chosen, int64_t h, int64_t w) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= grads.start[n_levels]) return;
  int l = 0;
  while (t >= grads.start[l + 1]) ++l;
  const int64_t hi = grads.h[l], wi = grads.w[l], local = t - grads.start[l];
  const int64_t b = local / (hi * wi), yi = (local / wi) % hi, xi = local % wi;
  const int64_t plane = h * w;
  const BilinearAxis<acc_t> ys{hi, h, static_cast<acc_t>(hi) / static_cast<acc_t>(h)};
  const BilinearAxis<acc_t> xs{wi, w, static_cast<acc_t>(wi) / static_cast<acc_t>(w)};
  acc_t acc[4] = {0, 0, 0, 0};
  bilinear_adjoint_at<acc_t, scalar_t>(grad + b * 4 * plane, plane, w, chosen + b * plane, l, yi, xi, ys, xs, acc);
  acc_t* dst = grads.ptr[l] + b * 4 * hi * wi + yi * wi + xi;
#pragma unroll
  for (int c = 0; c < 4; ++c) dst[c * hi * wi] = c < 2 ? -acc[c] : acc[c];
}

void check_inputs(const char* op, const at::TensorList& offsets, const at::Tensor& levelness, int64_t out_stride) {
  check_gather_levelness_args(op, offsets, levelness, out_stride, c10::kCUDA);
  const int64_t n_levels = levelness.size(1) - 1;
  TORCH_CHECK(n_levels <= kMaxLevels, op, ": the CUDA kernel supports at most ", kMaxLevels, " levels, got ",
              n_levels);
}

std::tuple<at::Tensor, at::Tensor> gather_levelness_cuda(at::TensorList offsets, const at::Tensor& levelness,
                                                         int64_t out_stride) {
  const char* op = "gather_levelness";
  check_inputs(op, offsets, levelness, out_stride);
  c10::cuda::CUDAGuard guard(levelness.device());
  auto lv = levelness.contiguous();
  const int64_t batch = lv.size(0), nc = lv.size(1), h = lv.size(2), w = lv.size(3);
  auto boxes = at::empty({batch, 4, h, w}, lv.options());
  auto fg = at::empty({batch, h, w}, lv.options().dtype(at::kBool));
  if (batch * h * w == 0) return {boxes, fg};
  std::vector<at::Tensor> offs;
  for (const auto& o : offsets) offs.push_back(o.contiguous());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lv.scalar_type(), "gather_levelness_cuda", [&] {
    Levels<scalar_t, const scalar_t*> levels;
    for (size_t l = 0; l < offs.size(); ++l) {
      levels.ptr[l] = offs[l].data_ptr<scalar_t>();
      levels.h[l] = offs[l].size(2);
      levels.w[l] = offs[l].size(3);
    }
    gather_forward_kernel<scalar_t><<<cuda::blocks_for(batch * h * w), cuda::kThreads, 0,
                                      at::cuda::getCurrentCUDAStream()>>>(
        levels, lv.data_ptr<scalar_t>(), batch, nc, h, w, out_stride, boxes.data_ptr<scalar_t>(), fg.data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {boxes, fg};
}

std::vector<at::Tensor> gather_levelness_backward_cuda(const at::Tensor& grad_boxes, at::TensorList offsets,
                                                       const at::Tensor& levelness, int64_t out_stride) {
  const char* op = "_gather_levelness_backward";
  check_inputs(op, offsets, levelness, out_stride);
  check_gather_levelness_grad(op, grad_boxes, levelness);
  check_same_device(op, "grad_boxes", grad_boxes, levelness);
  c10::cuda::CUDAGuard guard(levelness.device());
  auto lv = levelness.contiguous();
  auto g = grad_boxes.to(lv.scalar_type()).contiguous();
  const int64_t batch = lv.size(0), nc = lv.size(1), h = lv.size(2), w = lv.size(3);
  const auto acc = acc_type(lv);
  std::vector<at::Tensor> grads;
  for (const auto& o : offsets) grads.push_back(at::zeros(o.sizes(), o.options().dtype(acc)));
  if (batch * h * w > 0) {
    auto chosen = at::empty({batch, h, w}, lv.options().dtype(at::kInt));
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lv.scalar_type(), "gather_levelness_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      chosen_level_kernel<scalar_t><<<cuda::blocks_for(batch * h * w), cuda::kThreads, 0, stream>>>(
          lv.data_ptr<scalar_t>(), batch, nc, h * w, chosen.data_ptr<int32_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      Levels<scalar_t, acc_t*> levels;
      levels.start[0] = 0;
      for (size_t l = 0; l < grads.size(); ++l) {
        levels.ptr[l] = grads[l].data_ptr<acc_t>();
        levels.h[l] = grads[l].size(2);
        levels.w[l] = grads[l].size(3);
        levels.start[l + 1] = levels.start[l] + batch * levels.h[l] * levels.w[l];
      }
      const int n_levels = static_cast<int>(grads.size());
      gather_backward_kernel<scalar_t, acc_t><<<cuda::blocks_for(levels.start[n_levels]), cuda::kThreads, 0, stream>>>(
          levels, n_levels, g.data_ptr<scalar_t>(), chosen.data_ptr<int32_t>(), h, w);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  for (size_t i = 0; i < grads.size(); ++i) grads[i] = grads[i].to(offsets[i].scalar_type());
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CUDA, m) {
  m.impl("gather_levelness", TORCH_FN(gather_levelness_cuda));
  m.impl("_gather_levelness_backward", TORCH_FN(gather_levelness_backward_cuda));
}

}  // namespace rtpanoptic
