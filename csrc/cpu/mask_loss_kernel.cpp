// Explicit mask loss (eqs. 16-18) on the CPU, fused: the [Q, H, W] IoU map is never built.
//   L = 1/Q * sum_j beta_j / N_j * (sum_{p not in M_j} S_jp + sum_{p in M_j} (1 - S_jp)),
// S_jp = IoU(dense[batch_index[j], :, p], query[j]) (0 where U == 0), N_j = |M_j|; a query
// with N_j = 0 contributes 0 and takes no part in the gradient (whatever its boxes or beta_j).
// Per-(query, chunk) partial sums are kept in float64 and reduced in a fixed order, so the
// result is deterministic.
// Backward: dL/dS_jp = g * beta_j / (N_j * Q) * (p in M_j ? -1 : +1), chained through
// box_score_backward, in one pass over (image, pixel chunk) tasks with per-task query buffers.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "box_math.h"
#include "checks.h"
#include "op_checks.h"

namespace rtpanoptic {
namespace {

constexpr int64_t kChunk = 4096;

void check_inputs(const char* op, const at::Tensor& dense, const at::Tensor& query, const at::Tensor& masks,
                  const at::Tensor& beta, const at::Tensor& batch_index) {
  check_mask_loss_args(op, dense, query, masks, beta, batch_index, c10::kCPU);
  for (const auto* t : {&query, &masks, &beta, &batch_index}) {
    check_same_device(op, "every argument", *t, dense);
  }
}

std::vector<int64_t> checked_batch_index(const char* op, const at::Tensor& batch_index, int64_t batch) {
  return checked_indices(op, "batch_index", batch_index, batch);
}

template <typename T>
at::Tensor forward_impl(const at::Tensor& dense, const at::Tensor& query, const at::Tensor& masks,
                        const at::Tensor& beta, const std::vector<int64_t>& bi) {
  const int64_t n_q = query.size(0), n_p = dense.size(2) * dense.size(3);
  const int64_t chunks = std::max<int64_t>(1, (n_p + kChunk - 1) / kChunk);
  std::vector<double> err(n_q * chunks, 0.0);
  std::vector<int64_t> count(n_q * chunks, 0);
  const T* d = dense.data_ptr<T>();
  const T* qb = query.data_ptr<T>();
  const bool* m = masks.data_ptr<bool>();
  at::parallel_for(0, n_q * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t j = t / chunks, p0 = (t % chunks) * kChunk, p1 = std::min(n_p, p0 + kChunk);
      const T* db = d + bi[j] * 4 * n_p;
      const bool* mj = m + j * n_p;
      const T q0 = qb[4 * j], q1 = qb[4 * j + 1], q2 = qb[4 * j + 2], q3 = qb[4 * j + 3];
      double e = 0.0;
      int64_t c = 0;
      for (int64_t p = p0; p < p1; ++p) {
        const T s = box_score<T>(db[p], db[n_p + p], db[2 * n_p + p], db[3 * n_p + p], q0, q1, q2, q3, Score::kIoU);
        e += static_cast<double>(mask_error(s, mj[p]));
        c += mj[p];
      }
      err[t] = e;
      count[t] = c;
    }
  });
  const T loss = mask_loss_mean<T>(err.data(), count.data(), beta.data_ptr<T>(), n_q, chunks);
  return at::scalar_tensor(loss, dense.options());
}

template <typename T>
void backward_impl(T g, const at::Tensor& dense, const at::Tensor& query, const at::Tensor& masks,
                   const at::Tensor& beta, const std::vector<int64_t>& bi, at::Tensor& gd_t, at::Tensor& gq_t) {
  const int64_t n_q = query.size(0), batch = dense.size(0), n_p = dense.size(2) * dense.size(3);
  const T* d = dense.data_ptr<T>();
  const T* qb = query.data_ptr<T>();
  const bool* m = masks.data_ptr<bool>();
  const T* bp = beta.data_ptr<T>();
  // per-query coefficient g * beta_j / (N_j * Q); queries with N_j = 0 take no part
  std::vector<T> coef(n_q, T(0));
  std::vector<int64_t> count(n_q, 0);
  at::parallel_for(0, n_q, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      for (int64_t p = 0; p < n_p; ++p) count[j] += m[j * n_p + p];
      if (count[j] > 0) coef[j] = g * bp[j] / static_cast<T>(count[j]) / static_cast<T>(n_q);
    }
  });
  std::vector<std::vector<int64_t>> per_image(batch);
  for (int64_t j = 0; j < n_q; ++j) {
    if (count[j] > 0) per_image[bi[j]].push_back(j);
  }
  T* gd = gd_t.data_ptr<T>();
  T* gq = gq_t.data_ptr<T>();
  // One pass over (image, pixel chunk) tasks computes both gradients: the dense gradient
  // directly, the query gradient into a per-task buffer reduced afterwards in task order
  // (deterministic, no atomics).
  const int64_t chunks = (n_p + kChunk - 1) / kChunk;
  const int64_t tasks = batch * chunks;
  std::vector<T> partial(tasks * n_q * 4, T(0));
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / chunks, p0 = (t % chunks) * kChunk, p1 = std::min(n_p, p0 + kChunk);
      if (per_image[b].empty()) continue;
      const T* db = d + b * 4 * n_p;
      T* gdb = gd + b * 4 * n_p;
      T* gq_local = partial.data() + t * n_q * 4;
      for (int64_t p = p0; p < p1; ++p) {
        T acc[4] = {0, 0, 0, 0};
        for (int64_t j : per_image[b]) {
          const T gs = m[j * n_p + p] ? -coef[j] : coef[j];
          box_score_backward<T>(gs, db[p], db[n_p + p], db[2 * n_p + p], db[3 * n_p + p], qb[4 * j], qb[4 * j + 1],
                                qb[4 * j + 2], qb[4 * j + 3], Score::kIoU, acc, gq_local + 4 * j);
        }
        for (int c = 0; c < 4; ++c) gdb[c * n_p + p] = acc[c];
      }
    }
  });
  for (int64_t t = 0; t < tasks; ++t) {
    for (int64_t k = 0; k < n_q * 4; ++k) gq[k] += partial[t * n_q * 4 + k];
  }
}

at::Tensor mask_loss_cpu(const at::Tensor& dense_boxes, const at::Tensor& query_boxes, const at::Tensor& gt_masks,
                         const at::Tensor& beta, const at::Tensor& batch_index) {
  const char* op = "mask_loss";
  check_inputs(op, dense_boxes, query_boxes, gt_masks, beta, batch_index);
  const int64_t n_q = query_boxes.size(0);
  if (n_q == 0) return at::zeros({}, dense_boxes.options());
  const auto bi = checked_batch_index(op, batch_index, dense_boxes.size(0));
  const auto acc = acc_type(dense_boxes);
  auto d = dense_boxes.to(acc).contiguous();
  auto q = query_boxes.to(acc).contiguous();
  auto b = beta.to(acc).contiguous();
  auto m = gt_masks.contiguous();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(acc, "mask_loss_cpu", [&] { out = forward_impl<scalar_t>(d, q, m, b, bi); });
  return out.to(dense_boxes.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> mask_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& dense_boxes,
                                                          const at::Tensor& query_boxes, const at::Tensor& gt_masks,
                                                          const at::Tensor& beta, const at::Tensor& batch_index) {
  const char* op = "_mask_loss_backward";
  check_inputs(op, dense_boxes, query_boxes, gt_masks, beta, batch_index);
  check_mask_loss_grad(op, grad);
  const auto acc = acc_type(dense_boxes);
  auto d = dense_boxes.to(acc).contiguous();
  auto q = query_boxes.to(acc).contiguous();
  auto gd = at::zeros_like(d);
  auto gq = at::zeros_like(q);
  if (query_boxes.size(0) > 0 && d.size(2) * d.size(3) > 0) {
    const auto bi = checked_batch_index(op, batch_index, dense_boxes.size(0));
    auto b = beta.to(acc).contiguous();
    auto m = gt_masks.contiguous();
    AT_DISPATCH_FLOATING_TYPES(acc, "mask_loss_backward_cpu", [&] {
      backward_impl<scalar_t>(grad.to(acc).item<scalar_t>(), d, q, m, b, bi, gd, gq);
    });
  }
  return {gd.to(dense_boxes.scalar_type()), gq.to(query_boxes.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtpanoptic, CPU, m) {
  m.impl("mask_loss", TORCH_FN(mask_loss_cpu));
  m.impl("_mask_loss_backward", TORCH_FN(mask_loss_backward_cpu));
}

}  // namespace rtpanoptic
