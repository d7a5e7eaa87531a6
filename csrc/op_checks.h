// Per-op argument checks shared by the CPU (csrc/cpu) and CUDA (csrc/cuda) kernels: shapes,
// dtypes and scalar arguments (wording: checks.h).  `device` is the kernel's device type, which
// the op's primary tensor must have.  The backends check the other tensors' devices and their
// own size limits themselves.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "checks.h"

namespace rtpanoptic {

// nms / batched_nms: boxes [N, 4] float, scores [N] of boxes' dtype, idxs [N] integer (batched_nms).
inline void check_nms_args(const char* op, const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs) {
  check_boxes(op, "boxes", boxes);
  check_float(op, "scores", scores);
  check_same_length(op, "scores", scores, "boxes", boxes);
  check_same_dtype(op, "scores", scores, "boxes", boxes);
  if (idxs != nullptr) {
    check_integer(op, "idxs", *idxs);
    check_same_length(op, "idxs", *idxs, "boxes", boxes);
  }
}

// iou_attention / _iou_attention_backward: dense_boxes [4, H, W], query_boxes [Q, 4].
inline void check_iou_attention_args(const char* op, const at::Tensor& dense, const at::Tensor& query,
                                     c10::DeviceType device) {
  TORCH_CHECK(dense.dim() == 3 && dense.size(0) == 4, op, ": dense_boxes must have shape [4, H, W], got ",
              dense.sizes());
  check_float(op, "dense_boxes", dense);
  check_boxes(op, "query_boxes", query);
  check_same_dtype(op, "query_boxes", query, "dense_boxes", dense);
  check_device(op, "dense_boxes", dense, device);
}

// _iou_attention_backward: grad [Q, H, W] of the forward output.
inline void check_iou_attention_grad(const char* op, const at::Tensor& grad, const at::Tensor& dense,
                                     const at::Tensor& query) {
  const int64_t n_q = query.size(0), h = dense.size(1), w = dense.size(2);
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == n_q && grad.size(1) == h && grad.size(2) == w, op,
              ": grad must have shape [Q=", n_q, ", H=", h, ", W=", w, "], got ", grad.sizes());
}

// mask_loss / _mask_loss_backward: dense_boxes [B, 4, H, W], query_boxes [Q, 4], gt_masks bool
// [Q, H, W], beta [Q] float, batch_index [Q] int64/int32.  The other tensors' devices are the
// backend's to check; batch_index's range too (the CUDA kernel cannot without a sync).
inline void check_mask_loss_args(const char* op, const at::Tensor& dense, const at::Tensor& query,
                                 const at::Tensor& masks, const at::Tensor& beta, const at::Tensor& batch_index,
                                 c10::DeviceType device) {
  TORCH_CHECK(dense.dim() == 4 && dense.size(1) == 4, op, ": dense_boxes must have shape [B, 4, H, W], got ",
              dense.sizes());
  check_float(op, "dense_boxes", dense);
  check_device(op, "dense_boxes", dense, device);
  check_boxes(op, "query_boxes", query);
  check_same_dtype(op, "query_boxes", query, "dense_boxes", dense);
  const int64_t q = query.size(0);
  TORCH_CHECK(masks.dim() == 3 && masks.size(0) == q && masks.size(1) == dense.size(2) && masks.size(2) == dense.size(3),
              op, ": gt_masks must have shape [Q=", q, ", H=", dense.size(2), ", W=", dense.size(3), "], got ",
              masks.sizes());
  TORCH_CHECK(masks.scalar_type() == at::kBool, op, ": gt_masks must be a bool tensor, got ", masks.scalar_type());
  TORCH_CHECK(beta.dim() == 1 && beta.size(0) == q, op, ": beta must have shape [Q=", q, "], got ", beta.sizes());
  check_float(op, "beta", beta);
  TORCH_CHECK(batch_index.dim() == 1 && batch_index.size(0) == q, op, ": batch_index must have shape [Q=", q,
              "], got ", batch_index.sizes());
  TORCH_CHECK(batch_index.scalar_type() == at::kLong || batch_index.scalar_type() == at::kInt, op,
              ": batch_index must be int64 or int32, got ", batch_index.scalar_type());
}

// _mask_loss_backward: the incoming gradient of the scalar loss.
inline void check_mask_loss_grad(const char* op, const at::Tensor& grad) {
  TORCH_CHECK(grad.numel() == 1, op, ": grad must be a scalar, got shape ", grad.sizes());
}

// gather_levelness / _gather_levelness_backward: levelness [B, L+1, H, W] float, L offsets
// [B, 4, h_i, w_i] of levelness' dtype and device (non-empty where the levelness grid is),
// out_stride > 0.
inline void check_gather_levelness_args(const char* op, const at::TensorList& offsets, const at::Tensor& levelness,
                                        int64_t out_stride, c10::DeviceType device) {
  TORCH_CHECK(levelness.dim() == 4, op, ": levelness must have shape [B, L+1, H, W], got ", levelness.sizes());
  check_float(op, "levelness", levelness);
  check_device(op, "levelness", levelness, device);
  const int64_t n_levels = levelness.size(1) - 1;
  TORCH_CHECK(n_levels >= 1 && static_cast<int64_t>(offsets.size()) == n_levels, op, ": levelness has ",
              levelness.size(1), " channels, so offsets must hold ", n_levels, " tensors, got ", offsets.size());
  TORCH_CHECK(out_stride > 0, op, ": out_stride must be a positive int, got ", out_stride);
  const bool nonempty = levelness.size(0) > 0 && levelness.size(2) > 0 && levelness.size(3) > 0;
  for (size_t i = 0; i < offsets.size(); ++i) {
    const auto& o = offsets[i];
    TORCH_CHECK(o.dim() == 4 && o.size(0) == levelness.size(0) && o.size(1) == 4, op, ": offsets[", i,
                "] must have shape [B=", levelness.size(0), ", 4, h, w], got ", o.sizes());
    TORCH_CHECK(o.scalar_type() == levelness.scalar_type(), op, ": offsets[", i, "] must have the dtype of levelness (",
                levelness.scalar_type(), "), got ", o.scalar_type());
    TORCH_CHECK(o.device() == levelness.device(), op, ": offsets[", i, "] must be on ", levelness.device(), ", got ",
                o.device());
    TORCH_CHECK(!nonempty || (o.size(2) > 0 && o.size(3) > 0), op, ": offsets[", i, "] is empty ", o.sizes(),
                " but the levelness grid is not");
  }
}

// _gather_levelness_backward: grad_boxes [B, 4, H, W] of the forward's boxes.
inline void check_gather_levelness_grad(const char* op, const at::Tensor& grad_boxes, const at::Tensor& levelness) {
  TORCH_CHECK(grad_boxes.dim() == 4 && grad_boxes.size(0) == levelness.size(0) && grad_boxes.size(1) == 4 &&
                  grad_boxes.size(2) == levelness.size(2) && grad_boxes.size(3) == levelness.size(3),
              op, ": grad_boxes must have shape [B, 4, H, W] of levelness, got ", grad_boxes.sizes());
}

// panoptic_from_dense: dense_boxes [4, H, W] float, sem_probs [C>=1, H, W], query_boxes [Q, 4]
// (both of dense_boxes' dtype), query_classes [Q] integer, query_scores [Q] float, is_thing [C]
// bool.  The scalar arguments (score, overlap_threshold, stuff_area_limit) are checked by
// check_panoptic_from_dense_scalars, after the backend's device checks.
inline void check_panoptic_from_dense_args(const char* op, const at::Tensor& dense_boxes, const at::Tensor& sem_probs,
                                           const at::Tensor& query_boxes, const at::Tensor& query_classes,
                                           const at::Tensor& query_scores, const at::Tensor& is_thing,
                                           c10::DeviceType device) {
  TORCH_CHECK(dense_boxes.dim() == 3 && dense_boxes.size(0) == 4, op,
              ": dense_boxes must have shape [4, H, W], got ", dense_boxes.sizes());
  check_float(op, "dense_boxes", dense_boxes);
  check_device(op, "dense_boxes", dense_boxes, device);
  const int64_t h = dense_boxes.size(1), w = dense_boxes.size(2);
  TORCH_CHECK(sem_probs.dim() == 3 && sem_probs.size(0) >= 1 && sem_probs.size(1) == h && sem_probs.size(2) == w, op,
              ": sem_probs must have shape [C>=1, H=", h, ", W=", w, "], got ", sem_probs.sizes());
  check_same_dtype(op, "sem_probs", sem_probs, "dense_boxes", dense_boxes);
  check_boxes(op, "query_boxes", query_boxes);
  check_same_dtype(op, "query_boxes", query_boxes, "dense_boxes", dense_boxes);
  const int64_t n_q = query_boxes.size(0), n_c = sem_probs.size(0);
  TORCH_CHECK(query_classes.dim() == 1 && query_classes.size(0) == n_q, op, ": query_classes must have shape [Q=",
              n_q, "], got ", query_classes.sizes());
  TORCH_CHECK(!at::isFloatingType(query_classes.scalar_type()) && query_classes.scalar_type() != at::kBool, op,
              ": query_classes must be an integer tensor, got ", query_classes.scalar_type());
  TORCH_CHECK(query_scores.dim() == 1 && query_scores.size(0) == n_q, op, ": query_scores must have shape [Q=", n_q,
              "], got ", query_scores.sizes());
  check_float(op, "query_scores", query_scores);
  TORCH_CHECK(is_thing.dim() == 1 && is_thing.size(0) == n_c && is_thing.scalar_type() == at::kBool, op,
              ": is_thing must be a bool tensor of shape [C=", n_c, "], got ", is_thing.scalar_type(), " ",
              is_thing.sizes());
}

// panoptic_from_dense: num_queries, when given, a 0-d int64 tensor on dense_boxes' device (its value,
// clamped to [0, Q], is read by the kernels: on the host by the CPU kernel, on the device by the CUDA one).
inline void check_num_queries(const char* op, const c10::optional<at::Tensor>& num_queries,
                              const at::Tensor& dense_boxes) {
  if (!num_queries.has_value()) return;
  const at::Tensor& n = *num_queries;
  TORCH_CHECK(n.dim() == 0 && n.scalar_type() == at::kLong, op, ": num_queries must be a 0-d int64 tensor, got ",
              dtype_name(n.scalar_type()), " of shape ", n.sizes());
  check_same_device(op, "num_queries", n, dense_boxes);
}

inline void check_panoptic_from_dense_scalars(const char* op, const std::string& score, double overlap_threshold,
                                              int64_t stuff_area_limit) {
  check_score(op, score);
  TORCH_CHECK(overlap_threshold >= 0 && overlap_threshold <= 1, op, ": overlap_threshold must lie in [0, 1], got ",
              overlap_threshold);
  TORCH_CHECK(stuff_area_limit >= 0, op, ": stuff_area_limit must be >= 0, got ", stuff_area_limit);
}

// panoptic_from_dense_release: stride a power of two, output [height, width] inside the upsampled grid.
inline void check_release_size(const char* op, const at::Tensor& dense_boxes, int64_t stride, int64_t height,
                               int64_t width) {
  TORCH_CHECK(stride >= 1 && (stride & (stride - 1)) == 0, op, ": stride must be a power of two, got ", stride);
  const int64_t h = dense_boxes.size(1), w = dense_boxes.size(2);
  TORCH_CHECK(height >= 0 && height <= h * stride && width >= 0 && width <= w * stride, op, ": size must lie in [0, ",
              h * stride, "] x [0, ", w * stride, "], got (", height, ", ", width, ")");
}

}  // namespace rtpanoptic
