// Mask construction (eqs. 5, 7) fused with panoptic fusion on the GPU; no [Q, H, W] float
// tensor is built.
//   1. mask kernel: one fused pass over pixels; each thread reads its pixel's box once and,
//      for every query, evaluates score * P_sem(c_j) > sigma (float32 math and threshold for
//      float16/bfloat16, as the reference); a warp ballot packs 32 pixels into one word of the
//      [Q, ceil(HW/32)] bit masks.
//   2. fusion kernel (one block): queries in decreasing score (stable sort on the device);
//      per query the block reduces area and free area with popcounts, applies the skip rules
//      of the reference (score < score_threshold, empty, overlap > overlap_threshold, free == 0)
//      and paints the free bits.
//   3. semantic argmax + per-stuff-class free-area counts (per-block histograms in shared memory,
//      then one integer atomic per block and class), a one-thread kernel
//      numbering the stuff segments, and a paint kernel.
// Nothing is copied to the host: the outputs have the fixed size of Q + C segment slots (the unused
// ones padded: class -1, query -1, score 0, area 0) and the segment count stays on the device (0-d),
// so the op can be captured in a CUDA graph.  Queries at or beyond num_queries (read on the device)
// are absent: they get no mask bits and the fusion skips them.
#include <torch/library.h>

#include "cuda_common.cuh"
#include "op_checks.h"
#include "panoptic_fusion.cuh"

namespace rtpanoptic {
namespace {

// The number of present queries: num_queries clamped to [0, n_q], or n_q without one.
__device__ __forceinline__ int64_t present_queries(const int64_t* __restrict__ num_queries, int64_t n_q) {
  return num_queries == nullptr ? n_q : min(max(*num_queries, int64_t{0}), n_q);
}

template <typename scalar_t>
__global__ void mask_kernel(const scalar_t* __restrict__ d, const scalar_t* __restrict__ sem,
                            const scalar_t* __restrict__ qb, const int64_t* __restrict__ qcls, int64_t n_q,
                            const int64_t* __restrict__ num_queries, int64_t n_c, int64_t n_p, int64_t words,
                            Score score, double sigma, uint32_t* __restrict__ masks) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool valid = p < n_p;
  acc_t d0 = 0, d1 = 0, d2 = 0, d3 = 0;
  if (valid) {
    d0 = d[p];
    d1 = d[n_p + p];
    d2 = d[2 * n_p + p];
    d3 = d[3 * n_p + p];
  }
  const acc_t sig = static_cast<acc_t>(sigma);  // not rounded to a float16/bfloat16 input's dtype
  const int lane = threadIdx.x % 32;
  const int64_t word = p / 32;
  const int64_t n_present = present_queries(num_queries, n_q);  // the absent queries' words are never read
  for (int64_t j = 0; j < n_present; ++j) {
    bool in = false;
    const int64_t cj = qcls[j];
    if (valid && cj >= 0 && cj < n_c) {  // an out-of-range class (unchecked here) gives an empty mask
      const acc_t s = box_score<acc_t>(d0, d1, d2, d3, qb[4 * j], qb[4 * j + 1], qb[4 * j + 2], qb[4 * j + 3], score);
      in = s * static_cast<acc_t>(sem[cj * n_p + p]) > sig;
    }
    const unsigned bits = __ballot_sync(0xffffffffu, in);
    if (lane == 0 && word < words) masks[j * words + word] = bits;
  }
}

template <typename scalar_t>
__global__ void fusion_kernel(const uint32_t* __restrict__ masks, const int64_t* __restrict__ order,
                              const scalar_t* __restrict__ qscore, const int64_t* __restrict__ qcls, int64_t n_q,
                              const int64_t* __restrict__ num_queries, int64_t words, double score_threshold,
                              double overlap_threshold, uint32_t* __restrict__ taken, int32_t* __restrict__ seg,
                              SegmentSlots slots) {
  int64_t n_things = 0;  // identical in every thread
  const int64_t n_present = present_queries(num_queries, n_q);
  for (int64_t k = 0; k < n_q; ++k) {
    const int64_t j = order[k];  // all Q queries sorted; the absent ones are skipped
    if (j >= n_present) continue;
    const double sc = static_cast<double>(static_cast<at::opmath_type<scalar_t>>(qscore[j]));
    if (sc < score_threshold) continue;
    const uint32_t* mj = masks + j * words;
    unsigned long long area = 0, free_area = 0;
    for (int64_t w = threadIdx.x; w < words; w += blockDim.x) {
      area += __popc(mj[w]);
      free_area += __popc(mj[w] & ~taken[w]);
    }
    free_area = kept_free_area(area, free_area, overlap_threshold);
    if (free_area == 0) continue;
    const int32_t id = static_cast<int32_t>(n_things) + 1;
    for (int64_t w = threadIdx.x; w < words; w += blockDim.x) paint_free_bits(mj[w], taken + w, seg + w * 32, id);
    if (threadIdx.x == 0) {
      write_segment(slots, n_things, qcls[j], j, static_cast<float>(sc), static_cast<int64_t>(free_area));
    }
    ++n_things;
  }
  if (threadIdx.x == 0) *slots.count = n_things;
}

template <typename scalar_t>
__global__ void stuff_count_kernel(const scalar_t* __restrict__ sem, int64_t n_c, int64_t n_p,
                                   const bool* __restrict__ is_thing, const int32_t* __restrict__ seg,
                                   int32_t* __restrict__ semantic, unsigned long long* __restrict__ stuff_area,
                                   bool shared_counts) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const BlockStuffCounts counts = block_stuff_counts(stuff_area, n_c, shared_counts);
  counts.begin();
  if (p < n_p) {
    const int32_t best_c = class_argmax<at::opmath_type<scalar_t>>(sem, n_c, n_p, p);
    semantic[p] = best_c;
    if (seg[p] == 0 && !is_thing[best_c]) counts.count(best_c);
  }
  counts.end();
}

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Result panoptic_from_dense_cuda(const at::Tensor& dense_boxes, const at::Tensor& sem_probs,
                                const at::Tensor& query_boxes, const at::Tensor& query_classes,
                                const at::Tensor& query_scores, const at::Tensor& is_thing, double sigma,
                                c10::string_view score_sv, double score_threshold, double overlap_threshold,
                                int64_t stuff_area_limit, const c10::optional<at::Tensor>& num_queries) {
  const char* op = "panoptic_from_dense";
  const std::string score(score_sv);
  check_panoptic_from_dense_args(op, dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing, score,
                                 overlap_threshold, stuff_area_limit, num_queries, c10::kCUDA);
  const int64_t h = dense_boxes.size(1), w = dense_boxes.size(2), n_p = h * w;
  const int64_t n_q = query_boxes.size(0), n_c = sem_probs.size(0);
  // query_classes range: checked by rtpanoptic.ops.panoptic_from_dense (a device check would need a
  // sync); the kernel gives a query with an out-of-range class an empty mask instead of reading out of bounds.
  c10::cuda::CUDAGuard guard(dense_boxes.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  auto d = dense_boxes.contiguous();
  auto s = sem_probs.contiguous();
  auto q = query_boxes.contiguous();
  auto qc = query_classes.to(at::kLong).contiguous();
  auto qs = query_scores.to(d.scalar_type()).contiguous();
  auto it = is_thing.contiguous();
  auto opts = d.options();
  const int64_t words = (n_p + 31) / 32;
  auto seg = at::zeros({h, w}, opts.dtype(at::kInt));
  SegmentTable table(n_q + n_c, opts);  // padded: the kernels overwrite slots 0 .. count-1
  table.cls.fill_(-1);
  table.query.fill_(-1);
  table.score.zero_();
  table.area.zero_();
  const int64_t* n_present = num_queries.has_value() ? num_queries->data_ptr<int64_t>() : nullptr;
  const Score sc = score == "iou" ? Score::kIoU : Score::kTri;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "panoptic_from_dense_cuda", [&] {
    if (n_q > 0 && n_p > 0) {
      auto masks = at::empty({n_q * words}, opts.dtype(at::kInt));
      auto taken = at::zeros({words}, opts.dtype(at::kInt));
      auto* masks_p = reinterpret_cast<uint32_t*>(masks.data_ptr<int32_t>());
      mask_kernel<scalar_t><<<cuda::blocks_for(n_p), cuda::kThreads, 0, stream>>>(
          d.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), qc.data_ptr<int64_t>(), n_q,
          n_present, n_c, n_p, words, sc, sigma, masks_p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      auto order = std::get<1>(qs.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
      fusion_kernel<scalar_t><<<1, kFusionThreads, 0, stream>>>(
          masks_p, order.data_ptr<int64_t>(), qs.data_ptr<scalar_t>(), qc.data_ptr<int64_t>(), n_q, n_present, words,
          score_threshold, overlap_threshold, reinterpret_cast<uint32_t*>(taken.data_ptr<int32_t>()),
          seg.data_ptr<int32_t>(), table.slots());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (n_p > 0) {
      StuffBuffers stuff(n_p, n_c, opts);
      const size_t hist = stuff.histogram_bytes();
      stuff_count_kernel<scalar_t><<<cuda::blocks_for(n_p), cuda::kThreads, hist, stream>>>(
          s.data_ptr<scalar_t>(), n_c, n_p, it.data_ptr<bool>(), seg.data_ptr<int32_t>(),
          stuff.semantic.data_ptr<int32_t>(), stuff.area_ptr(), hist > 0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      number_and_paint_stuff(stream, stuff, it, stuff_area_limit, table, n_p, SameCell{}, seg);
    }
  });
  return {seg, table.cls, table.query, table.score, table.area, table.count};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CUDA, m) {
  m.impl("panoptic_from_dense", TORCH_FN(panoptic_from_dense_cuda));
}

}  // namespace rtpanoptic
