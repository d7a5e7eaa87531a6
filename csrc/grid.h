// Cell centres of a strided grid (paper §4.1), the C++/CUDA twin of rtpanoptic/ops/grid.py
// (and of kernels/_grid.py): location i of a stride-s map sits at image coordinate
// i * s + s / 2 (floor(s/2) + i*s, s > 0).
#pragma once

#include <cstdint>

#include "box_math.h"  // RTP_HD

namespace rtpanoptic {

// The centre of cell i computed in T, one rounding per operation.  T floating: rounded as the
// reference's arange(dtype) * stride + stride // 2 (the CPU kernels).  T = int64_t: exact, for a
// caller that converts once (the CUDA kernels).  The two agree while i * stride is exact in T
// (below 2^24 for float).
template <typename T>
RTP_HD T cell_centre(int64_t i, int64_t stride) {
  return static_cast<T>(i) * static_cast<T>(stride) + static_cast<T>(stride / 2);
}

}  // namespace rtpanoptic
