// Levelness gathering (eq. 14) on the CPU, fused: for each output location the level
// argmax(levelness[1:]) is found first and only that level's offsets are bilinearly
// sampled (align_corners=False, as F.interpolate) and decoded around the location's
// centre floor(out_stride/2) + i*out_stride (grid.h) -- the [B, L, 4, H, W] stack of resampled
// levels that the reference builds never exists.  argmax follows torch.argmax: first
// maximum, a NaN logit counts as the maximum.  foreground = argmax(levelness) != 0.
//
// Backward (w.r.t. the offsets only; the argmax is piecewise constant so levelness gets
// no gradient, as in the reference): the transposed bilinear interpolation of the sign-
// flipped box gradient into the chosen level, gathered at every level pixel from the outputs
// that sample it (box_math.h's bilinear_adjoint_at, shared with the CUDA kernel): rows of
// level pixels in parallel, a fixed summation order, no atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "box_math.h"
#include "checks.h"
#include "grid.h"
#include "op_checks.h"

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

template <typename T>
void forward_impl(const std::vector<at::Tensor>& offs, const at::Tensor& lv, int64_t out_stride, at::Tensor& boxes,
                  at::Tensor& fg) {
  const int64_t batch = lv.size(0), nc = lv.size(1), h = lv.size(2), w = lv.size(3), plane = h * w;
  std::vector<AxisW<T>> ys, xs;
  std::vector<const T*> ptr;
  for (const auto& o : offs) {
    ys.push_back(axis_coeffs<T>(h, o.size(2)));
    xs.push_back(axis_coeffs<T>(w, o.size(3)));
    ptr.push_back(o.data_ptr<T>());
  }
  const T* lvp = lv.data_ptr<T>();
  T* bp = boxes.data_ptr<T>();
  bool* fp = fg.data_ptr<bool>();
  at::parallel_for(0, batch * h, std::max<int64_t>(1, 4096 / std::max<int64_t>(w, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / h, y = row % h;
      const T cy = cell_centre<T>(y, out_stride);
      for (int64_t x = 0; x < w; ++x) {
        const int64_t p = y * w + x;
        int64_t level;
        bool is_fg;
        pick_level(lvp + b * nc * plane + p, plane, nc, &level, &is_fg);
        fp[b * plane + p] = is_fg;
        const auto& ay = ys[level];
        const auto& ax = xs[level];
        const int64_t hi = offs[level].size(2), wi = offs[level].size(3);
        const T* src = ptr[level] + b * 4 * hi * wi;
        const int64_t y0 = ay.i0[y], y1 = ay.i1[y], x0 = ax.i0[x], x1 = ax.i1[x];
        const T wy0 = ay.w0[y], wy1 = ay.w1[y], wx0 = ax.w0[x], wx1 = ax.w1[x];
        T v[4];
        for (int c = 0; c < 4; ++c) {
          const T* s = src + c * hi * wi;
          v[c] = bilinear(s[y0 * wi + x0], s[y0 * wi + x1], s[y1 * wi + x0], s[y1 * wi + x1], wy0, wy1, wx0, wx1);
        }
        const T cx = cell_centre<T>(x, out_stride);
        T* dst = bp + b * 4 * plane + p;
        dst[0] = cx - v[0];
        dst[plane] = cy - v[1];
        dst[2 * plane] = cx + v[2];
        dst[3 * plane] = cy + v[3];
      }
    }
  });
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
    for (const auto& o : offsets) offs.push_back(o.to(acc).contiguous());
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
