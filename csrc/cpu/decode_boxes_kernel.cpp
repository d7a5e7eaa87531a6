// Dense box decoding (eq. 8) on the CPU: (l, t, r, b) at cell centres
// c = floor(stride/2) + i*stride (grid.h) -> (x - l, y - t, x + r, y + b).  The backward is a sign
// flip of the incoming gradient and is written in Python (rtpanoptic/ops/registry.py).
// NaN/inf offsets propagate into the boxes unchanged.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "grid.h"
#include "op_checks.h"

namespace rtpanoptic {
namespace {

template <typename T>
void decode_impl(const T* in, T* out, int64_t batch, int64_t h, int64_t w, int64_t stride) {
  const int64_t plane = h * w;
  at::parallel_for(0, batch * h, std::max<int64_t>(1, 16384 / std::max<int64_t>(w, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / h, y = row % h;
      const T cy = cell_centre<T>(y, stride);
      const T* src = in + b * 4 * plane + y * w;
      T* dst = out + b * 4 * plane + y * w;
      for (int64_t x = 0; x < w; ++x) {
        const T cx = cell_centre<T>(x, stride);
        dst[x] = cx - src[x];
        dst[plane + x] = cy - src[plane + x];
        dst[2 * plane + x] = cx + src[2 * plane + x];
        dst[3 * plane + x] = cy + src[3 * plane + x];
      }
    }
  });
}

at::Tensor decode_boxes_cpu(const at::Tensor& offsets, int64_t stride) {
  const char* op = "decode_boxes";
  check_decode_boxes_args(op, offsets, stride, c10::kCPU);
  const auto acc = acc_type(offsets);
  auto in = offsets.to(acc).contiguous();
  auto out = at::empty_like(in);
  if (in.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "decode_boxes_cpu", [&] {
      decode_impl<scalar_t>(in.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), in.size(0), in.size(2), in.size(3),
                            stride);
    });
  }
  return out.to(offsets.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CPU, m) {
  m.impl("decode_boxes", TORCH_FN(decode_boxes_cpu));
}

}  // namespace rtpanoptic
