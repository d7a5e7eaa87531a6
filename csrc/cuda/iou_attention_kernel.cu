// Box self-attention (eq. 6) on the GPU.  Forward: one thread per (query, pixel), scores in
// float32 for float16/bfloat16 (box_math.h has the formulas and NaN behaviour).  Backward:
// the dense gradient with one thread per pixel summing over queries; the query gradient
// with a grid of (pixel chunk, query) blocks, each reducing its chunk in-block into its own
// float32/float64 partial sums, which are then summed over the chunks in a fixed order (no
// atomics: deterministic).  Zero upstream gradients are not skipped (NaN coordinates give NaN
// gradients, as the reference's autograd does).
#include <torch/library.h>

#include "cuda_common.cuh"
#include "op_checks.h"

namespace rtpanoptic {
namespace {

constexpr int kPixelsPerBlock = 4096;

template <typename scalar_t>
__global__ void attention_forward_kernel(const scalar_t* __restrict__ d, const scalar_t* __restrict__ qb, int64_t n_q,
                                         int64_t n_p, Score score, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n_q * n_p) return;
  const int64_t q = t / n_p, p = t % n_p;
  out[t] = static_cast<scalar_t>(box_score<acc_t>(d[p], d[n_p + p], d[2 * n_p + p], d[3 * n_p + p], qb[4 * q],
                                                  qb[4 * q + 1], qb[4 * q + 2], qb[4 * q + 3], score));
}

template <typename scalar_t>
__global__ void attention_grad_dense_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ d,
                                            const scalar_t* __restrict__ qb, int64_t n_q, int64_t n_p, Score score,
                                            scalar_t* __restrict__ gd) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= n_p) return;
  const acc_t d0 = d[p], d1 = d[n_p + p], d2 = d[2 * n_p + p], d3 = d[3 * n_p + p];
  acc_t acc[4] = {0, 0, 0, 0}, unused[4];
  for (int64_t q = 0; q < n_q; ++q) {
    box_score_backward<acc_t>(static_cast<acc_t>(g[q * n_p + p]), d0, d1, d2, d3, qb[4 * q], qb[4 * q + 1],
                              qb[4 * q + 2], qb[4 * q + 3], score, acc, unused);
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) gd[c * n_p + p] = static_cast<scalar_t>(acc[c]);
}

// Partial sums [chunk, query, 4] of the query gradient, one chunk of pixels per block.
template <typename scalar_t>
__global__ void attention_grad_query_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ d,
                                            const scalar_t* __restrict__ qb, int64_t n_q, int64_t n_p, Score score,
                                            at::opmath_type<scalar_t>* __restrict__ partial) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t q = blockIdx.y;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kPixelsPerBlock;
  const int64_t p1 = min(n_p, p0 + kPixelsPerBlock);
  const acc_t q0 = qb[4 * q], q1 = qb[4 * q + 1], q2 = qb[4 * q + 2], q3 = qb[4 * q + 3];
  acc_t acc[4] = {0, 0, 0, 0}, unused[4];
  for (int64_t p = p0 + threadIdx.x; p < p1; p += blockDim.x) {
    box_score_backward<acc_t>(static_cast<acc_t>(g[q * n_p + p]), d[p], d[n_p + p], d[2 * n_p + p], d[3 * n_p + p],
                              q0, q1, q2, q3, score, unused, acc);
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const acc_t s = cuda::block_sum(acc[c]);
    if (threadIdx.x == 0) partial[(blockIdx.x * n_q + q) * 4 + c] = s;
  }
}

void check_inputs(const char* op, const at::Tensor& dense, const at::Tensor& query, const std::string& score) {
  check_iou_attention_args(op, dense, query, c10::kCUDA);
  check_same_device(op, "query_boxes", query, dense);
  check_score(op, score);
}

at::Tensor iou_attention_cuda(const at::Tensor& dense_boxes, const at::Tensor& query_boxes, c10::string_view score_sv) {
  const char* op = "iou_attention";
  const std::string score(score_sv);
  check_inputs(op, dense_boxes, query_boxes, score);
  c10::cuda::CUDAGuard guard(dense_boxes.device());
  auto d = dense_boxes.contiguous();
  auto q = query_boxes.contiguous();
  const int64_t n_q = q.size(0), h = d.size(1), w = d.size(2);
  auto out = at::empty({n_q, h, w}, d.options());
  if (n_q * h * w == 0) return out;
  const Score s = score == "iou" ? Score::kIoU : Score::kTri;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "iou_attention_cuda", [&] {
    attention_forward_kernel<scalar_t><<<cuda::blocks_for(n_q * h * w), cuda::kThreads, 0,
                                         at::cuda::getCurrentCUDAStream()>>>(
        d.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), n_q, h * w, s, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> iou_attention_backward_cuda(const at::Tensor& grad, const at::Tensor& dense_boxes,
                                                               const at::Tensor& query_boxes,
                                                               c10::string_view score_sv) {
  const char* op = "_iou_attention_backward";
  const std::string score(score_sv);
  check_inputs(op, dense_boxes, query_boxes, score);
  const int64_t n_q = query_boxes.size(0), h = dense_boxes.size(1), w = dense_boxes.size(2), n_p = h * w;
  check_iou_attention_grad(op, grad, dense_boxes, query_boxes);
  check_same_device(op, "grad", grad, dense_boxes);
  TORCH_CHECK(n_q <= 65535, op, ": the CUDA backward supports at most 65535 queries, got ", n_q);
  c10::cuda::CUDAGuard guard(dense_boxes.device());
  auto d = dense_boxes.contiguous();
  auto q = query_boxes.contiguous();
  auto g = grad.to(d.scalar_type()).contiguous();
  const auto acc = acc_type(d);
  auto gd = at::zeros_like(d);
  const int64_t chunks = (n_p + kPixelsPerBlock - 1) / kPixelsPerBlock;
  auto partial = at::zeros({chunks, n_q, 4}, q.options().dtype(acc));
  if (n_q * n_p > 0) {
    const Score s = score == "iou" ? Score::kIoU : Score::kTri;
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "iou_attention_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      attention_grad_dense_kernel<scalar_t><<<cuda::blocks_for(n_p), cuda::kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), n_q, n_p, s,
          gd.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(n_q));
      attention_grad_query_kernel<scalar_t><<<grid, cuda::kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), n_q, n_p, s,
          partial.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {gd, partial.sum(0).to(query_boxes.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CUDA, m) {
  m.impl("iou_attention", TORCH_FN(iou_attention_cuda));
  m.impl("_iou_attention_backward", TORCH_FN(iou_attention_backward_cuda));
}

}  // namespace rtpanoptic
