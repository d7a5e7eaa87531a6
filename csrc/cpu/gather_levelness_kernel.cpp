// Levelness gathering (eq. 14) on the CPU, fused: for each output location the level
// argmax(levelness[1:]) is found first and only that level's offsets are bilinearly
// sampled (align_corners=False, as F.interpolate) and decoded around the location's
// centre floor(out_stride/2) + i*out_stride (grid.h) -- the [B, L, 4, H, W] stack of resampled
// levels that the reference builds never exists.  argmax follows torch.argmax: first
// maximum, a NaN logit counts as the maximum.  foreground = argmax(levelness) != 0.
//
// Forward, one output row at a time: the levels of the whole row first (8 locations per step on
// the AVX2 path), then the boxes from the levels taken channels-last (the 4 offsets of a level
// pixel adjacent: one 4-lane load per tap on the AVX2 path, the 4 channels in the lanes of one
// register, 4 locations transposed into the 4 output planes), the taps of every level from
// tables built once per call.  Both paths do bilinear()'s operations in its order (no FMA:
// simd.h), so they agree with each other and with the reference bit for bit.
//
// Backward (w.r.t. the offsets only; the argmax is piecewise constant so levelness gets
// no gradient, as in the reference): the transposed bilinear interpolation of the sign-
// flipped box gradient into the chosen level, gathered at every level pixel from the outputs
// that sample it (box_math.h's bilinear_adjoint_at, shared with the CUDA kernel): rows of
// level pixels in parallel, a fixed summation order, no atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "box_math.h"
#include "checks.h"
#include "grid.h"
#include "op_checks.h"
#include "simd.h"

namespace rtpanoptic {
namespace {


// The taps of one axis (bilinear_coeffs of every output index, and the first output reaching
// every input index), computed once: the forward reads the taps, the backward both (the same
// methods as box_math.h's BilinearAxis).
template <typename T>
struct AxisW {
  int64_t out_size;
  std::vector<int64_t> i0, i1, first_out;
  std::vector<T> w0, w1;
  int64_t first(int64_t i) const { return first_out[i]; }
  void at(int64_t o, int64_t* a, int64_t* b, T* wa, T* wb) const {
    *a = i0[o];
    *b = i1[o];
    *wa = w0[o];
    *wb = w1[o];
  }
};

template <typename T>
AxisW<T> axis_coeffs(int64_t out_size, int64_t in_size) {
  AxisW<T> a;
  a.out_size = out_size;
  a.i0.resize(out_size);
  a.i1.resize(out_size);
  a.w0.resize(out_size);
  a.w1.resize(out_size);
  a.first_out.resize(in_size);
  const T scale = static_cast<T>(in_size) / static_cast<T>(out_size);
  for (int64_t o = 0; o < out_size; ++o) bilinear_coeffs<T>(o, in_size, scale, &a.i0[o], &a.i1[o], &a.w0[o], &a.w1[o]);
  for (int64_t i = 0; i < in_size; ++i) a.first_out[i] = first_output_reaching<T>(i, in_size, out_size, scale);
  return a;
}

// level index (0-based among levels) and foreground flag of one location.
template <typename T>
inline void pick_level(const T* lv, int64_t plane, int64_t n_channels, int64_t* level, bool* fg) {
  T best = lv[plane];
  int64_t best_i = 1;
  for (int64_t c = 2; c < n_channels; ++c) {
    const T v = lv[c * plane];
    if (argmax_better(v, best)) {
      best = v;
      best_i = c;
    }
  }
  *level = best_i - 1;
  // argmax over all channels is 0 iff channel 0 is not beaten by the best level logit
  *fg = argmax_better(best, lv[0]);
}

// The forward's taps along one axis for every level, level-major ([level * n + o] for output index
// o): input indices scaled to element offsets (times `step`, the level's stride along the axis) and
// weights, from bilinear_coeffs with axis_coeffs' scale (the same taps as the backward's).
template <typename T>
struct LevelTaps {
  int64_t n;
  std::vector<int64_t> i0, i1;
  std::vector<T> w0, w1;
  LevelTaps(int64_t out_size, const std::vector<int64_t>& in_sizes, const std::vector<int64_t>& steps)
      : n(out_size), i0(in_sizes.size() * out_size), i1(i0.size()), w0(i0.size()), w1(i0.size()) {
    for (size_t l = 0; l < in_sizes.size(); ++l) {
      const T scale = static_cast<T>(in_sizes[l]) / static_cast<T>(out_size);
      for (int64_t o = 0; o < out_size; ++o) {
        const int64_t k = static_cast<int64_t>(l) * out_size + o;
        bilinear_coeffs<T>(o, in_sizes[l], scale, &i0[k], &i1[k], &w0[k], &w1[k]);
        i0[k] *= steps[l];
        i1[k] *= steps[l];
      }
    }
  }
};

// One output row's view of every level: the two input rows it samples (the 4 channels of a
// pixel adjacent in memory: channels-last offsets) and their weights.
template <typename T>
struct RowTaps {
  std::vector<const T*> r0, r1;
  std::vector<T> wy0, wy1;
  explicit RowTaps(size_t levels) : r0(levels), r1(levels), wy0(levels), wy1(levels) {}
  void set(const std::vector<const T*>& base, const LevelTaps<T>& ys, int64_t y) {
    for (size_t l = 0; l < r0.size(); ++l) {
      const int64_t k = static_cast<int64_t>(l) * ys.n + y;
      r0[l] = base[l] + ys.i0[k];
      r1[l] = base[l] + ys.i1[k];
      wy0[l] = ys.w0[k];
      wy1[l] = ys.w1[k];
    }
  }
};

// Levels (0-based) and foreground flags of the w locations of one row (pick_level at each).
template <typename T>
void pick_levels_row(const T* lv, int64_t plane, int64_t nc, int64_t w, int64_t from, int32_t* level, bool* fg) {
  for (int64_t x = from; x < w; ++x) {
    int64_t l;
    pick_level(lv + x, plane, nc, &l, &fg[x]);
    level[x] = static_cast<int32_t>(l);
  }
}

// Boxes of locations [from, w) of one row (scalar): the chosen level's 4 bilinear samples,
// decoded around the cell centre (cx[x], cy).
template <typename T>
void boxes_row(const RowTaps<T>& rt, const LevelTaps<T>& xs, const int32_t* level, const T* cx, T cy, int64_t w,
               int64_t from, T* dst, int64_t plane) {
  for (int64_t x = from; x < w; ++x) {
    const int32_t l = level[x];
    const int64_t k = l * xs.n + x;
    const T *a = rt.r0[l], *b = rt.r1[l];
    const int64_t x0 = xs.i0[k], x1 = xs.i1[k];
    T v[4];
    for (int c = 0; c < 4; ++c) {
      v[c] = bilinear(a[x0 + c], a[x1 + c], b[x0 + c], b[x1 + c], rt.wy0[l], rt.wy1[l], xs.w0[k], xs.w1[k]);
    }
    dst[x] = cx[x] - v[0];
    dst[plane + x] = cy - v[1];
    dst[2 * plane + x] = cx[x] + v[2];
    dst[3 * plane + x] = cy + v[3];
  }
}

#if RTP_HAVE_AVX2_PATH
// pick_levels_row, 8 locations at a time (simd::avx2::argmax_step8 is argmax_better lane by lane;
// foreground: one more step from channel 0 with the best level logit as "class 1"); the rest scalar.
RTP_AVX2 void pick_levels_row_avx2(const float* lv, int64_t plane, int64_t nc, int64_t w, int32_t* level, bool* fg) {
  using namespace simd::avx2;
  const __m256i one = _mm256_set1_epi32(1);
  int64_t x = 0;
  for (; x + kWidth <= w; x += kWidth) {
    __m256 best = _mm256_loadu_ps(lv + plane + x);
    __m256i index = one;
    for (int64_t c = 2; c < nc; ++c) argmax_step8(best, index, _mm256_loadu_ps(lv + c * plane + x), static_cast<int32_t>(c));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(level + x), _mm256_sub_epi32(index, one));
    __m256 background = _mm256_loadu_ps(lv + x);
    __m256i any = _mm256_setzero_si256();
    argmax_step8(background, any, best, 1);
    const int bits = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(any, one)));
    for (int k = 0; k < kWidth; ++k) fg[x + k] = (bits >> k) & 1;
  }
  pick_levels_row(lv, plane, nc, w, x, level, fg);
}

// boxes_row for float, one location per step with its 4 channels in one SSE register (the same
// operations as bilinear() lane by lane, in its order; decoding: cx - v0, cy - v1 from one
// subtraction, cx + v2, cy + v3 from one addition), 4 locations transposed into the 4 planes.
RTP_AVX2 __m128 box_at(const RowTaps<float>& rt, const LevelTaps<float>& xs, int32_t l, int64_t x, float cx, float cy) {
  const int64_t k = l * xs.n + x;
  const float *a = rt.r0[l], *b = rt.r1[l];
  const int64_t x0 = xs.i0[k], x1 = xs.i1[k];
  const __m128 wx0 = _mm_set1_ps(xs.w0[k]), wx1 = _mm_set1_ps(xs.w1[k]);
  const __m128 top = _mm_add_ps(_mm_mul_ps(wx0, _mm_loadu_ps(a + x0)), _mm_mul_ps(wx1, _mm_loadu_ps(a + x1)));
  const __m128 bottom = _mm_add_ps(_mm_mul_ps(wx0, _mm_loadu_ps(b + x0)), _mm_mul_ps(wx1, _mm_loadu_ps(b + x1)));
  const __m128 v = _mm_add_ps(_mm_mul_ps(_mm_set1_ps(rt.wy0[l]), top), _mm_mul_ps(_mm_set1_ps(rt.wy1[l]), bottom));
  const __m128 centre = _mm_setr_ps(cx, cy, cx, cy);
  return _mm_shuffle_ps(_mm_sub_ps(centre, v), _mm_add_ps(centre, v), _MM_SHUFFLE(3, 2, 1, 0));
}

RTP_AVX2 void boxes_row_avx2(const RowTaps<float>& rt, const LevelTaps<float>& xs, const int32_t* level,
                             const float* cx, float cy, int64_t w, float* dst, int64_t plane) {
  int64_t x = 0;
  for (; x + 4 <= w; x += 4) {
    __m128 p0 = box_at(rt, xs, level[x], x, cx[x], cy);
    __m128 p1 = box_at(rt, xs, level[x + 1], x + 1, cx[x + 1], cy);
    __m128 p2 = box_at(rt, xs, level[x + 2], x + 2, cx[x + 2], cy);
    __m128 p3 = box_at(rt, xs, level[x + 3], x + 3, cx[x + 3], cy);
    _MM_TRANSPOSE4_PS(p0, p1, p2, p3);
    _mm_storeu_ps(dst + x, p0);
    _mm_storeu_ps(dst + plane + x, p1);
    _mm_storeu_ps(dst + 2 * plane + x, p2);
    _mm_storeu_ps(dst + 3 * plane + x, p3);
  }
  boxes_row<float>(rt, xs, level, cx, cy, w, x, dst, plane);
}
#endif

// offs: the levels channels-last ([B, 4, h_l, w_l] with stride 1 between the 4 channels).
template <typename T>
void forward_impl(const std::vector<at::Tensor>& offs, const at::Tensor& lv, int64_t out_stride, at::Tensor& boxes,
                  at::Tensor& fg) {
  const int64_t batch = lv.size(0), nc = lv.size(1), h = lv.size(2), w = lv.size(3), plane = h * w;
  std::vector<int64_t> hs, ws, row_steps, col_steps;
  for (const auto& o : offs) {
    hs.push_back(o.size(2));
    ws.push_back(o.size(3));
    row_steps.push_back(o.stride(2));
    col_steps.push_back(o.stride(3));
  }
  std::vector<const T*> level_ptr;
  for (const auto& o : offs) {
    TORCH_INTERNAL_ASSERT(o.stride(1) == 1, "gather_levelness: offsets must be channels-last here");
    level_ptr.push_back(o.data_ptr<T>());
  }
  const LevelTaps<T> ys(h, hs, row_steps), xs(w, ws, col_steps);
  std::vector<T> cx(w);
  for (int64_t x = 0; x < w; ++x) cx[x] = cell_centre<T>(x, out_stride);
  const T* lvp = lv.data_ptr<T>();
  T* bp = boxes.data_ptr<T>();
  bool* fp = fg.data_ptr<bool>();
  bool use_avx2 = false;
#if RTP_HAVE_AVX2_PATH
  use_avx2 = std::is_same_v<T, float> && simd::cpu_isa() == simd::Isa::kAvx2;
#endif
  at::parallel_for(0, batch * h, std::max<int64_t>(1, 4096 / std::max<int64_t>(w, 1)), [&](int64_t begin, int64_t end) {
    std::vector<int32_t> level(w);
    RowTaps<T> rt(offs.size());
    std::vector<const T*> base(offs.size());
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / h, y = row % h;
      for (size_t l = 0; l < offs.size(); ++l) base[l] = level_ptr[l] + b * offs[l].stride(0);
      rt.set(base, ys, y);
      const T* lrow = lvp + b * nc * plane + y * w;
      bool* frow = fp + b * plane + y * w;
      T* dst = bp + b * 4 * plane + y * w;
      const T cy = cell_centre<T>(y, out_stride);
#if RTP_HAVE_AVX2_PATH
      if constexpr (std::is_same_v<T, float>) {
        if (use_avx2) {
          pick_levels_row_avx2(lrow, plane, nc, w, level.data(), frow);
          boxes_row_avx2(rt, xs, level.data(), cx.data(), cy, w, dst, plane);
          continue;
        }
      }
#endif
      pick_levels_row(lrow, plane, nc, w, 0, level.data(), frow);
      boxes_row(rt, xs, level.data(), cx.data(), cy, w, 0, dst, plane);
    }
  });
  (void)use_avx2;
}

template <typename T>
void backward_impl(const at::Tensor& grad, const std::vector<at::Tensor>& offs, const at::Tensor& lv,
                   std::vector<at::Tensor>& grads) {
  const int64_t batch = lv.size(0), nc = lv.size(1), h = lv.size(2), w = lv.size(3), plane = h * w;
  // levels chosen at every location (computed once, shared by the 4 coordinate planes)
  std::vector<int32_t> levels(batch * plane);
  const T* lvp = lv.data_ptr<T>();
  at::parallel_for(0, batch * plane, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / plane, p = i % plane;
      int64_t level;
      bool is_fg;
      pick_level(lvp + b * nc * plane + p, plane, nc, &level, &is_fg);
      levels[i] = static_cast<int32_t>(level);
    }
  });
  const T* gp = grad.data_ptr<T>();
  for (size_t l = 0; l < offs.size(); ++l) {
    const int64_t hi = offs[l].size(2), wi = offs[l].size(3);
    const AxisW<T> ys = axis_coeffs<T>(h, hi), xs = axis_coeffs<T>(w, wi);
    T* dst = grads[l].data_ptr<T>();
    at::parallel_for(0, batch * hi, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / hi, yi = row % hi;
        for (int64_t xi = 0; xi < wi; ++xi) {
          T acc[4] = {0, 0, 0, 0};
          bilinear_adjoint_at<T, T>(gp + b * 4 * plane, plane, w, levels.data() + b * plane, static_cast<int32_t>(l),
                                    yi, xi, ys, xs, acc);
          for (int c = 0; c < 4; ++c) dst[((b * 4 + c) * hi + yi) * wi + xi] = c < 2 ? -acc[c] : acc[c];
        }
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor> gather_levelness_cpu(at::TensorList offsets, const at::Tensor& levelness,
                                                        int64_t out_stride) {
  const char* op = "gather_levelness";
  check_gather_levelness_args(op, offsets, levelness, out_stride, c10::kCPU);
  const auto acc = acc_type(levelness);
  auto lv = levelness.to(acc).contiguous();
  const int64_t batch = lv.size(0), h = lv.size(2), w = lv.size(3);
  auto boxes = at::empty({batch, 4, h, w}, lv.options());
  auto fg = at::empty({batch, h, w}, lv.options().dtype(at::kBool));
  if (batch * h * w > 0) {
    std::vector<at::Tensor> offs;
    for (const auto& o : offsets) offs.push_back(o.to(acc).contiguous(at::MemoryFormat::ChannelsLast));
    AT_DISPATCH_FLOATING_TYPES(acc, "gather_levelness_cpu", [&] { forward_impl<scalar_t>(offs, lv, out_stride, boxes, fg); });
  }
  return {boxes.to(levelness.scalar_type()), fg};
}

std::vector<at::Tensor> gather_levelness_backward_cpu(const at::Tensor& grad_boxes, at::TensorList offsets,
                                                      const at::Tensor& levelness, int64_t out_stride) {
  const char* op = "_gather_levelness_backward";
  check_gather_levelness_args(op, offsets, levelness, out_stride, c10::kCPU);
  check_gather_levelness_grad(op, grad_boxes, levelness);
  const auto acc = acc_type(levelness);
  auto lv = levelness.to(acc).contiguous();
  auto g = grad_boxes.to(acc).contiguous();
  std::vector<at::Tensor> offs, grads;
  for (const auto& o : offsets) {
    offs.push_back(o);
    grads.push_back(at::zeros(o.sizes(), lv.options()));
  }
  if (lv.size(0) * lv.size(2) * lv.size(3) > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "gather_levelness_backward_cpu", [&] { backward_impl<scalar_t>(g, offs, lv, grads); });
  }
  for (size_t i = 0; i < grads.size(); ++i) grads[i] = grads[i].to(offsets[i].scalar_type());
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CPU, m) {
  m.impl("gather_levelness", TORCH_FN(gather_levelness_cpu));
  m.impl("_gather_levelness_backward", TORCH_FN(gather_levelness_backward_cpu));
}

}  // namespace rtpanoptic
