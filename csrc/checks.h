// Argument checks shared by the kernels, for direct torch.ops.rtpanoptic callers (the public ops
// check in Python first, rtpanoptic/ops/_validate.py).  Every message names the op and the
// argument; where both check the same thing the words are _validate.py's, dtypes spelled as
// Python spells them ("torch.float32").
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <string>

namespace rtpanoptic {

// The dtype every kernel computes in for inputs of t's dtype: float16/bfloat16/float32 in float32,
// float64 in itself (the reference's and torchvision's choice), results rounded once when stored.
inline at::ScalarType acc_type(const at::Tensor& t) { return at::toOpMathType(t.scalar_type()); }

// "torch.float32" for at::kFloat, as str(torch.float32).
inline std::string dtype_name(at::ScalarType type) {
  return "torch." + std::string(c10::getDtypeNames(type).first);
}

inline void check_float(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating-point tensor, got ",
              dtype_name(t.scalar_type()));
}

inline void check_integer(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), op, ": ", name,
              " must be an integer tensor, got ", dtype_name(t.scalar_type()));
}

// t is 1-D with as many entries as ref (ref_name).
inline void check_same_length(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                              const at::Tensor& ref) {
  TORCH_CHECK(t.dim() == 1, op, ": ", name, " must have shape 1-D, got ", t.sizes());
  TORCH_CHECK(t.size(0) == ref.size(0), op, ": ", name, " has ", t.size(0), " entries but ", ref_name, " has ",
              ref.size(0), "; they must match");
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
  check_float(op, name, t);
  TORCH_CHECK(t.dim() == 2 && t.size(1) == 4, op, ": ", name, " must have shape [*, 4], got ", t.sizes());
}

inline void check_same_dtype(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                             const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": tensors must share one dtype, got ", ref_name, ": ",
              dtype_name(ref.scalar_type()), ", ", name, ": ", dtype_name(t.scalar_type()));
}

inline void check_score(const char* op, const std::string& score) {
  TORCH_CHECK(score == "iou" || score == "tri", op, ": score must be \"iou\" or \"tri\", got \"", score, "\"");
}

}  // namespace rtpanoptic
