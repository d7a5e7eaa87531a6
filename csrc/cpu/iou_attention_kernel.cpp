// Box self-attention (eq. 6) on the CPU: out[q, y, x] = score(dense[:, y, x], query[q]).
// "iou": I/U, 0 (and gradient 0) where U == 0; "tri": (I+1)/(U+1) - (C-U)/C, C = enclosing
// area + 1e-7.  See box_math.h for the formulas, their derivatives and NaN behaviour.
// Forward: parallel over (query, pixel-range) chunks, contiguous writes.  Backward: one
// pass over pixel chunks; no atomics, deterministic.  A zero upstream gradient is not skipped:
// it still multiplies the derivative, so NaN coordinates give NaN gradients as in the reference.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "box_math.h"
#include "checks.h"
#include "op_checks.h"

namespace rtpanoptic {
namespace {

constexpr int64_t kChunk = 2048;

void check_inputs(const char* op, const at::Tensor& dense, const at::Tensor& query, const std::string& score) {
  check_iou_attention_args(op, dense, query, c10::kCPU);
  check_device(op, "query_boxes", query, c10::kCPU);
  check_score(op, score);
}

// The score is a template argument so that the inner loop has no branch on it and the
// compiler can vectorise it.
template <typename T, Score S>
void forward_impl(const T* d, const T* qb, int64_t n_q, int64_t n_p, T* out) {
  const int64_t chunks = (n_p + kChunk - 1) / kChunk;
  at::parallel_for(0, n_q * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t q = t / chunks, p0 = (t % chunks) * kChunk, p1 = std::min(n_p, p0 + kChunk);
      const T q0 = qb[4 * q], q1 = qb[4 * q + 1], q2 = qb[4 * q + 2], q3 = qb[4 * q + 3];
      T* __restrict__ o = out + q * n_p;
      const T* __restrict__ x1 = d;
      const T* __restrict__ y1 = d + n_p;
      const T* __restrict__ x2 = d + 2 * n_p;
      const T* __restrict__ y2 = d + 3 * n_p;
      for (int64_t p = p0; p < p1; ++p) {
        o[p] = box_score<T>(x1[p], y1[p], x2[p], y2[p], q0, q1, q2, q3, S);
      }
    }
  });
}

// One pass over pixel chunks computes both gradients: the dense gradient directly, the
// query gradient into per-chunk buffers reduced afterwards in chunk order (deterministic).
template <typename T>
void backward_impl(const T* g, const T* d, const T* qb, int64_t n_q, int64_t n_p, Score score, T* gd, T* gq) {
  const int64_t chunks = (n_p + kChunk - 1) / kChunk;
  std::vector<T> partial(chunks * n_q * 4, T(0));
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      T* gq_local = partial.data() + t * n_q * 4;
      for (int64_t p = t * kChunk; p < std::min(n_p, (t + 1) * kChunk); ++p) {
        T acc[4] = {0, 0, 0, 0};
        const T d0 = d[p], d1 = d[n_p + p], d2 = d[2 * n_p + p], d3 = d[3 * n_p + p];
        for (int64_t q = 0; q < n_q; ++q) {
          box_score_backward<T>(g[q * n_p + p], d0, d1, d2, d3, qb[4 * q], qb[4 * q + 1], qb[4 * q + 2],
                                qb[4 * q + 3], score, acc, gq_local + 4 * q);
        }
        for (int c = 0; c < 4; ++c) gd[c * n_p + p] = acc[c];
      }
    }
  });
  for (int64_t t = 0; t < chunks; ++t) {
    for (int64_t k = 0; k < n_q * 4; ++k) gq[k] += partial[t * n_q * 4 + k];
  }
}

at::Tensor iou_attention_cpu(const at::Tensor& dense_boxes, const at::Tensor& query_boxes, c10::string_view score_sv) {
  const char* op = "iou_attention";
  const std::string score(score_sv);
  check_inputs(op, dense_boxes, query_boxes, score);
  const auto acc = acc_type(dense_boxes);
  auto d = dense_boxes.to(acc).contiguous();
  auto q = query_boxes.to(acc).contiguous();
  const int64_t n_q = q.size(0), h = d.size(1), w = d.size(2);
  auto out = at::empty({n_q, h, w}, d.options());
  if (n_q * h * w > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "iou_attention_cpu", [&] {
      if (score == "iou") {
        forward_impl<scalar_t, Score::kIoU>(d.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), n_q, h * w,
                                            out.data_ptr<scalar_t>());
      } else {
        forward_impl<scalar_t, Score::kTri>(d.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), n_q, h * w,
                                            out.data_ptr<scalar_t>());
      }
    });
  }
  return out.to(dense_boxes.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> iou_attention_backward_cpu(const at::Tensor& grad, const at::Tensor& dense_boxes,
                                                              const at::Tensor& query_boxes, c10::string_view score_sv) {
  const char* op = "_iou_attention_backward";
  const std::string score(score_sv);
  check_inputs(op, dense_boxes, query_boxes, score);
  const int64_t n_q = query_boxes.size(0), h = dense_boxes.size(1), w = dense_boxes.size(2);
  check_iou_attention_grad(op, grad, dense_boxes, query_boxes);
  const auto acc = acc_type(dense_boxes);
  auto d = dense_boxes.to(acc).contiguous();
  auto q = query_boxes.to(acc).contiguous();
  auto g = grad.to(acc).contiguous();
  auto gd = at::zeros_like(d);
  auto gq = at::zeros_like(q);
  if (n_q * h * w > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "iou_attention_backward_cpu", [&] {
      backward_impl<scalar_t>(g.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), n_q, h * w,
                              score == "iou" ? Score::kIoU : Score::kTri, gd.data_ptr<scalar_t>(),
                              gq.data_ptr<scalar_t>());
    });
  }
  return {gd.to(dense_boxes.scalar_type()), gq.to(query_boxes.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CPU, m) {
  m.impl("iou_attention", TORCH_FN(iou_attention_cpu));
  m.impl("_iou_attention_backward", TORCH_FN(iou_attention_backward_cpu));
}

}  // namespace rtpanoptic
