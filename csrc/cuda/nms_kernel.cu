// Greedy NMS on the GPU, bitmask algorithm (torchvision semantics, see csrc/cpu/nms_kernel.cpp):
//   1. stable sort by decreasing score;
//   2. one 64-thread block per (row tile, column tile) of 64 boxes (upper triangle only)
//      writes, for every row box i, a 64-bit word of the later boxes it suppresses
//      (IoU > threshold; batched_nms: only boxes of the same category);
//   3. the greedy scan runs on the device in one block (no device->host copy of the mask):
//      thread 0 resolves each 64-box tile sequentially, then all threads OR the kept
//      boxes' rows into the "removed" words of the later tiles;
//   4. the kept flags are compacted (masked_select, the only host sync: the output size).
// IoUs are computed in float32 for float16/bfloat16 and rounded to the input dtype before
// the comparison, as the reference does.  NaN IoUs never exceed the threshold.  The mask takes
// N * ceil(N / 64) * 8 bytes, so N is limited to kMaxBoxes (8 GiB of mask; larger N raise).
#include <torch/library.h>

#include "cuda_common.cuh"
#include "op_checks.h"

namespace rtpanoptic {
namespace {

constexpr int kTile = 64;
constexpr int64_t kMaxBoxes = int64_t(1) << 18;  // as the Triton backend's MAX_BOXES

template <typename scalar_t, bool kBatched>
__global__ void nms_mask_kernel(int64_t n, const scalar_t* __restrict__ boxes, const int64_t* __restrict__ cls,
                                double iou_threshold, int64_t col_blocks, unsigned long long* __restrict__ mask) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (row_block > col_block) return;
  const int row_size = static_cast<int>(min(n - row_block * kTile, static_cast<int64_t>(kTile)));
  const int col_size = static_cast<int>(min(n - col_block * kTile, static_cast<int64_t>(kTile)));
  __shared__ acc_t sb[kTile * 4];
  __shared__ int64_t scls[kTile];
  if (threadIdx.x < col_size) {
    const int64_t k = col_block * kTile + threadIdx.x;
    for (int c = 0; c < 4; ++c) sb[threadIdx.x * 4 + c] = static_cast<acc_t>(boxes[k * 4 + c]);
    if (kBatched) scls[threadIdx.x] = cls[k];
  }
  __syncthreads();
  if (threadIdx.x >= row_size) return;
  const int64_t i = row_block * kTile + threadIdx.x;
  const acc_t x1 = boxes[i * 4], y1 = boxes[i * 4 + 1], x2 = boxes[i * 4 + 2], y2 = boxes[i * 4 + 3];
  const acc_t area = box_area(x1, y1, x2, y2);
  const int64_t ci = kBatched ? cls[i] : 0;
  const acc_t thr = static_cast<acc_t>(static_cast<scalar_t>(iou_threshold));
  unsigned long long bits = 0;
  const int start = row_block == col_block ? threadIdx.x + 1 : 0;
  for (int k = start; k < col_size; ++k) {
    if (kBatched && scls[k] != ci) continue;
    const acc_t* b = sb + k * 4;
    const acc_t iou = pair_iou(x1, y1, x2, y2, area, b[0], b[1], b[2], b[3], box_area(b[0], b[1], b[2], b[3]));
    if (static_cast<acc_t>(static_cast<scalar_t>(iou)) > thr) bits |= 1ULL << k;
  }
  mask[i * col_blocks + col_block] = bits;
}

// Greedy scan over the suppression mask in one block; removed: col_blocks zeroed words.
__global__ void nms_reduce_kernel(int64_t n, int64_t col_blocks, const unsigned long long* __restrict__ mask,
                                  unsigned long long* __restrict__ removed, bool* __restrict__ keep) {
  __shared__ unsigned long long kept_bits;
  for (int64_t rb = 0; rb < col_blocks; ++rb) {
    if (threadIdx.x == 0) {
      unsigned long long word = removed[rb];
      unsigned long long kept = 0;
      const int size = static_cast<int>(min(n - rb * kTile, static_cast<int64_t>(kTile)));
      for (int k = 0; k < size; ++k) {
        const int64_t i = rb * kTile + k;
        const bool is_kept = !((word >> k) & 1ULL);
        keep[i] = is_kept;
        if (is_kept) {
          kept |= 1ULL << k;
          word |= mask[i * col_blocks + rb];
        }
      }
      removed[rb] = word;
      kept_bits = kept;
    }
    __syncthreads();
    const unsigned long long kept = kept_bits;
    for (int64_t cb = rb + 1 + threadIdx.x; cb < col_blocks; cb += blockDim.x) {
      unsigned long long acc = removed[cb];
      unsigned long long bits = kept;
      while (bits) {
        const int k = __ffsll(static_cast<long long>(bits)) - 1;
        acc |= mask[(rb * kTile + k) * col_blocks + cb];
        bits &= bits - 1;
      }
      removed[cb] = acc;
    }
    __syncthreads();
  }
}

at::Tensor nms_common(const char* op, const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                      double iou_threshold) {
  check_nms_args(op, boxes, scores, idxs);
  cuda::check_cuda(op, "boxes", boxes);
  check_same_device(op, "scores", scores, boxes);
  if (idxs != nullptr) check_same_device(op, "idxs", *idxs, boxes);
  c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  TORCH_CHECK(n <= kMaxBoxes, op, ": the cuda backend takes at most ", kMaxBoxes, " boxes (its suppression mask takes ",
              "N * ceil(N / 64) * 8 bytes, 8 GiB at that size), got ", n);
  auto order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  auto sorted = boxes.index_select(0, order).contiguous();
  at::Tensor cls;
  if (idxs != nullptr) cls = idxs->to(at::kLong).index_select(0, order).contiguous();
  const int64_t col_blocks = (n + kTile - 1) / kTile;
  auto mask = at::empty({n * col_blocks}, boxes.options().dtype(at::kLong));
  auto removed = at::zeros({col_blocks}, boxes.options().dtype(at::kLong));
  auto keep = at::empty({n}, boxes.options().dtype(at::kBool));
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(col_blocks));
  auto* mask_p = reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cuda", [&] {
    if (idxs != nullptr) {
      nms_mask_kernel<scalar_t, true><<<grid, kTile, 0, stream>>>(n, sorted.data_ptr<scalar_t>(),
                                                                   cls.data_ptr<int64_t>(), iou_threshold, col_blocks,
                                                                   mask_p);
    } else {
      nms_mask_kernel<scalar_t, false><<<grid, kTile, 0, stream>>>(n, sorted.data_ptr<scalar_t>(), nullptr,
                                                                    iou_threshold, col_blocks, mask_p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  nms_reduce_kernel<<<1, 256, 0, stream>>>(n, col_blocks, mask_p,
                                           reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>()),
                                           keep.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return order.masked_select(keep);
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
