// Explicit mask loss (eqs. 16-18) on the GPU, fused forward and backward: no [Q, H, W] map.
// Forward: a grid of (pixel chunk, query) blocks; every thread accumulates its pixels'
// FP/FN errors (S or 1 - S, S = IoU in float32 for float16/bfloat16/float32, float64 for
// float64) and mask pixel count, the block reduces them into its own float64 / int64 partial
// sums; a one-thread kernel sums them over the chunks and forms
// 1/Q * sum_j beta_j * err_j / N_j (queries with N_j = 0 skipped), in a fixed order.  No host
// sync, no float atomics: deterministic.
// Backward: the same chunked grid counts N_j (integer atomics: exact); the dense gradient is
// one thread per (image, pixel) summing over the queries of that image, the query gradient is
// reduced per block into partial sums, summed over the chunks afterwards.  Queries with N_j = 0
// take no part; every other one does, whatever its weight (NaN boxes give NaN gradients, as in
// the reference).  The incoming gradient is read on the device.
#include <torch/library.h>

#include "cuda_common.cuh"
#include "op_checks.h"

namespace rtpanoptic {
namespace {

constexpr int kPixelsPerBlock = 4096;

// Partial sums [query, chunk] of the errors and mask pixels, one chunk of pixels per block.
template <typename scalar_t>
__global__ void loss_partial_kernel(const scalar_t* __restrict__ d, const scalar_t* __restrict__ qb,
                                    const bool* __restrict__ masks, const int64_t* __restrict__ bi, int64_t batch,
                                    int64_t n_p, double* __restrict__ err, int64_t* __restrict__ count) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t j = blockIdx.y;
  const int64_t slot = j * gridDim.x + blockIdx.x;
  if (bi[j] < 0 || bi[j] >= batch) {  // unchecked here (see check_inputs): the loss becomes NaN
    if (threadIdx.x == 0) {
      err[slot] = static_cast<double>(NAN);
      count[slot] = 1;
    }
    return;
  }
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kPixelsPerBlock;
  const int64_t p1 = min(n_p, p0 + kPixelsPerBlock);
  const scalar_t* db = d + bi[j] * 4 * n_p;
  const bool* mj = masks + j * n_p;
  const acc_t q0 = qb[4 * j], q1 = qb[4 * j + 1], q2 = qb[4 * j + 2], q3 = qb[4 * j + 3];
  double e = 0.0;
  unsigned long long c = 0;
  for (int64_t p = p0 + threadIdx.x; p < p1; p += blockDim.x) {
    const acc_t s = box_score<acc_t>(db[p], db[n_p + p], db[2 * n_p + p], db[3 * n_p + p], q0, q1, q2, q3, Score::kIoU);
    e += static_cast<double>(mask_error(s, mj[p]));
    c += mj[p];
  }
  e = cuda::block_sum(e);
  c = cuda::block_sum(c);
  if (threadIdx.x == 0) {
    err[slot] = e;
    count[slot] = static_cast<int64_t>(c);
  }
}

template <typename scalar_t>
__global__ void count_kernel(const bool* __restrict__ masks, int64_t n_p, unsigned long long* __restrict__ count) {
  const int64_t j = blockIdx.y;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kPixelsPerBlock;
  const int64_t p1 = min(n_p, p0 + kPixelsPerBlock);
  unsigned long long c = 0;
  for (int64_t p = p0 + threadIdx.x; p < p1; p += blockDim.x) c += masks[j * n_p + p];
  c = cuda::block_sum(c);
  if (threadIdx.x == 0) atomicAdd(count + j, c);
}

template <typename scalar_t>
__global__ void loss_finish_kernel(const double* __restrict__ err, const int64_t* __restrict__ count,
                                   const scalar_t* __restrict__ beta, int64_t n_q, int64_t chunks,
                                   scalar_t* __restrict__ out) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  *out = static_cast<scalar_t>(mask_loss_mean<at::opmath_type<scalar_t>>(err, count, beta, n_q, chunks));
}

// coefficient g * beta_j / (N_j * Q) of a query j with N_j > 0
template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> coefficient(const scalar_t* grad, const scalar_t* beta,
                                                                 const unsigned long long* count, int64_t j,
                                                                 int64_t n_q) {
  using acc_t = at::opmath_type<scalar_t>;
  return static_cast<acc_t>(*grad) * static_cast<acc_t>(beta[j]) / static_cast<acc_t>(count[j]) /
         static_cast<acc_t>(n_q);
}

template <typename scalar_t>
__global__ void grad_dense_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ d,
                                  const scalar_t* __restrict__ qb, const bool* __restrict__ masks,
                                  const scalar_t* __restrict__ beta, const int64_t* __restrict__ bi,
                                  const unsigned long long* __restrict__ count, int64_t batch, int64_t n_q,
                                  int64_t n_p, scalar_t* __restrict__ gd) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= batch * n_p) return;
  const int64_t b = t / n_p, p = t % n_p;
  const scalar_t* db = d + b * 4 * n_p;
  const acc_t d0 = db[p], d1 = db[n_p + p], d2 = db[2 * n_p + p], d3 = db[3 * n_p + p];
  acc_t acc[4] = {0, 0, 0, 0}, unused[4];
  for (int64_t j = 0; j < n_q; ++j) {
    if (bi[j] != b || count[j] == 0) continue;
    const acc_t c = coefficient(grad, beta, count, j, n_q);
    const acc_t gs = masks[j * n_p + p] ? -c : c;
    box_score_backward<acc_t>(gs, d0, d1, d2, d3, qb[4 * j], qb[4 * j + 1], qb[4 * j + 2], qb[4 * j + 3],
                              Score::kIoU, acc, unused);
  }
  scalar_t* gdb = gd + b * 4 * n_p;
#pragma unroll
  for (int c = 0; c < 4; ++c) gdb[c * n_p + p] = static_cast<scalar_t>(acc[c]);
}

// Partial sums [chunk, query, 4] of the query gradient (left 0 for queries that take no part).
template <typename scalar_t>
__global__ void grad_query_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ d,
                                  const scalar_t* __restrict__ qb, const bool* __restrict__ masks,
                                  const scalar_t* __restrict__ beta, const int64_t* __restrict__ bi,
                                  const unsigned long long* __restrict__ count, int64_t batch, int64_t n_q,
                                  int64_t n_p, at::opmath_type<scalar_t>* __restrict__ partial) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t j = blockIdx.y;
  if (count[j] == 0 || bi[j] < 0 || bi[j] >= batch) return;  // uniform over the block
  const acc_t c = coefficient(grad, beta, count, j, n_q);
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kPixelsPerBlock;
  const int64_t p1 = min(n_p, p0 + kPixelsPerBlock);
  const scalar_t* db = d + bi[j] * 4 * n_p;
  const acc_t q0 = qb[4 * j], q1 = qb[4 * j + 1], q2 = qb[4 * j + 2], q3 = qb[4 * j + 3];
  acc_t acc[4] = {0, 0, 0, 0}, unused[4];
  for (int64_t p = p0 + threadIdx.x; p < p1; p += blockDim.x) {
    const acc_t gs = masks[j * n_p + p] ? -c : c;
    box_score_backward<acc_t>(gs, db[p], db[n_p + p], db[2 * n_p + p], db[3 * n_p + p], q0, q1, q2, q3, Score::kIoU,
                              unused, acc);
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const acc_t s = cuda::block_sum(acc[k]);
    if (threadIdx.x == 0) partial[(blockIdx.x * n_q + j) * 4 + k] = s;
  }
}

void check_inputs(const char* op, const at::Tensor& dense, const at::Tensor& query, const at::Tensor& masks,
                  const at::Tensor& beta, const at::Tensor& batch_index) {
  check_mask_loss_args(op, dense, query, masks, beta, batch_index, c10::kCUDA);
  const int64_t q = query.size(0);
  check_same_device(op, "query_boxes", query, dense);
  check_same_device(op, "gt_masks", masks, dense);
  check_same_device(op, "beta", beta, dense);
  check_same_device(op, "batch_index", batch_index, dense);
  TORCH_CHECK(q <= 65535, op, ": the CUDA kernel supports at most 65535 queries, got ", q);
  // batch_index range: checked by rtpanoptic.ops.mask_loss (a device-side check would need a sync);
  // the kernels never read out of bounds: an out-of-range query makes the loss NaN and gets no gradient.
}

at::Tensor mask_loss_cuda(const at::Tensor& dense_boxes, const at::Tensor& query_boxes, const at::Tensor& gt_masks,
                          const at::Tensor& beta, const at::Tensor& batch_index) {
  const char* op = "mask_loss";
  check_inputs(op, dense_boxes, query_boxes, gt_masks, beta, batch_index);
  c10::cuda::CUDAGuard guard(dense_boxes.device());
  const int64_t n_q = query_boxes.size(0), n_p = dense_boxes.size(2) * dense_boxes.size(3);
  auto out = at::zeros({}, dense_boxes.options());
  if (n_q == 0 || n_p == 0) return out;
  auto d = dense_boxes.contiguous();
  auto q = query_boxes.contiguous();
  auto m = gt_masks.contiguous();
  auto b = beta.to(d.scalar_type()).contiguous();
  auto bi = batch_index.to(at::kLong).contiguous();
  const int64_t chunks = (n_p + kPixelsPerBlock - 1) / kPixelsPerBlock;
  auto err = at::empty({n_q, chunks}, d.options().dtype(at::kDouble));
  auto count = at::empty({n_q, chunks}, d.options().dtype(at::kLong));
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(n_q));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "mask_loss_cuda", [&] {
    loss_partial_kernel<scalar_t><<<grid, cuda::kThreads, 0, stream>>>(
        d.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), m.data_ptr<bool>(), bi.data_ptr<int64_t>(),
        dense_boxes.size(0), n_p, err.data_ptr<double>(), count.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    loss_finish_kernel<scalar_t><<<1, 32, 0, stream>>>(err.data_ptr<double>(), count.data_ptr<int64_t>(),
                                                       b.data_ptr<scalar_t>(), n_q, chunks, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mask_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& dense_boxes,
                                                           const at::Tensor& query_boxes, const at::Tensor& gt_masks,
                                                           const at::Tensor& beta, const at::Tensor& batch_index) {
  const char* op = "_mask_loss_backward";
  check_inputs(op, dense_boxes, query_boxes, gt_masks, beta, batch_index);
  check_mask_loss_grad(op, grad);
  check_same_device(op, "grad", grad, dense_boxes);
  c10::cuda::CUDAGuard guard(dense_boxes.device());
  const int64_t n_q = query_boxes.size(0), batch = dense_boxes.size(0);
  const int64_t n_p = dense_boxes.size(2) * dense_boxes.size(3);
  auto d = dense_boxes.contiguous();
  auto q = query_boxes.contiguous();
  const auto acc = acc_type(d);
  auto gd = at::zeros_like(d);
  const int64_t chunks = (n_p + kPixelsPerBlock - 1) / kPixelsPerBlock;
  auto partial = at::zeros({chunks, n_q, 4}, q.options().dtype(acc));
  if (n_q > 0 && n_p > 0) {
    auto m = gt_masks.contiguous();
    auto b = beta.to(d.scalar_type()).contiguous();
    auto bi = batch_index.to(at::kLong).contiguous();
    auto g = grad.reshape({}).to(d.scalar_type()).contiguous();
    auto count = at::zeros({n_q}, d.options().dtype(at::kLong));
    auto* count_p = reinterpret_cast<unsigned long long*>(count.data_ptr<int64_t>());
    auto stream = at::cuda::getCurrentCUDAStream();
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(n_q));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "mask_loss_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      count_kernel<scalar_t><<<grid, cuda::kThreads, 0, stream>>>(m.data_ptr<bool>(), n_p, count_p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      grad_dense_kernel<scalar_t><<<cuda::blocks_for(batch * n_p), cuda::kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), m.data_ptr<bool>(),
          b.data_ptr<scalar_t>(), bi.data_ptr<int64_t>(), count_p, batch, n_q, n_p, gd.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      grad_query_kernel<scalar_t><<<grid, cuda::kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), m.data_ptr<bool>(),
          b.data_ptr<scalar_t>(), bi.data_ptr<int64_t>(), count_p, batch, n_q, n_p, partial.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {gd, partial.sum(0).to(query_boxes.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CUDA, m) {
  m.impl("mask_loss", TORCH_FN(mask_loss_cuda));
  m.impl("_mask_loss_backward", TORCH_FN(mask_loss_backward_cuda));
}

}  // namespace rtpanoptic
