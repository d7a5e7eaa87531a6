// The parallel form of greedy NMS shared by nms / batched_nms (nms_kernel.cu) and select_queries
// (select_queries_kernel.cu), as torchvision's CUDA NMS:
//   1. suppression_mask_kernel, many blocks: one 64-thread block per (row tile, column tile) of
//      64 score-sorted boxes (upper triangle only) writes, for each row box i, the 64-bit word of
//      the later boxes j > i of the column tile with IoU(i, j) > thresh (and, with labels, the
//      same label); with kGlobal it also writes, from the same IoU, the word of IoU > global
//      thresh (no label) into a second mask.  Words left of the diagonal tile are never written
//      and never read.
//   2. greedy_scan_kernel, one warp: the greedy pass over the words, 64 boxes (one tile) at a time,
//      with no host read (the op stays capturable in a CUDA graph).  Per tile every lane loads
//      two rows' diagonal words (one round of independent loads), then all lanes resolve the tile
//      in lock-step: only the boxes still available cost a step (ffs), and a kept box's diagonal
//      word comes from its lane by __shfl_sync.  Then each lane ORs the kept rows into the removed
//      words it owns (word c belongs to lane c % 32, so the removed words are private to their
//      lane: no shared memory, no barrier; the rows' loads go 8 at a time) and the owner of the
//      next tile's word passes it on by __shfl_sync.  Two suppressed sets for select_queries (csrc/cpu/select_queries_kernel.cpp
//      says why one sweep equals its three passes): C's (every class survivor ORs its class row)
//      and G's (every output query ORs its global row).  The scan stops once top_n are output.
// IoUs are computed in float32 for float16/bfloat16 and rounded to the input dtype before the
// comparison with the threshold rounded to that dtype, as the reference does; NaN IoUs never
// exceed a threshold.  A mask takes N * ceil(N / 64) * 8 bytes: N is limited to kMaxMaskBoxes.
#pragma once

#include "cuda_common.cuh"

namespace rtpanoptic {
namespace cuda {

using mask_word = unsigned long long;
constexpr int kMaskTile = 64;
constexpr int64_t kMaxMaskBoxes = int64_t(1) << 18;  // 8 GiB per mask; as the Triton backend's MAX_BOXES

inline int64_t mask_words(int64_t n) { return (n + kMaskTile - 1) / kMaskTile; }

// Launch: grid (words, words), kMaskTile threads.  order: sorted position -> box index.
template <typename scalar_t, bool kLabels, bool kGlobal>
__global__ void suppression_mask_kernel(int64_t n, const scalar_t* __restrict__ boxes,
                                        const int64_t* __restrict__ labels, const int64_t* __restrict__ order,
                                        double thresh, double global_thresh, int64_t words,
                                        mask_word* __restrict__ mask, mask_word* __restrict__ global_mask) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (row_block > col_block) return;
  const int row_size = static_cast<int>(min(n - row_block * kMaskTile, static_cast<int64_t>(kMaskTile)));
  const int col_size = static_cast<int>(min(n - col_block * kMaskTile, static_cast<int64_t>(kMaskTile)));
  __shared__ acc_t sb[kMaskTile * 5];  // x1 y1 x2 y2 area
  __shared__ int64_t slabel[kMaskTile];
  if (threadIdx.x < col_size) {
    const int64_t k = order[col_block * kMaskTile + threadIdx.x];
    acc_t* b = sb + threadIdx.x * 5;
    for (int c = 0; c < 4; ++c) b[c] = static_cast<acc_t>(boxes[k * 4 + c]);
    b[4] = box_area(b[0], b[1], b[2], b[3]);
    if (kLabels) slabel[threadIdx.x] = labels[k];
  }
  __syncthreads();
  if (threadIdx.x >= row_size) return;
  const int64_t i = order[row_block * kMaskTile + threadIdx.x];
  const acc_t x1 = boxes[i * 4], y1 = boxes[i * 4 + 1], x2 = boxes[i * 4 + 2], y2 = boxes[i * 4 + 3];
  const acc_t area = box_area(x1, y1, x2, y2);
  const int64_t label = kLabels ? labels[i] : 0;
  const acc_t thr = static_cast<acc_t>(static_cast<scalar_t>(thresh));
  const acc_t global_thr = static_cast<acc_t>(static_cast<scalar_t>(global_thresh));
  mask_word bits = 0, global_bits = 0;
  for (int k = row_block == col_block ? threadIdx.x + 1 : 0; k < col_size; ++k) {
    const acc_t* b = sb + k * 5;
    const acc_t iou = static_cast<acc_t>(static_cast<scalar_t>(pair_iou(x1, y1, x2, y2, area, b[0], b[1], b[2], b[3], b[4])));
    if (iou > thr && (!kLabels || slabel[k] == label)) bits |= 1ULL << k;
    if (kGlobal && iou > global_thr) global_bits |= 1ULL << k;
  }
  const int64_t at = (row_block * kMaskTile + threadIdx.x) * words + col_block;
  mask[at] = bits;
  if (kGlobal) global_mask[at] = global_bits;
}

// `value` ORed with word c of the rows base + k of `mask` for the set bits k of `rows`, the loads
// issued 8 at a time (independent, so 8 are in flight instead of one round trip per row).
__device__ __forceinline__ mask_word or_rows(mask_word value, const mask_word* __restrict__ mask, int64_t base,
                                             int64_t words, int64_t c, mask_word rows) {
  while (rows != 0) {
    mask_word loaded[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      loaded[u] = 0;
      if (rows != 0) {
        loaded[u] = mask[(base + __ffsll(static_cast<long long>(rows)) - 1) * words + c];
        rows &= rows - 1;
      }
    }
#pragma unroll
    for (int u = 0; u < 8; ++u) value |= loaded[u];
  }
  return value;
}

// Launch: <<<1, 32>>>.  removed: 2 * words scratch (initialised here).  Writes keep[0, kept) (box
// indices order[position], in score order), -1 into keep[kept, keep_size) and count = kept.
template <bool kGlobal>
__global__ void greedy_scan_kernel(int64_t n, int64_t words, const mask_word* __restrict__ mask,
                                   const mask_word* __restrict__ global_mask, const int64_t* __restrict__ order,
                                   int64_t top_n, mask_word* __restrict__ removed, int64_t* __restrict__ keep,
                                   int64_t keep_size, int64_t* __restrict__ count) {
  constexpr unsigned kAll = 0xffffffffu;
  const int lane = static_cast<int>(threadIdx.x);
  mask_word* removed_c = removed;
  mask_word* removed_g = removed + words;
  for (int64_t c = lane; c < words; c += 32) removed_c[c] = removed_g[c] = 0;
  mask_word cword = 0, gword = 0;  // the removed bits of the current tile in C's and G's sets
  int64_t kept = 0;
  for (int64_t rb = 0; rb < words; ++rb) {
    const int64_t base = rb * kMaskTile;
    const int size = static_cast<int>(min(n - base, static_cast<int64_t>(kMaskTile)));
    mask_word c_lo = 0, c_hi = 0, g_lo = 0, g_hi = 0;  // diagonal words of rows base + lane, base + 32 + lane
    if (lane < size) {
      c_lo = mask[(base + lane) * words + rb];
      if (kGlobal) g_lo = global_mask[(base + lane) * words + rb];
    }
    if (lane + 32 < size) {
      c_hi = mask[(base + 32 + lane) * words + rb];
      if (kGlobal) g_hi = global_mask[(base + 32 + lane) * words + rb];
    }
    const mask_word valid = size == kMaskTile ? ~0ULL : (1ULL << size) - 1;
    mask_word class_kept = 0, global_kept = 0;
    mask_word avail = ~cword & valid;
    // Uniform across the warp: every lane resolves the tile the same way.
    while (avail != 0 && kept < top_n) {
      const int k = __ffsll(static_cast<long long>(avail)) - 1;
      class_kept |= 1ULL << k;
      cword |= __shfl_sync(kAll, k < 32 ? c_lo : c_hi, k & 31);
      bool joins = true;
      if (kGlobal) {
        joins = !((gword >> k) & 1ULL);
        if (joins) {
          global_kept |= 1ULL << k;
          gword |= __shfl_sync(kAll, k < 32 ? g_lo : g_hi, k & 31);
        }
      }
      if (joins) {
        if (lane == 0) keep[kept] = order[base + k];
        ++kept;
      }
      avail = k == kMaskTile - 1 ? 0 : ~cword & valid & (~0ULL << (k + 1));
    }
    if (kept >= top_n || rb + 1 == words) break;
    // OR the kept rows into the later words this lane owns (c % 32 == lane); pass word rb + 1 on.
    const int owner = static_cast<int>((rb + 1) & 31);
    mask_word next_c = 0, next_g = 0;
    if (class_kept != 0) {
      for (int64_t c = rb + 1 + ((lane - owner) & 31); c < words; c += 32) {
        const mask_word vc = or_rows(removed_c[c], mask, base, words, c, class_kept);
        const mask_word vg = kGlobal ? or_rows(removed_g[c], global_mask, base, words, c, global_kept) : 0;
        if (c == rb + 1) {
          next_c = vc, next_g = vg;  // consumed below; never read from memory again
        } else {
          removed_c[c] = vc;
          if (kGlobal) removed_g[c] = vg;
        }
      }
    } else if (lane == owner) {
      next_c = removed_c[rb + 1];
      if (kGlobal) next_g = removed_g[rb + 1];
    }
    cword = __shfl_sync(kAll, next_c, owner);
    gword = __shfl_sync(kAll, next_g, owner);
  }
  for (int64_t s = kept + lane; s < keep_size; s += 32) keep[s] = -1;
  if (lane == 0) *count = kept;
}

// The kept positions of the greedy pass over the boxes sorted by `order` (stable, decreasing
// score): keep int64 [keep_size] (box indices, then -1) and count int64 0-d, on the device.
// labels: int64 [N] or undefined (class-agnostic); global_thresh < 0: no second pass.
template <typename scalar_t>
void greedy_suppression(const at::Tensor& boxes, const at::Tensor& labels, const at::Tensor& order, double thresh,
                        double global_thresh, int64_t top_n, const at::Tensor& keep, const at::Tensor& count) {
  const int64_t n = boxes.size(0);
  const int64_t words = mask_words(n);
  const bool global = global_thresh >= 0;
  auto opts = boxes.options().dtype(at::kLong);
  auto mask = at::empty({n * words}, opts);
  auto global_mask = global ? at::empty({n * words}, opts) : mask;
  auto removed = at::empty({2 * words}, opts);
  auto* mask_p = reinterpret_cast<mask_word*>(mask.data_ptr<int64_t>());
  auto* global_p = reinterpret_cast<mask_word*>(global_mask.data_ptr<int64_t>());
  const auto b = boxes.contiguous();
  const int64_t* lab = labels.defined() ? labels.data_ptr<int64_t>() : nullptr;
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(words), static_cast<unsigned>(words));
  const auto* bp = b.data_ptr<scalar_t>();
  const auto* op = order.data_ptr<int64_t>();
  if (lab != nullptr && global) {
    suppression_mask_kernel<scalar_t, true, true><<<grid, kMaskTile, 0, stream>>>(n, bp, lab, op, thresh, global_thresh,
                                                                                   words, mask_p, global_p);
  } else if (lab != nullptr) {
    suppression_mask_kernel<scalar_t, true, false><<<grid, kMaskTile, 0, stream>>>(n, bp, lab, op, thresh, 0.0, words,
                                                                                    mask_p, nullptr);
  } else {
    suppression_mask_kernel<scalar_t, false, false><<<grid, kMaskTile, 0, stream>>>(n, bp, nullptr, op, thresh, 0.0,
                                                                                     words, mask_p, nullptr);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto* removed_p = reinterpret_cast<mask_word*>(removed.data_ptr<int64_t>());
  if (global) {
    greedy_scan_kernel<true><<<1, 32, 0, stream>>>(n, words, mask_p, global_p, op, top_n, removed_p,
                                                   keep.data_ptr<int64_t>(), keep.size(0), count.data_ptr<int64_t>());
  } else {
    greedy_scan_kernel<false><<<1, 32, 0, stream>>>(n, words, mask_p, nullptr, op, top_n, removed_p,
                                                    keep.data_ptr<int64_t>(), keep.size(0), count.data_ptr<int64_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace rtpanoptic
