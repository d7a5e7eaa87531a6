// Mask construction (eqs. 5, 7) fused with panoptic fusion on the GPU; no [Q, H, W] float
// tensor is built.
//   1. mask kernel: one fused pass over pixels; each thread reads its pixel's box once and,
//      for every query, evaluates score * P_sem(c_j) > sigma (float32 math and threshold for
//      float16/bfloat16, as the reference); a warp ballot packs 32 pixels into one word of the
//      [Q, ceil(HW/32)] bit masks.  Each block also records, per query, its words' bit count and
//      the range of its non-zero words (MaskStats: the mask's area and [first, end) word range).
//   2. fusion kernel (one block): queries in decreasing score (stable sort on the device); the
//      skips that need no count (score < score_threshold, empty mask) are decided for a chunk of
//      queries at once; per remaining query the block counts the free area with popcounts over the
//      query's word range only (one barrier), applies the reference's rule (overlap >
//      overlap_threshold, free == 0) and paints the free bits.
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

// Per query, what mask_kernel records of its bit mask while building it, into zeroed int64 arrays
// (integer atomics: order-free, deterministic): the number of set bits, and the range [first, end)
// of the words holding them, stored as words - first and end so that both only grow from 0 by
// atomicMax (0 and 0: an empty mask).  Absent queries are never written: empty.
struct MaskStats {
  unsigned long long* area;
  unsigned long long* first_back;  // words - first
  unsigned long long* end;
};

constexpr int kMaskWarps = cuda::kThreads / 32;

// Each block (cuda::kThreads threads, kMaskWarps words) records, per query, its words' bit count and
// its first and last non-zero word into `stats`: the warps' words of a chunk of cuda::kThreads
// queries go to shared memory, then thread t sums and bounds query j0 + t's kMaskWarps words and
// adds them to the global statistics (at most 3 atomics per block and query with a non-empty word).
template <typename scalar_t>
__global__ void __launch_bounds__(cuda::kThreads)
    mask_kernel(const scalar_t* __restrict__ d, const scalar_t* __restrict__ sem, const scalar_t* __restrict__ qb,
                const int64_t* __restrict__ qcls, int64_t n_q, const int64_t* __restrict__ num_queries, int64_t n_c,
                int64_t n_p, int64_t words, Score score, double sigma, uint32_t* __restrict__ masks, MaskStats stats) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ uint32_t chunk_bits[kMaskWarps][cuda::kThreads];  // [warp][j - j0]
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
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t block_word = static_cast<int64_t>(blockIdx.x) * kMaskWarps;  // the block's first word
  const int64_t word = block_word + warp;  // = p / 32
  // the same in every thread (the barriers below): the absent queries' words are never read
  const int64_t n_present = present_queries(num_queries, n_q);
  for (int64_t j0 = 0; j0 < n_present; j0 += cuda::kThreads) {
    const int64_t j1 = min(n_present, j0 + cuda::kThreads);
    for (int64_t j = j0; j < j1; ++j) {
      bool in = false;
      const int64_t cj = qcls[j];
      if (valid && cj >= 0 && cj < n_c) {  // an out-of-range class (unchecked here) gives an empty mask
        const acc_t s =
            box_score<acc_t>(d0, d1, d2, d3, qb[4 * j], qb[4 * j + 1], qb[4 * j + 2], qb[4 * j + 3], score);
        in = s * static_cast<acc_t>(sem[cj * n_p + p]) > sig;
      }
      const unsigned bits = __ballot_sync(0xffffffffu, in);  // 0 for a word past the grid
      if (lane == 0) {
        if (word < words) masks[j * words + word] = bits;
        chunk_bits[warp][j - j0] = bits;
      }
    }
    __syncthreads();
    const int64_t j = j0 + threadIdx.x;
    if (j < j1) {
      unsigned long long area = 0;
      int lo = -1, hi = -1;  // the block's first and last warp with a bit of query j
      for (int k = 0; k < kMaskWarps; ++k) {
        const uint32_t bits = chunk_bits[k][threadIdx.x];
        if (bits != 0) {
          area += __popc(bits);
          if (lo < 0) lo = k;
          hi = k;
        }
      }
      if (hi >= 0) {
        atomicAdd(stats.area + j, area);
        atomicMax(stats.first_back + j, static_cast<unsigned long long>(words - (block_word + lo)));
        atomicMax(stats.end + j, static_cast<unsigned long long>(block_word + hi + 1));
      }
    }
    __syncthreads();  // chunk_bits is rewritten by the next chunk
  }
}

constexpr int kFusionChunk = 256;  // the queries whose entries one gathering step reads

// The fusion (one block of kFusionThreads): queries in `order`, in chunks of kFusionChunk whose
// entries (query, score, class, area, word range) the first threads gather into shared memory at
// once, deciding there the skips that need no count (absent, score < score_threshold, empty mask);
// then, serially over the chunk's queries, the free area is counted over the query's word range
// only, one block sum (one barrier) decides, and the free bits are painted.  Word w is always
// handled by thread w % kFusionThreads (each range starts at a multiple of kFusionThreads: its words
// before `first` are 0), so that thread alone reads and writes taken[w] and paints the word's
// pixels: no barrier between a query's paint and the next query's count.
template <typename scalar_t>
__global__ void __launch_bounds__(kFusionThreads)
    fusion_kernel(const uint32_t* __restrict__ masks, const int64_t* __restrict__ order,
                  const scalar_t* __restrict__ qscore, const int64_t* __restrict__ qcls, int64_t n_q,
                  const int64_t* __restrict__ num_queries, int64_t words, MaskStats stats, double score_threshold,
                  double overlap_threshold, uint32_t* __restrict__ taken, int32_t* __restrict__ seg,
                  SegmentSlots slots) {
  __shared__ int64_t s_query[kFusionChunk], s_cls[kFusionChunk], s_first[kFusionChunk], s_end[kFusionChunk];
  __shared__ unsigned long long s_area[kFusionChunk];
  __shared__ float s_score[kFusionChunk];
  const int64_t n_present = present_queries(num_queries, n_q);
  int64_t n_things = 0;  // identical in every thread
  int parity = 0;        // block_totals' buffer, identical in every thread
  for (int64_t k0 = 0; k0 < n_q; k0 += kFusionChunk) {
    const int n_k = static_cast<int>(min(n_q - k0, static_cast<int64_t>(kFusionChunk)));
    __syncthreads();  // every thread has read the previous chunk's entries
    if (static_cast<int>(threadIdx.x) < n_k) {
      const int64_t j = order[k0 + threadIdx.x];  // all Q queries sorted; the absent ones are skipped
      int64_t query = -1;                         // -1: skipped
      if (j < n_present) {  // the entry's loads, independent of each other: one round
        const double sc = static_cast<double>(static_cast<at::opmath_type<scalar_t>>(qscore[j]));
        const unsigned long long area = stats.area[j], first_back = stats.first_back[j], end = stats.end[j];
        const int64_t cls = qcls[j];
        if (!(sc < score_threshold) && area != 0) {
          query = j;
          s_cls[threadIdx.x] = cls;
          s_score[threadIdx.x] = static_cast<float>(sc);
          s_area[threadIdx.x] = area;
          s_first[threadIdx.x] = words - static_cast<int64_t>(first_back);
          s_end[threadIdx.x] = static_cast<int64_t>(end);
        }
      }
      s_query[threadIdx.x] = query;
    }
    __syncthreads();
    for (int i = 0; i < n_k; ++i) {
      const int64_t j = s_query[i];
      if (j < 0) continue;
      const int64_t start = s_first[i] / kFusionThreads * kFusionThreads + threadIdx.x, end = s_end[i];
      const uint32_t* mj = masks + j * words;
      unsigned long long free_area[1] = {0};
      for (int64_t w = start; w < end; w += kFusionThreads) free_area[0] += __popc(mj[w] & ~taken[w]);
      block_totals(free_area, parity);
      parity ^= 1;
      if (!keeps_query(s_area[i], free_area[0], overlap_threshold)) continue;
      const int32_t id = static_cast<int32_t>(n_things) + 1;
      for (int64_t w = start; w < end; w += kFusionThreads) paint_free_bits(mj[w], taken + w, seg + w * 32, id);
      if (threadIdx.x == 0) write_segment(slots, n_things, s_cls[i], j, s_score[i], static_cast<int64_t>(free_area[0]));
      ++n_things;
    }
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
      // one zero fill: the mask statistics [3, n_q] then the taken-pixel bitmap (words uint32)
      auto zeroed = at::zeros({3 * n_q + (words + 1) / 2}, opts.dtype(at::kLong));
      auto* stats_p = reinterpret_cast<unsigned long long*>(zeroed.data_ptr<int64_t>());
      const MaskStats stats{stats_p, stats_p + n_q, stats_p + 2 * n_q};
      auto* taken_p = reinterpret_cast<uint32_t*>(stats_p + 3 * n_q);
      auto* masks_p = reinterpret_cast<uint32_t*>(masks.data_ptr<int32_t>());
      mask_kernel<scalar_t><<<cuda::blocks_for(n_p), cuda::kThreads, 0, stream>>>(
          d.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), qc.data_ptr<int64_t>(), n_q,
          n_present, n_c, n_p, words, sc, sigma, masks_p, stats);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      auto order = std::get<1>(qs.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
      fusion_kernel<scalar_t><<<1, kFusionThreads, 0, stream>>>(
          masks_p, order.data_ptr<int64_t>(), qs.data_ptr<scalar_t>(), qc.data_ptr<int64_t>(), n_q, n_present, words,
          stats, score_threshold, overlap_threshold, taken_p, seg.data_ptr<int32_t>(), table.slots());
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
