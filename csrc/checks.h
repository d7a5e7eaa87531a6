// Argument checks shared by the kernels: every message names the op and the argument.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace rtpanoptic {

inline void check_float(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be float16/bfloat16/float32/float64, got ", t.scalar_type());
}

inline void check_device(const char* op, const char* name, const at::Tensor& t, c10::DeviceType type) {
  TORCH_CHECK(t.device().type() == type, op, ": ", name, " must be a ", c10::DeviceTypeName(type),
              " tensor for this kernel, got one on ", t.device());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on ", ref.device(), ", got ", t.device());
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim, const char* shape) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

inline void check_boxes(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 2 && t.size(1) == 4, op, ": ", name, " must have shape [N, 4], got ", t.sizes());
  check_float(op, name, t);
}

inline void check_same_dtype(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                             const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ", ref_name, " (",
              ref.scalar_type(), "), got ", t.scalar_type());
}

inline void check_score(const char* op, const std::string& score) {
  TORCH_CHECK(score == "iou" || score == "tri", op, ": score must be \"iou\" or \"tri\", got \"", score, "\"");
}

}  // namespace rtpanoptic
