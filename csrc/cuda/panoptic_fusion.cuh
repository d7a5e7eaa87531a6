// The panoptic fusion pieces shared by panoptic_from_dense and panoptic_from_dense_release on the
// GPU: the segment table the kernels fill, the block's decision on one thing query, and the stuff
// stage after the things (numbering the stuff classes, painting their free pixels).  Everything
// is in an anonymous namespace: each of the two .cu files gets its own copy, with no link clash.
#pragma once

#include <ATen/cuda/detail/IntegerDivider.cuh>

#include "cuda_common.cuh"

namespace rtpanoptic {
namespace {

constexpr int kFusionThreads = 1024;

// Device pointers to the segment table: per slot the class, the query (-1 for stuff), the score and
// the area in pixels, and the number of slots filled.
struct SegmentSlots {
  int64_t* cls;
  int64_t* query;
  float* score;
  int64_t* area;
  int64_t* count;
};

// The segment table: n_slots (Q + C) slots, unset (the kernels write slots 0 .. count-1), and the
// count, a 0-d int64 tensor holding 0.
struct SegmentTable {
  at::Tensor cls, query, score, area, count;

  SegmentTable(int64_t n_slots, const at::TensorOptions& opts)
      : cls(at::empty({n_slots}, opts.dtype(at::kLong))),
        query(at::empty({n_slots}, opts.dtype(at::kLong))),
        score(at::empty({n_slots}, opts.dtype(at::kFloat))),
        area(at::empty({n_slots}, opts.dtype(at::kLong))),
        count(at::zeros({}, opts.dtype(at::kLong))) {}

  SegmentSlots slots() {
    return {cls.data_ptr<int64_t>(), query.data_ptr<int64_t>(), score.data_ptr<float>(), area.data_ptr<int64_t>(),
            count.data_ptr<int64_t>()};
  }
};

__device__ __forceinline__ void write_segment(const SegmentSlots& slots, int64_t n, int64_t cls, int64_t query,
                                              float score, int64_t area) {
  slots.cls[n] = cls;
  slots.query[n] = query;
  slots.score[n] = score;
  slots.area[n] = area;
}

constexpr int kFusionWarps = kFusionThreads / 32;

// The block's sums of v[0 .. N) (blockDim.x == kFusionThreads, every thread calling), the same in
// every thread, after one barrier: each warp reduces by shuffles, lane 0 stores the warp's sums and
// every thread adds the kFusionWarps stored values (integers: the order does not matter).  Calls
// alternate between two buffers by `parity` (0 / 1, flipped in every thread after each call): the
// stores of call c + 2 come after call c + 1's barrier, hence after every thread's reads of call c.
template <int N>
__device__ __forceinline__ void block_totals(unsigned long long (&v)[N], int parity) {
  __shared__ unsigned long long sums[2][N][kFusionWarps];
  for (int i = 0; i < N; ++i) {
    for (int off = 16; off > 0; off /= 2) v[i] += __shfl_xor_sync(0xffffffffu, v[i], off);
  }
  if (threadIdx.x % 32 == 0) {
    for (int i = 0; i < N; ++i) sums[parity][i][threadIdx.x / 32] = v[i];
  }
  __syncthreads();
  for (int i = 0; i < N; ++i) {
    unsigned long long total = 0;
    for (int k = 0; k < kFusionWarps; ++k) total += sums[parity][i][k];
    v[i] = total;
  }
}

// The fusion's rules on one query past the score threshold, from its mask's area and free area (the
// pixels not yet taken): an empty mask, one overlapping the taken pixels by more than
// overlap_threshold (the ratio in float64) and one without a free pixel are skipped.
__device__ __forceinline__ bool keeps_query(unsigned long long area, unsigned long long free_area,
                                            double overlap_threshold) {
  if (area == 0) return false;
  return !(static_cast<double>(area - free_area) / static_cast<double>(area) > overlap_threshold || free_area == 0);
}

// Paints segment `id` into the free pixels of one 32-pixel mask word (its bits not yet in *taken),
// seg pointing at the word's first pixel, and marks them taken.
__device__ __forceinline__ void paint_free_bits(uint32_t mask_word, uint32_t* taken, int32_t* seg, int32_t id) {
  uint32_t f = mask_word & ~*taken;
  *taken |= f;
  while (f) {
    const int bit = __ffs(f) - 1;
    seg[bit] = id;
    f &= f - 1;
  }
}

// The stuff segments, numbered after the things in class order (one thread): stuff_id[c] is the
// segment id of stuff class c, 0 for a thing class or a stuff class that keeps no segment.
__global__ void stuff_number_kernel(const unsigned long long* __restrict__ stuff_area, const bool* __restrict__ is_thing,
                                    int64_t n_c, int64_t stuff_area_limit, int32_t* __restrict__ stuff_id,
                                    SegmentSlots slots) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  int64_t n = *slots.count;
  for (int64_t c = 0; c < n_c; ++c) {
    stuff_id[c] = 0;
    if (is_thing[c]) continue;
    const int64_t area = static_cast<int64_t>(stuff_area[c]);
    if (!keeps_stuff(area, stuff_area_limit)) continue;
    write_segment(slots, n, c, -1, 1.0f, area);
    ++n;
    stuff_id[c] = static_cast<int32_t>(n);
  }
  *slots.count = n;
}

// The grid cell whose semantic class an output pixel takes: the pixel itself (output == grid).
struct SameCell {
  __device__ __forceinline__ int64_t operator()(int64_t p) const { return p; }
};

// The grid cell of output pixel p of a [height, width] output, nearest-upsampled by `stride` (a power
// of two, 2^stride_log2) from a grid w cells wide: (p / width / stride) * w + (p % width) / stride,
// without a 64-bit division: p < 2^31 (the caller checks height * width), so the row and column
// come from ATen's 32-bit multiply-and-shift divider, the cell from shifts.
struct NearestCell {
  int64_t w;
  at::cuda::detail::IntDivider<unsigned int> width;
  int stride_log2;

  NearestCell(int64_t w, int64_t stride, int64_t width)
      : w(w), width(static_cast<unsigned int>(width)), stride_log2(0) {
    while ((int64_t{1} << stride_log2) < stride) ++stride_log2;
  }

  __device__ __forceinline__ int64_t operator()(int64_t p) const {
    const auto yx = width.divmod(static_cast<unsigned int>(p));
    return (static_cast<int64_t>(yx.div) >> stride_log2) * w + (static_cast<int64_t>(yx.mod) >> stride_log2);
  }
};

// Every free output pixel (seg 0) of the n_out takes its cell's stuff segment id (0 when none).
template <typename CellOf>
__global__ void stuff_paint_kernel(const int32_t* __restrict__ semantic, const int32_t* __restrict__ stuff_id,
                                   int64_t n_out, CellOf cell_of, int32_t* __restrict__ seg) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p < n_out && seg[p] == 0) seg[p] = stuff_id[semantic[cell_of(p)]];
}

// The stuff classes' free-area counts of one block: `counts` (n_c counters in dynamic shared memory,
// StuffBuffers::histogram_bytes) when the classes fit there, else straight into the global counts.
// Each block adds its non-zero counters to stuff_area once (integer sums: order-free), instead of one
// global atomicAdd per pixel onto at most n_c addresses.  Every thread of the block must call begin
// and end (barriers); count may be called by any.
struct BlockStuffCounts {
  unsigned int* counts;  // nullptr: count into stuff_area directly
  unsigned long long* stuff_area;
  int64_t n_c;

  __device__ __forceinline__ void begin() const {
    if (counts == nullptr) return;
    for (int64_t c = threadIdx.x; c < n_c; c += blockDim.x) counts[c] = 0;
    __syncthreads();
  }
  __device__ __forceinline__ void count(int32_t c) const {
    if (counts != nullptr) {
      atomicAdd(counts + c, 1u);
    } else {
      atomicAdd(stuff_area + c, 1ULL);
    }
  }
  __device__ __forceinline__ void end() const {
    if (counts == nullptr) return;
    __syncthreads();
    for (int64_t c = threadIdx.x; c < n_c; c += blockDim.x) {
      if (counts[c] != 0) atomicAdd(stuff_area + c, static_cast<unsigned long long>(counts[c]));
    }
  }
};

// The stuff stage's buffers: the semantic class of each of the n_p grid cells, and per class its
// free area (counted by the backend's kernel with integer atomics) and segment id.
struct StuffBuffers {
  at::Tensor semantic, area, id;

  StuffBuffers(int64_t n_p, int64_t n_c, const at::TensorOptions& opts)
      : semantic(at::empty({n_p}, opts.dtype(at::kInt))),
        area(at::zeros({n_c}, opts.dtype(at::kLong))),
        id(at::empty({n_c}, opts.dtype(at::kInt))) {}

  unsigned long long* area_ptr() { return reinterpret_cast<unsigned long long*>(area.data_ptr<int64_t>()); }

  // Dynamic shared memory of a counting kernel's block: one counter per class, or 0 (count in global
  // memory) when they would not fit in the default 48 KiB.
  size_t histogram_bytes() const {
    const size_t bytes = static_cast<size_t>(area.size(0)) * sizeof(unsigned int);
    return bytes <= 48 * 1024 ? bytes : 0;
  }
};

// A counting kernel's view of the counts: its dynamic shared memory holds the block's counters when
// histogram_bytes() > 0.
__device__ __forceinline__ BlockStuffCounts block_stuff_counts(unsigned long long* stuff_area, int64_t n_c,
                                                               bool in_shared) {
  extern __shared__ unsigned int stuff_counts[];
  return {in_shared ? stuff_counts : nullptr, stuff_area, n_c};
}

// After the backend has filled stuff.semantic and stuff.area: numbers the stuff segments and paints
// them into the n_out output pixels of seg.
template <typename CellOf>
void number_and_paint_stuff(cudaStream_t stream, StuffBuffers& stuff, const at::Tensor& is_thing,
                            int64_t stuff_area_limit, SegmentTable& table, int64_t n_out, CellOf cell_of,
                            at::Tensor& seg) {
  stuff_number_kernel<<<1, 1, 0, stream>>>(stuff.area_ptr(), is_thing.data_ptr<bool>(), stuff.area.size(0),
                                           stuff_area_limit, stuff.id.data_ptr<int32_t>(), table.slots());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  stuff_paint_kernel<CellOf><<<cuda::blocks_for(n_out), cuda::kThreads, 0, stream>>>(
      stuff.semantic.data_ptr<int32_t>(), stuff.id.data_ptr<int32_t>(), n_out, cell_of, seg.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace rtpanoptic
