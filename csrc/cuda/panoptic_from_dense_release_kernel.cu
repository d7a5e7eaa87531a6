// Release-exact masks fused with panoptic fusion on the GPU (panoptic_from_dense_release); no
// [Q, H, W] float tensor is built.  The same decisions as the CPU kernel
// (csrc/cpu/panoptic_from_dense_release_kernel.cpp), with the formulas of upsample_math.h:
//   1. soft kernel: S_j = score(B, B_j) * P_sem(c_j) on the [h, w] grid, every query ([Q, h, w],
//      in float32 for float16/bfloat16 inputs, float64 for float64);
//   2. stats kernel (a block per query): the label margin from max |S_j| over the finite cells
//      (a block max: order-free, deterministic), then the output rectangle that can hold the
//      mask: the output rows and columns whose taps touch a cell not clearly below sigma;
//   3. bits kernel: one thread per output pixel of the rectangle (a warp per 32-pixel word, packed
//      by a ballot into row-aligned words [Q, height, ceil(width / 32)]): 1 if its 4 grid
//      neighbours are all clearly above sigma, 0 if all clearly below, else the bilinear value
//      >= sigma.  The value is what ATen's CUDA kernel upsample_bilinear2d_out_frame computes --
//      fma(w0y, fma(w0x, v00, w1x * v01), w1y * fma(w0x, v10, w1x * v11)), read from the sm_90
//      machine code of torch 2.14.1's libtorch_cuda.so, in which nvcc (default -fmad=true) had
//      contracted the source's a * b + c * d -- written here with explicit fma and separately
//      rounded products (this file is compiled with -fmad=false); fma = false rounds every
//      operation instead.  At stride 1 ATen's CUDA path copies the input (sizes equal), so the
//      bit is S_j >= sigma;
//   4. fusion kernel (one block): queries by decreasing score (stable, NaN first: torch.sort on
//      the device, as the reference); per query, area and free area are popcounts over its
//      rectangle's words (walked by increments: no division per word), the reference's rules
//      decide (score < score_threshold, empty, overlap / area > overlap_threshold in float64, no
//      free pixel) after one block sum, and the free bits are painted;
//   5. stuff: the grid's semantic argmax (torch.argmax: first maximum, NaN wins), nearest-upsampled;
//      per-class free-area counts (per-block histograms in shared memory, then one integer atomic
//      per block and class), numbering, paint.
// Only the segment count is copied to the host (to size the outputs).
#include <torch/library.h>

#include <limits>

#include "cuda_common.cuh"
#include "op_checks.h"
#include "panoptic_fusion.cuh"
#include "upsample_math.h"

namespace rtpanoptic {
namespace {

constexpr int kStatsThreads = 256;
// The most 32-pixel words an output may have: every word index (and pixel index, below 32 times as
// many) of the bits and stuff kernels, threads past the end included, fits the 32-bit dividers
// (ATen's IntDivider<unsigned int> takes dividends up to INT32_MAX).
constexpr int64_t kMaxOutputWords = std::numeric_limits<int32_t>::max() / 32 - cuda::kThreads;
constexpr unsigned kFullMask = 0xffffffffu;

// min / max of v over the block (blockDim.x a multiple of 32), the same in every thread.
template <typename T, bool kMax>
__device__ T block_extreme(T v) {
  __shared__ T warp_vals[32];
  __shared__ T result;
  for (int off = 16; off > 0; off /= 2) {
    const T o = __shfl_down_sync(kFullMask, v, off);
    v = kMax ? (o > v ? o : v) : (o < v ? o : v);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = (blockDim.x + 31) / 32;
  __syncthreads();  // warp_vals / result may still be read by a previous call
  if (lane == 0) warp_vals[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    T r = warp_vals[0];
    for (int i = 1; i < n_warps; ++i) r = kMax ? (warp_vals[i] > r ? warp_vals[i] : r) : (warp_vals[i] < r ? warp_vals[i] : r);
    result = r;
  }
  __syncthreads();
  return result;
}

// 1. soft[j, p] for every query j (grid.y strides over the queries).  A query whose class is out of
// range (unchecked here: rtpanoptic.ops checks it) gets NaN cells, hence an empty mask.
template <typename scalar_t, typename acc_t>
__global__ void soft_kernel(const scalar_t* __restrict__ d, const scalar_t* __restrict__ sem,
                            const scalar_t* __restrict__ qb, const int64_t* __restrict__ qcls, int64_t n_q, int64_t n_c,
                            int64_t n_p, Score score, acc_t* __restrict__ soft) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= n_p) return;
  const acc_t d0 = d[p], d1 = d[n_p + p], d2 = d[2 * n_p + p], d3 = d[3 * n_p + p];
  for (int64_t j = blockIdx.y; j < n_q; j += gridDim.y) {
    const int64_t c = qcls[j];
    acc_t v = std::numeric_limits<acc_t>::quiet_NaN();
    if (c >= 0 && c < n_c) {
      const acc_t s = box_score<acc_t>(d0, d1, d2, d3, static_cast<acc_t>(qb[4 * j]), static_cast<acc_t>(qb[4 * j + 1]),
                                       static_cast<acc_t>(qb[4 * j + 2]), static_cast<acc_t>(qb[4 * j + 3]), score);
      v = s * static_cast<acc_t>(sem[c * n_p + p]);
    }
    soft[j * n_p + p] = v;
  }
}

// 2. per query (one block each): margin[j], and rect[j] = (ya, yb, xa, xb), the output rectangle
// [ya, yb) x [xa, xb) outside which every pixel's 4 neighbours lie clearly below sigma (empty: 0s).
template <typename acc_t>
__global__ void stats_kernel(const acc_t* __restrict__ soft, int64_t h, int64_t w, int64_t stride, int64_t height,
                             int64_t width, acc_t sigma, acc_t* __restrict__ margin, int64_t* __restrict__ rect) {
  const int64_t j = blockIdx.x, n_p = h * w;
  const acc_t* s = soft + j * n_p;
  acc_t max_abs = acc_t(0);
  for (int64_t p = threadIdx.x; p < n_p; p += blockDim.x) {
    const acc_t v = s[p];
    if (isfinite(v)) max_abs = fmax(max_abs, fabs(v));
  }
  max_abs = block_extreme<acc_t, true>(max_abs);
  const acc_t m = label_margin(max_abs);
  int64_t r0 = h, r1 = -1, c0 = w, c1 = -1;  // rows / columns holding a cell not below sigma
  for (int64_t p = threadIdx.x; p < n_p; p += blockDim.x) {
    if (cell_label(s[p], sigma, m) != kBelow) {
      const int64_t y = p / w, x = p % w;
      r0 = min(r0, y), r1 = max(r1, y), c0 = min(c0, x), c1 = max(c1, x);
    }
  }
  r0 = block_extreme<int64_t, false>(r0);
  r1 = block_extreme<int64_t, true>(r1);
  c0 = block_extreme<int64_t, false>(c0);
  c1 = block_extreme<int64_t, true>(c1);
  if (threadIdx.x != 0) return;
  margin[j] = m;
  int64_t ya = 0, yb = 0, xa = 0, xb = 0;
  if (r1 >= 0) {
    touching_outputs<acc_t>(r0, r1, height, h, stride, &ya, &yb);
    touching_outputs<acc_t>(c0, c1, width, w, stride, &xa, &xb);
    if (ya >= yb || xa >= xb) ya = yb = xa = xb = 0;
  }
  rect[4 * j] = ya, rect[4 * j + 1] = yb, rect[4 * j + 2] = xa, rect[4 * j + 3] = xb;
}

// 3. bits[j, y, x / 32], bit x % 32: the mask of query j at output pixel (y, x).  Threads map to
// (word, lane), a word being 32 consecutive pixels of one row (grid.y strides over the queries).
// The word's row and column come from a 32-bit multiply-and-shift divider by row_words (ATen's): the
// host checks that every word index fits (kMaxOutputWords).
template <typename acc_t>
__global__ void bits_kernel(const acc_t* __restrict__ soft, const acc_t* __restrict__ margin,
                            const int64_t* __restrict__ rect, int64_t n_q, int64_t h, int64_t w, int64_t stride,
                            int64_t height, int64_t width, at::cuda::detail::IntDivider<unsigned int> row_words,
                            acc_t sigma, bool fma, uint32_t* __restrict__ bits) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t word = t / 32, n_words = height * static_cast<int64_t>(row_words.divisor);
  const int lane = threadIdx.x % 32;
  const auto yx = row_words.divmod(static_cast<unsigned int>(word));
  const int64_t y = yx.div, x = static_cast<int64_t>(yx.mod) * 32 + lane;
  const bool pixel = word < n_words && x < width;
  Tap<acc_t> ty{0, 0, acc_t(1), acc_t(0)}, tx{0, 0, acc_t(1), acc_t(0)};
  if (pixel) {
    ty = bilinear_tap<acc_t>(y, h, stride);
    tx = bilinear_tap<acc_t>(x, w, stride);
  }
  const int64_t n_p = h * w;
  for (int64_t j = blockIdx.y; j < n_q; j += gridDim.y) {
    const int64_t* r = rect + 4 * j;
    bool in = false;
    if (pixel && y >= r[0] && y < r[1] && x >= r[2] && x < r[3]) {
      const acc_t* s = soft + j * n_p;
      const acc_t v00 = s[ty.i0 * w + tx.i0], v01 = s[ty.i0 * w + tx.i1];
      const acc_t v10 = s[ty.i1 * w + tx.i0], v11 = s[ty.i1 * w + tx.i1];
      if (stride == 1) {
        in = v00 >= sigma;  // ATen's CUDA path copies the input when the sizes are equal
      } else {
        const acc_t m = margin[j];
        const uint8_t l00 = cell_label(v00, sigma, m), l01 = cell_label(v01, sigma, m);
        const uint8_t l10 = cell_label(v10, sigma, m), l11 = cell_label(v11, sigma, m);
        if ((l00 | l01 | l10 | l11) == kBelow) {
          in = false;
        } else if ((l00 & l01 & l10 & l11) == kAbove) {
          in = true;
        } else {
          in = bilinear_value(v00, v01, v10, v11, ty, tx, fma) >= sigma;
        }
      }
    }
    const unsigned word_bits = __ballot_sync(kFullMask, in);
    if (lane == 0 && word < n_words) bits[j * n_words + word] = word_bits;
  }
}

// Calls fn(row, col) for the words of a rectangle of rows [ya, ...) and word columns
// [wa, wa + nw) (cells = rows * nw words) that this thread takes: its cells threadIdx.x,
// threadIdx.x + kFusionThreads, ... in row-major order, walked by increments -- the per-thread start
// and step come from two 32-bit divisions per query (nw clamped to kFusionThreads + 1, which leaves
// every quotient and remainder of a dividend <= kFusionThreads unchanged), none per word.
template <typename Fn>
__device__ __forceinline__ void for_rect_words(int64_t ya, int64_t wa, int64_t nw, int64_t cells, Fn fn) {
  const unsigned int n = static_cast<unsigned int>(min(nw, static_cast<int64_t>(kFusionThreads) + 1));
  const unsigned int step_rows = kFusionThreads / n, step_cols = kFusionThreads % n;
  int64_t row = ya + threadIdx.x / n, col = wa + threadIdx.x % n;
  for (int64_t i = threadIdx.x; i < cells; i += kFusionThreads) {
    fn(row, col);
    row += step_rows;
    col += step_cols;
    if (col >= wa + nw) {  // step_cols < nw and col < wa + nw: one wrap at most
      col -= nw;
      ++row;
    }
  }
}

// 4. fusion, one block: queries in `order`; the taken-pixel bitmap `taken` [height, row_words].  Per
// query, area and free area over its rectangle's words, one block sum (one barrier), the reference's
// rules, the paint, and a barrier (the next rectangle maps its words to other threads).
__global__ void __launch_bounds__(kFusionThreads)
    fusion_kernel(const uint32_t* __restrict__ bits, const int64_t* __restrict__ rect,
                  const int64_t* __restrict__ order, const double* __restrict__ qscore,
                  const int64_t* __restrict__ qcls, int64_t n_q, int64_t width, int64_t row_words, int64_t n_words,
                  double score_threshold, double overlap_threshold, uint32_t* __restrict__ taken,
                  int32_t* __restrict__ seg, SegmentSlots slots) {
  int64_t n_things = 0;  // identical in every thread
  int parity = 0;        // block_totals' buffer, identical in every thread
  for (int64_t k = 0; k < n_q; ++k) {
    const int64_t j = order[k];
    const double sc = qscore[j];
    if (sc < score_threshold) continue;
    const int64_t ya = rect[4 * j], yb = rect[4 * j + 1];
    const int64_t wa = rect[4 * j + 2] / 32, wb = (rect[4 * j + 3] + 31) / 32, nw = wb - wa;
    const int64_t cells = (yb - ya) * nw;  // words of the rectangle
    if (cells <= 0) continue;
    const uint32_t* mj = bits + j * n_words;
    unsigned long long counts[2] = {0, 0};  // area, free area
    for_rect_words(ya, wa, nw, cells, [&](int64_t row, int64_t col) {
      const int64_t at = row * row_words + col;
      const uint32_t m = mj[at];
      counts[0] += __popc(m);
      counts[1] += __popc(m & ~taken[at]);
    });
    block_totals(counts, parity);
    parity ^= 1;
    if (!keeps_query(counts[0], counts[1], overlap_threshold)) continue;
    const int32_t id = static_cast<int32_t>(n_things) + 1;
    for_rect_words(ya, wa, nw, cells, [&](int64_t row, int64_t col) {
      const int64_t at = row * row_words + col;
      paint_free_bits(mj[at], taken + at, seg + row * width + col * 32, id);
    });
    __syncthreads();  // the next query's rectangle maps its words to other threads
    if (threadIdx.x == 0) {
      write_segment(slots, n_things, qcls[j], j, static_cast<float>(sc), static_cast<int64_t>(counts[1]));
    }
    ++n_things;
  }
  if (threadIdx.x == 0) *slots.count = n_things;
}

// 5. stuff: semantic argmax per grid cell, free-area counts of the stuff classes over the output.
template <typename scalar_t>
__global__ void semantic_kernel(const scalar_t* __restrict__ sem, int64_t n_c, int64_t n_p,
                                int32_t* __restrict__ semantic) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p < n_p) semantic[p] = class_argmax<at::opmath_type<scalar_t>>(sem, n_c, n_p, p);
}

__global__ void stuff_count_kernel(const int32_t* __restrict__ semantic, const bool* __restrict__ is_thing,
                                   const int32_t* __restrict__ seg, int64_t n_out, NearestCell cell_of,
                                   unsigned long long* __restrict__ stuff_area, int64_t n_c, bool shared_counts) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const BlockStuffCounts counts = block_stuff_counts(stuff_area, n_c, shared_counts);
  counts.begin();
  if (p < n_out) {
    const int32_t c = semantic[cell_of(p)];
    if (seg[p] == 0 && !is_thing[c]) counts.count(c);  // integer: order-free
  }
  counts.end();
}

// At most this many blocks along grid.y (CUDA's limit is 65535); the kernels stride over the rest.
inline unsigned int query_blocks(int64_t n_q) { return static_cast<unsigned int>(std::min<int64_t>(n_q, 65535)); }

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Result panoptic_from_dense_release_cuda(const at::Tensor& dense_boxes, const at::Tensor& sem_probs,
                                        const at::Tensor& query_boxes, const at::Tensor& query_classes,
                                        const at::Tensor& query_scores, const at::Tensor& is_thing, int64_t stride,
                                        int64_t height, int64_t width, double sigma, c10::string_view score_sv,
                                        double score_threshold, double overlap_threshold, int64_t stuff_area_limit,
                                        bool fma) {
  const char* op = "panoptic_from_dense_release";
  const std::string score(score_sv);
  check_panoptic_from_dense_release_args(op, dense_boxes, sem_probs, query_boxes, query_classes, query_scores,
                                         is_thing, stride, height, width, score, overlap_threshold, stuff_area_limit,
                                         c10::kCUDA);
  // query_classes range: checked by rtpanoptic.ops.panoptic_from_dense_release (a device check
  // would need a sync); a query with an out-of-range class gets an empty mask instead.
  c10::cuda::CUDAGuard guard(dense_boxes.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t h = dense_boxes.size(1), w = dense_boxes.size(2), n_p = h * w;
  const int64_t n_q = query_boxes.size(0), n_c = sem_probs.size(0), n_out = height * width;
  const int64_t row_words = (width + 31) / 32, n_words = height * row_words;
  TORCH_CHECK(n_words <= kMaxOutputWords, op, ": the CUDA kernel supports outputs of at most ", kMaxOutputWords * 32,
              " pixels counted in whole 32-pixel row words (height x ceil(width / 32) x 32), got ", n_words * 32);
  auto d = dense_boxes.contiguous();
  auto s = sem_probs.contiguous();
  auto q = query_boxes.contiguous();
  auto qc = query_classes.to(at::kLong).contiguous();
  auto qs = query_scores.to(at::kDouble).contiguous();  // exact for every float dtype
  auto it = is_thing.contiguous();
  auto opts = d.options();
  auto seg = at::zeros({height, width}, opts.dtype(at::kInt));
  SegmentTable table(n_q + n_c, opts);
  const Score sc = score == "iou" ? Score::kIoU : Score::kTri;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "panoptic_from_dense_release_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t sig = static_cast<acc_t>(sigma);  // the reference compares its acc_t planes with sigma
    if (n_q > 0 && n_out > 0) {
      auto soft = at::empty({n_q, n_p}, opts.dtype(c10::CppTypeToScalarType<acc_t>::value));
      auto margin = at::empty({n_q}, soft.options());
      auto rect = at::empty({n_q, 4}, opts.dtype(at::kLong));
      auto bits = at::empty({n_q, n_words}, opts.dtype(at::kInt));
      auto taken = at::zeros({n_words}, opts.dtype(at::kInt));
      auto* bits_p = reinterpret_cast<uint32_t*>(bits.data_ptr<int32_t>());
      soft_kernel<scalar_t, acc_t><<<dim3(cuda::blocks_for(n_p), query_blocks(n_q)), cuda::kThreads, 0, stream>>>(
          d.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), qc.data_ptr<int64_t>(), n_q, n_c, n_p,
          sc, soft.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      stats_kernel<acc_t><<<static_cast<unsigned int>(n_q), kStatsThreads, 0, stream>>>(
          soft.data_ptr<acc_t>(), h, w, stride, height, width, sig, margin.data_ptr<acc_t>(), rect.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      bits_kernel<acc_t><<<dim3(cuda::blocks_for(n_words * 32), query_blocks(n_q)), cuda::kThreads, 0, stream>>>(
          soft.data_ptr<acc_t>(), margin.data_ptr<acc_t>(), rect.data_ptr<int64_t>(), n_q, h, w, stride, height, width,
          at::cuda::detail::IntDivider<unsigned int>(static_cast<unsigned int>(row_words)), sig, fma, bits_p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      // fusion order: the reference's torch.sort(query_scores, descending=True, stable=True)
      auto order = std::get<1>(query_scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
      fusion_kernel<<<1, kFusionThreads, 0, stream>>>(
          bits_p, rect.data_ptr<int64_t>(), order.data_ptr<int64_t>(), qs.data_ptr<double>(), qc.data_ptr<int64_t>(),
          n_q, width, row_words, n_words, score_threshold, overlap_threshold,
          reinterpret_cast<uint32_t*>(taken.data_ptr<int32_t>()), seg.data_ptr<int32_t>(), table.slots());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (n_out > 0) {
      StuffBuffers stuff(n_p, n_c, opts);
      const NearestCell cell_of{w, stride, width};
      semantic_kernel<scalar_t><<<cuda::blocks_for(n_p), cuda::kThreads, 0, stream>>>(
          s.data_ptr<scalar_t>(), n_c, n_p, stuff.semantic.data_ptr<int32_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const size_t hist = stuff.histogram_bytes();
      stuff_count_kernel<<<cuda::blocks_for(n_out), cuda::kThreads, hist, stream>>>(
          stuff.semantic.data_ptr<int32_t>(), it.data_ptr<bool>(), seg.data_ptr<int32_t>(), n_out, cell_of,
          stuff.area_ptr(), n_c, hist > 0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      number_and_paint_stuff(stream, stuff, it, stuff_area_limit, table, n_out, cell_of, seg);
    }
  });
  const int64_t n = table.count.item<int64_t>();  // the one host sync: output sizes
  return {seg, table.cls.narrow(0, 0, n).clone(), table.query.narrow(0, 0, n).clone(),
          table.score.narrow(0, 0, n).clone(), table.area.narrow(0, 0, n).clone()};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CUDA, m) {
  m.impl("panoptic_from_dense_release", TORCH_FN(panoptic_from_dense_release_cuda));
}

}  // namespace rtpanoptic
