// Helpers shared by the CUDA kernels: launch sizes, block reductions, input checks.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "box_math.h"
#include "checks.h"

namespace rtpanoptic {
namespace cuda {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned int>(b < 1 ? 1 : b);
}

// Sum of v over the block (blockDim.x a multiple of 32, <= 1024); valid in thread 0.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T warp_sums[32];
  for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // warp_sums may still be read by a previous call
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  const int n_warps = (blockDim.x + 31) / 32;
  v = threadIdx.x < n_warps ? warp_sums[threadIdx.x] : T(0);
  if (warp == 0) {
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  }
  return v;
}

inline void check_cuda(const char* op, const char* name, const at::Tensor& t) {
  check_device(op, name, t, c10::kCUDA);
}

}  // namespace cuda
}  // namespace rtpanoptic
