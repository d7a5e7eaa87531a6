// Per-op argument checks shared by the CPU (csrc/cpu) and CUDA (csrc/cuda) kernels: shapes,
// dtypes and scalar arguments (wording: checks.h).  `device` is the kernel's device type, which
// the op's primary tensor must have.  The backends check the other tensors' devices (but for
// panoptic_from_dense(_release)'s) and their own size limits themselves.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>

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

// decode_boxes: offsets [B, 4, h, w] float, stride > 0.
inline void check_decode_boxes_args(const char* op, const at::Tensor& offsets, int64_t stride,
                                    c10::DeviceType device) {
  check_float(op, "offsets", offsets);
  check_shape(op, "offsets", offsets, {-1, 4, -1, -1});
  check_device(op, "offsets", offsets, device);
  check_positive(op, "stride", stride);
}

// iou_attention / _iou_attention_backward: dense_boxes [4, H, W], query_boxes [Q, 4].
inline void check_iou_attention_args(const char* op, const at::Tensor& dense, const at::Tensor& query,
                                     c10::DeviceType device) {
  check_float(op, "dense_boxes", dense);
  check_shape(op, "dense_boxes", dense, {4, -1, -1});
  check_boxes(op, "query_boxes", query);
  check_same_dtype(op, "query_boxes", query, "dense_boxes", dense);
  check_device(op, "dense_boxes", dense, device);
}

// _iou_attention_backward: grad [Q, H, W] of the forward output.
inline void check_iou_attention_grad(const char* op, const at::Tensor& grad, const at::Tensor& dense,
                                     const at::Tensor& query) {
  check_shape(op, "grad", grad, {query.size(0), dense.size(1), dense.size(2)});
}

// mask_loss / _mask_loss_backward: dense_boxes [B, 4, H, W], query_boxes [Q, 4], gt_masks bool
// [Q, H, W], beta [Q] float, batch_index [Q] int64/int32.  The other tensors' devices are the
// backend's to check; batch_index's range too (the CUDA kernel cannot without a sync).
inline void check_mask_loss_args(const char* op, const at::Tensor& dense, const at::Tensor& query,
                                 const at::Tensor& masks, const at::Tensor& beta, const at::Tensor& batch_index,
                                 c10::DeviceType device) {
  check_float(op, "dense_boxes", dense);
  check_shape(op, "dense_boxes", dense, {-1, 4, -1, -1});
  check_device(op, "dense_boxes", dense, device);
  check_boxes(op, "query_boxes", query);
  const int64_t q = query.size(0);
  check_bool(op, "gt_masks", masks);
  check_shape(op, "gt_masks", masks, {q, dense.size(2), dense.size(3)});
  check_float(op, "beta", beta);
  check_shape(op, "beta", beta, {q});
  check_same_dtype(op, "query_boxes", query, "dense_boxes", dense);
  TORCH_CHECK_TYPE(batch_index.scalar_type() == at::kLong || batch_index.scalar_type() == at::kInt, op,
                   ": batch_index must be an int64 or int32 tensor, got ", dtype_name(batch_index.scalar_type()));
  check_shape(op, "batch_index", batch_index, {q});
}

// _mask_loss_backward: the incoming gradient of the scalar loss.
inline void check_mask_loss_grad(const char* op, const at::Tensor& grad) {
  TORCH_CHECK_VALUE(grad.numel() == 1, op, ": grad must be a scalar, got shape ", grad.sizes());
}

// gather_levelness / _gather_levelness_backward: levelness [B, L+1, H, W] float, L offsets
// [B, 4, h_i, w_i] of levelness' dtype and device (non-empty where the levelness grid is),
// out_stride > 0.
inline void check_gather_levelness_args(const char* op, const at::TensorList& offsets, const at::Tensor& levelness,
                                        int64_t out_stride, c10::DeviceType device) {
  check_float(op, "levelness", levelness);
  check_dim(op, "levelness", levelness, 4, "4-D");
  check_device(op, "levelness", levelness, device);
  const int64_t n_levels = levelness.size(1) - 1;
  TORCH_CHECK_VALUE(n_levels >= 1 && static_cast<int64_t>(offsets.size()) == n_levels, op, ": levelness has ",
                    levelness.size(1), " channels, so it needs ", n_levels,
                    " levels of offsets (channel 0 is background), got ", offsets.size());
  const bool nonempty = levelness.size(0) > 0 && levelness.size(2) > 0 && levelness.size(3) > 0;
  for (size_t i = 0; i < offsets.size(); ++i) {
    const auto& o = offsets[i];
    const std::string name = "offsets[" + std::to_string(i) + "]";
    check_float(op, name.c_str(), o);
    check_shape(op, name.c_str(), o, {levelness.size(0), 4, -1, -1});
    TORCH_CHECK_TYPE(o.scalar_type() == levelness.scalar_type(), op, ": ", name, " is ", dtype_name(o.scalar_type()),
                     " but levelness is ", dtype_name(levelness.scalar_type()));
    TORCH_CHECK_VALUE(!nonempty || (o.size(2) > 0 && o.size(3) > 0), op, ": ", name, " is empty (", o.sizes(),
                      ") but the levelness grid is not");
    check_same_device(op, name.c_str(), o, levelness);
  }
  check_positive(op, "out_stride", out_stride);
}

// _gather_levelness_backward: grad_boxes [B, 4, H, W] of the forward's boxes.
inline void check_gather_levelness_grad(const char* op, const at::Tensor& grad_boxes, const at::Tensor& levelness) {
  check_shape(op, "grad_boxes", grad_boxes, {levelness.size(0), 4, levelness.size(2), levelness.size(3)});
}

// panoptic_from_dense(_release): dense_boxes [4, H, W] float, sem_probs [C>=1, H, W], query_boxes
// [Q, 4] (all three of one dtype), query_classes [Q] integer, query_scores [Q] float, is_thing
// [C] bool: the order and words of ops.panoptic.checked_fusion_args; then the other tensors' device,
// dense_boxes' (the CPU kernels' words name no argument).  query_classes' range is checked by
// checked_indices (on the host).
inline void check_panoptic_tensors(const char* op, const at::Tensor& dense_boxes, const at::Tensor& sem_probs,
                                   const at::Tensor& query_boxes, const at::Tensor& query_classes,
                                   const at::Tensor& query_scores, const at::Tensor& is_thing,
                                   c10::DeviceType device) {
  check_float(op, "dense_boxes", dense_boxes);
  check_shape(op, "dense_boxes", dense_boxes, {4, -1, -1});
  check_device(op, "dense_boxes", dense_boxes, device);
  check_float(op, "sem_probs", sem_probs);
  check_shape(op, "sem_probs", sem_probs, {-1, dense_boxes.size(1), dense_boxes.size(2)});
  check_boxes(op, "query_boxes", query_boxes);
  check_integer(op, "query_classes", query_classes);
  check_dim(op, "query_classes", query_classes, 1, "1-D");
  check_float(op, "query_scores", query_scores);
  check_same_length(op, "query_classes", query_classes, "query_boxes", query_boxes);
  check_same_length(op, "query_scores", query_scores, "query_boxes", query_boxes);
  TORCH_CHECK_TYPE(sem_probs.scalar_type() == dense_boxes.scalar_type() &&
                       query_boxes.scalar_type() == dense_boxes.scalar_type(),
                   op, ": tensors must share one dtype, got dense_boxes: ", dtype_name(dense_boxes.scalar_type()),
                   ", sem_probs: ", dtype_name(sem_probs.scalar_type()), ", query_boxes: ",
                   dtype_name(query_boxes.scalar_type()));
  check_bool(op, "is_thing", is_thing);
  check_dim(op, "is_thing", is_thing, 1, "1-D");
  const int64_t n_c = sem_probs.size(0);
  TORCH_CHECK_VALUE(is_thing.size(0) == n_c, op, ": is_thing has ", is_thing.size(0), " entries but sem_probs has ",
                    n_c, " classes");
  TORCH_CHECK_VALUE(n_c > 0, op, ": sem_probs must have at least one class");
  for (const auto& [name, t] : {std::pair{"sem_probs", &sem_probs}, std::pair{"query_boxes", &query_boxes},
                                std::pair{"query_classes", &query_classes}, std::pair{"query_scores", &query_scores},
                                std::pair{"is_thing", &is_thing}}) {
    if (device == c10::kCPU) {
      check_device(op, "every argument", *t, c10::kCPU);
    } else {
      check_same_device(op, name, *t, dense_boxes);
    }
  }
}

// panoptic_from_dense: num_queries, when given, a 0-d int64 tensor on dense_boxes' device (its value,
// clamped to [0, Q], is read by the kernels: on the host by the CPU kernel, on the device by the CUDA one).
inline void check_num_queries(const char* op, const c10::optional<at::Tensor>& num_queries,
                              const at::Tensor& dense_boxes) {
  if (!num_queries.has_value()) return;
  const at::Tensor& n = *num_queries;
  check_dim(op, "num_queries", n, 0, "0-D");
  TORCH_CHECK_TYPE(n.scalar_type() == at::kLong, op, ": num_queries must be an int64 tensor, got ",
                   dtype_name(n.scalar_type()));
  check_same_device(op, "num_queries", n, dense_boxes);
}

inline void check_panoptic_from_dense_scalars(const char* op, const std::string& score, double overlap_threshold,
                                              int64_t stuff_area_limit) {
  check_score(op, score);
  TORCH_CHECK_VALUE(overlap_threshold >= 0, op, ": overlap_threshold must be >= 0.0, got ", overlap_threshold);
  TORCH_CHECK_VALUE(overlap_threshold <= 1, op, ": overlap_threshold must be <= 1.0, got ", overlap_threshold);
  TORCH_CHECK_VALUE(stuff_area_limit >= 0, op, ": stuff_area_limit must be a non-negative int, got ",
                    stuff_area_limit);
}

// panoptic_from_dense_release: stride a power of two, output [height, width] inside the upsampled grid.
inline void check_release_size(const char* op, const at::Tensor& dense_boxes, int64_t stride, int64_t height,
                               int64_t width) {
  TORCH_CHECK_VALUE(stride >= 1 && (stride & (stride - 1)) == 0, op, ": stride must be a power of two (1, 2, 4, ...), got ",
                    stride);
  const int64_t h = dense_boxes.size(1), w = dense_boxes.size(2);
  TORCH_CHECK_VALUE(height >= 0 && height <= h * stride && width >= 0 && width <= w * stride, op,
                    ": size must lie in [0, ", h * stride, "] x [0, ", w * stride, "] (the grid ", h, "x", w,
                    " times stride ", stride, "), got (", height, ", ", width, ")");
}

// panoptic_from_dense: the tensors, num_queries, then the scalar arguments.
inline void check_panoptic_from_dense_args(const char* op, const at::Tensor& dense_boxes, const at::Tensor& sem_probs,
                                           const at::Tensor& query_boxes, const at::Tensor& query_classes,
                                           const at::Tensor& query_scores, const at::Tensor& is_thing,
                                           const std::string& score, double overlap_threshold,
                                           int64_t stuff_area_limit, const c10::optional<at::Tensor>& num_queries,
                                           c10::DeviceType device) {
  check_panoptic_tensors(op, dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing, device);
  check_num_queries(op, num_queries, dense_boxes);
  check_panoptic_from_dense_scalars(op, score, overlap_threshold, stuff_area_limit);
}

// panoptic_from_dense_release: the tensors, the scalar arguments, then stride and size.
inline void check_panoptic_from_dense_release_args(const char* op, const at::Tensor& dense_boxes,
                                                   const at::Tensor& sem_probs, const at::Tensor& query_boxes,
                                                   const at::Tensor& query_classes, const at::Tensor& query_scores,
                                                   const at::Tensor& is_thing, int64_t stride, int64_t height,
                                                   int64_t width, const std::string& score, double overlap_threshold,
                                                   int64_t stuff_area_limit, c10::DeviceType device) {
  check_panoptic_tensors(op, dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing, device);
  check_panoptic_from_dense_scalars(op, score, overlap_threshold, stuff_area_limit);
  check_release_size(op, dense_boxes, stride, height, width);
}

// select_queries: boxes [N, 4] float, scores [N] of boxes' dtype and device, labels [N] int64
// (the public op converts), top_n >= 0.
inline void check_select_queries_args(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                                      const at::Tensor& labels, int64_t top_n, c10::DeviceType device) {
  check_boxes(op, "boxes", boxes);
  check_device(op, "boxes", boxes, device);
  check_float(op, "scores", scores);
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, op, ": labels must be an int64 tensor, got ",
                   dtype_name(labels.scalar_type()));
  check_same_length(op, "scores", scores, "boxes", boxes);
  check_same_length(op, "labels", labels, "boxes", boxes);
  check_same_dtype(op, "scores", scores, "boxes", boxes);
  check_same_device(op, "scores", scores, boxes);
  check_same_device(op, "labels", labels, boxes);
  TORCH_CHECK_VALUE(top_n >= 0, op, ": top_n must be a non-negative int, got ", top_n);
}

// The largest class index an upsample_argmax output dtype holds (-1: not an output dtype).
inline int64_t upsample_argmax_max_index(at::ScalarType dtype) {
  switch (dtype) {
    case at::kLong: return INT64_MAX;
    case at::kInt: return INT32_MAX;
    case at::kShort: return INT16_MAX;
    case at::kByte: return UINT8_MAX;
    default: return -1;
  }
}

// upsample_argmax: logits [B, C>=1, h>=1, w>=1] float, size (H, W) and crop (H', W') <= size positive,
// out_dtype (None: int64) int64, int32, int16 or uint8 holding the class indices 0..C-1.  Returns
// the output dtype.
inline at::ScalarType check_upsample_argmax_args(const char* op, const at::Tensor& logits, at::IntArrayRef size,
                                                 at::IntArrayRef crop, c10::optional<at::ScalarType> out_dtype,
                                                 c10::DeviceType device) {
  check_float(op, "logits", logits);
  check_dim(op, "logits", logits, 4, "4-D");
  check_device(op, "logits", logits, device);
  for (const auto& [name, pair] : {std::pair{"size", size}, std::pair{"crop", crop}}) {
    TORCH_CHECK_TYPE(pair.size() == 2, op, ": ", name, " must be a pair of ints (H, W), got ", pair);
    check_positive(op, (std::string(name) + "[0]").c_str(), pair[0]);
    check_positive(op, (std::string(name) + "[1]").c_str(), pair[1]);
  }
  TORCH_CHECK_VALUE(crop[0] <= size[0] && crop[1] <= size[1], op, ": crop (", crop[0], ", ", crop[1],
                    ") must not exceed size (", size[0], ", ", size[1], ")");
  TORCH_CHECK_VALUE(logits.size(1) > 0 && logits.size(2) > 0 && logits.size(3) > 0, op,
                    ": logits must have at least one class and one pixel, got ", logits.sizes());
  const at::ScalarType dtype = out_dtype.value_or(at::kLong);
  const int64_t max_index = upsample_argmax_max_index(dtype);
  TORCH_CHECK_TYPE(max_index >= 0, op, ": out_dtype must be torch.int64, torch.int32, torch.int16 or torch.uint8, ",
                   "got ", dtype_name(dtype));
  TORCH_CHECK_VALUE(logits.size(1) - 1 <= max_index, op, ": ", logits.size(1), " classes do not fit in ",
                    dtype_name(dtype));
  return dtype;
}

}  // namespace rtpanoptic
